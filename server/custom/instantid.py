"""InstantID: identity-preserving text-to-image from one face photo and a prompt.

Written for this project from the InstantID paper's description (arXiv 2401.07519) and the
layout of the published weights; no upstream code is copied. How it works:

1. Face analysis (server/custom/faces.py) finds the largest face: its identity embedding and
   five landmarks. No face -> 422.
2. The identity embedding goes through InstantID's image-projection Resampler (`image_proj`
   in ip-adapter.bin) and the decoupled cross-attention of its IP-Adapter (`ip_adapter`), both
   loaded by diffusers' own IP-Adapter loader, which understands this layout (a Perceiver
   resampler with `latents`, `to_kv` and numbered `to_k_ip`/`to_v_ip` weights).
3. The landmarks, drawn as a pose map the size of the output, condition InstantID's
   IdentityNet, a ControlNet over the SDXL UNet whose cross-attention also takes the identity
   tokens (passed as its encoder states instead of the text, as the paper describes).

Model folder (entrypoint.options; paths under the model directory):
  base:        an SDXL pipeline in diffusers layout                 (default sdxl)
  variant:     the base's weight variant, e.g. fp16                 (default none)
  controlnet:  InstantID's ControlNetModel folder                   (default instantid/ControlNetModel)
  ip_adapter:  InstantID's ip-adapter.bin                           (default instantid/ip-adapter.bin)
  face_analysis / face_models / face_projection: see faces.py
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from server.custom.faces import Face, face_analyzer, largest_face
from server.custom.layout import part, require
from server.errors import LoadError
from server.loaders import ImageOutput, torch_dtype
from server.media import decode_image
from server.memory import apply as apply_memory_plan
from server.memory import plan_for
from server.spec import ModelSpec

# Colours of the pose map's five landmarks (eyes, nose, mouth corners), as RGB.
_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))


def pose_map(landmarks: np.ndarray, source_size: tuple[int, int], width: int, height: int) -> np.ndarray:
    """Landmarks of a face in a (w, h) photo, drawn on a black (height, width) canvas in the
    conditioning format IdentityNet was trained on: an 8-pixel line from each landmark to the
    nose tip in its colour, dimmed, then a 10-pixel-radius dot per landmark, at any output size."""
    import cv2

    scale = min(width / source_size[0], height / source_size[1])
    offset = np.array([(width - source_size[0] * scale) / 2, (height - source_size[1] * scale) / 2])
    points = landmarks.astype(np.float64) * scale + offset
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    nose = tuple(int(v) for v in points[2].round())
    for index, point in enumerate(points):
        if index != 2:
            cv2.line(canvas, tuple(int(v) for v in point.round()), nose, _COLOURS[index], 8)
    canvas = (canvas * 0.6).astype(np.uint8)
    for index, point in enumerate(points):
        cv2.circle(canvas, tuple(int(v) for v in point.round()), 10, _COLOURS[index], -1)
    return canvas


class InstantID:
    def __init__(self, spec: ModelSpec, model_dir: Path, device: str) -> None:
        import torch
        from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

        options = spec.options
        base = part(spec, model_dir, "base", "sdxl")
        controlnet_dir = part(spec, model_dir, "controlnet", "instantid/ControlNetModel")
        adapter = part(spec, model_dir, "ip_adapter", "instantid/ip-adapter.bin")
        require("InstantID", base / "model_index.json", controlnet_dir / "config.json", adapter)
        self.faces = face_analyzer(options, model_dir, device)
        if not self.faces.embeds:
            raise LoadError("InstantID needs face embeddings: entrypoint.options.face_modules must include recognition")
        dtype = torch_dtype(spec.dtype, device)
        controlnet = ControlNetModel.from_pretrained(controlnet_dir, dtype=dtype, local_files_only=True)
        variant = options.get("variant")  # fp16: the base's *.fp16.safetensors files
        self.pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
            base, controlnet=controlnet, dtype=dtype, local_files_only=True, variant=str(variant) if variant else None)
        # image_encoder_folder=None: the identity embedding comes from face analysis, not CLIP.
        self.pipe.load_ip_adapter(str(adapter.parent), subfolder="", weight_name=adapter.name,
                                  image_encoder_folder=None, low_cpu_mem_usage=False)
        self.memory = plan_for(spec, device, self.pipe)  # SDXL, its ControlNet and the adapter: about 8 GB in fp16
        apply_memory_plan(self.pipe, self.memory, device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device, self.torch_dtype = device, dtype
        self.dtype = str(dtype).removeprefix("torch.")
        self._torch = torch
        self._tokens = None
        self._route_identity_to_controlnet(controlnet)

    def _route_identity_to_controlnet(self, controlnet) -> None:
        """diffusers' SDXL ControlNet pipeline hands the ControlNet the prompt embeddings; InstantID's
        IdentityNet was trained on the identity tokens instead. Swap them in on this instance."""
        plain_forward = controlnet.forward

        def identity_forward(*args: Any, encoder_hidden_states=None, **kwargs: Any):
            tokens = self._tokens
            if tokens is not None and encoder_hidden_states is not None:
                # (negative, positive) halves when the pipeline doubles the batch for guidance
                if tokens.shape[0] != encoder_hidden_states.shape[0]:
                    tokens = tokens[-1:].expand(encoder_hidden_states.shape[0], -1, -1)
                encoder_hidden_states = tokens.to(encoder_hidden_states.dtype)
            return plain_forward(*args, encoder_hidden_states=encoder_hidden_states, **kwargs)

        controlnet.forward = identity_forward

    def identity_tokens(self, face: Face, guided: bool):
        """The face embedding as the IP-Adapter's input: (1, 1, 1, 512), or (2, ...) with zeros for the
        unconditional half when classifier-free guidance doubles the batch."""
        torch = self._torch
        embedding = torch.from_numpy(face.embedding).to(self.device, self.torch_dtype).reshape(1, 1, 1, -1)
        return torch.cat([torch.zeros_like(embedding), embedding]) if guided else embedding

    def predict(self, request: Any) -> ImageOutput:
        from PIL import Image

        torch = self._torch
        photo = decode_image("face_image", request.face_image)
        face = largest_face(self.faces, photo, "face_image")
        seed = request.seed if request.seed is not None else int(np.random.default_rng().integers(2**31))
        started = time.perf_counter()
        control = Image.fromarray(pose_map(face.landmarks, (photo.shape[1], photo.shape[0]),
                                           request.width, request.height))
        # diffusers guides (and doubles the batch, unconditional first) when guidance_scale > 1
        guided = request.guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None
        identity = self.identity_tokens(face, guided)
        self.pipe.set_ip_adapter_scale(request.identity_strength)
        with torch.inference_mode():
            projected = self.pipe.unet.encoder_hid_proj([identity])[0]  # (1 or 2, 1, tokens, dim)
            self._tokens = projected.reshape(projected.shape[0], -1, projected.shape[-1])
            result = self.pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                image=control,
                controlnet_conditioning_scale=request.pose_strength,
                ip_adapter_image_embeds=[identity],
                width=request.width,
                height=request.height,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                generator=torch.Generator(device="cpu").manual_seed(seed),
                output_type="np",
            )
        pixels = np.asarray(result.images[0], dtype=np.float32)
        return ImageOutput(pixels, seed, time.perf_counter() - started)


def load(spec: ModelSpec, model_dir: Path, device: str) -> InstantID:
    return InstantID(spec, model_dir, device)
