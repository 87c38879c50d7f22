"""MuseTalk 1.5: lip-sync a reference face (an image or a video) to a speech clip -> MP4.

Written for this project from the MuseTalk paper (arXiv 2410.10122) and the layout of the
published weights; no upstream code is copied. One step per frame, no diffusion loop:

1. The speech, at 16 kHz, goes through Whisper's encoder; every layer's hidden states are
   kept (50 audio frames a second). Each video frame gets the 10 audio frames around its time
   (4 before to 5 after, zeros past either end: two 25 fps frames' worth either side, whatever
   the output fps), flattened to (10 x layers) tokens plus a sinusoidal position code: the
   UNet's cross-attention input.
2. The face is found (server/custom/faces.py), its box widened downwards by `extra_margin`
   pixels (the 1.5 release's chin margin) and cut out at 256x256. The VAE encodes the crop
   twice: with its lower half blanked (what to fill in) and whole (who it is); the two latents
   make the UNet's 8 input channels.
3. The UNet (musetalk.json config, unet.pth weights) predicts the mouth's latent at timestep 0;
   the VAE decodes it, and it is blended back over the lower face with a feathered mask.

Where this differs from upstream's preprocessing: the face box comes from the face analyzer
(SCRFD in production) rather than DWPose landmarks plus S3FD, and the blend uses a geometric
mask rather than a BiSeNet face-parsing mask. Lip-sync quality with the real weights is for a
GPU run to judge; see as_built.md.

Model folder (entrypoint.options; paths under the model directory):
  unet: the folder with musetalk.json and unet.pth   (default musetalk/musetalkV15)
  vae: an AutoencoderKL folder (sd-vae-ft-mse)       (default sd-vae)
  whisper: a Whisper model + feature extractor       (default whisper)
  face_analysis / face_models / face_projection: see faces.py
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from server.custom.faces import face_analyzer
from server.custom.layout import part, require
from server.errors import InputError, LoadError
from server.loaders import VideoOutput, torch_dtype
from server.media import decode_frames, decode_wav, resample
from server.spec import ModelSpec

CROP = 256  # the face crop MuseTalk works on
AUDIO_FPS = 50  # Whisper encoder frames per second
WINDOW = (-4, 6)  # audio frames around a video frame's time: the 10 the model was trained on
MAX_SECONDS = 60.0  # longest speech one request may drive
MAX_FRAMES = 1500  # a minute at 25 fps
MAX_REFERENCE_FRAMES = 250  # 10 s of reference video at 25 fps, cycled forward and back
MAX_REFERENCE_PIXELS = 1920 * 1080
MAX_OUTPUT_PIXELS = 1500 * 1280 * 720  # the output waits in memory (uint8) to be encoded: 4 GB at most
MIN_FACE = 16  # pixels: a smaller (or edge-clipped) box is no usable face
BATCH = 8


def positional_encoding(length: int, dim: int) -> np.ndarray:
    """The transformer's sinusoidal position code, (length, dim)."""
    position = np.arange(length, dtype=np.float64)[:, None]
    scale = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-math.log(10000.0) / dim))
    code = np.zeros((length, dim), dtype=np.float64)
    code[:, 0::2] = np.sin(position * scale)
    code[:, 1::2] = np.cos(position * scale)[:, : dim // 2]
    return code.astype(np.float32)


def audio_windows(features: np.ndarray, frames: int, fps: int) -> np.ndarray:
    """Per video frame, the 10 audio frames around its time: (frames, 10 x layers, dim) from
    Whisper features of shape (audio_frames, layers, dim); zeros before the start and past the end."""
    offsets = np.arange(*WINDOW)
    centres = np.floor(np.arange(frames) * AUDIO_FPS / fps).astype(np.int64)
    index = centres[:, None] + offsets[None, :]
    padded = np.concatenate([np.zeros_like(features[:1]), features])  # row 0: silence
    windows = padded[np.where((index >= 0) & (index < features.shape[0]), index + 1, 0)]
    return windows.reshape(frames, -1, features.shape[-1])


def face_box(box: tuple[float, float, float, float], shape: tuple[int, ...],
             extra_margin: int) -> tuple[int, int, int, int] | None:
    """The detected box, extended down by extra_margin and clipped to the frame; None when what
    is left inside the frame is too small to redraw a mouth in."""
    height, width = shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1 + extra_margin)
    return (x0, y0, x1, y1) if x1 - x0 >= MIN_FACE and y1 - y0 >= MIN_FACE else None


def blend_mask(height: int, width: int) -> np.ndarray:
    """Where the generated crop replaces the original: the lower face, feathered at the edges."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    inside = ((xx - width / 2) / (width * 0.42)) ** 2 + ((yy - height * 0.72) / (height * 0.30)) ** 2
    return np.clip((1.15 - inside) / 0.3, 0.0, 1.0)[:, :, None]


class MuseTalk:
    def __init__(self, spec: ModelSpec, model_dir: Path, device: str) -> None:
        import torch
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import AutoFeatureExtractor, WhisperModel

        options = spec.options
        unet_dir = part(spec, model_dir, "unet", "musetalk/musetalkV15")
        vae_dir = part(spec, model_dir, "vae", "sd-vae")
        whisper_dir = part(spec, model_dir, "whisper", "whisper")
        require("MuseTalk", unet_dir / "musetalk.json", unet_dir / "unet.pth", vae_dir / "config.json",
                whisper_dir / "config.json", whisper_dir / "preprocessor_config.json")
        self.extra_margin = int(options.get("extra_margin", 10))
        self.faces = face_analyzer(options, model_dir, device)
        dtype = torch_dtype(spec.dtype, device)
        config = json.loads((unet_dir / "musetalk.json").read_text(encoding="utf-8"))
        self.unet = UNet2DConditionModel.from_config(config)
        state = torch.load(unet_dir / "unet.pth", map_location="cpu", weights_only=True)
        missing, unexpected = self.unet.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise LoadError(f"MuseTalk: unet.pth does not fit musetalk.json: {len(missing)} missing keys "
                            f"(first {missing[:1]}), {len(unexpected)} unexpected (first {unexpected[:1]})")
        self.unet.to(device, dtype).eval()
        self.vae = AutoencoderKL.from_pretrained(vae_dir, dtype=dtype, local_files_only=True).to(device).eval()
        self.features = AutoFeatureExtractor.from_pretrained(whisper_dir, local_files_only=True)
        whisper = WhisperModel.from_pretrained(whisper_dir, dtype=dtype, local_files_only=True)
        self.encoder = whisper.get_encoder().to(device).eval()
        if config.get("cross_attention_dim") != whisper.config.d_model:
            raise LoadError(f"MuseTalk: the UNet attends to {config.get('cross_attention_dim')}-wide audio tokens; "
                            f"Whisper gives {whisper.config.d_model}")
        self.device, self.torch_dtype = device, dtype
        self.dtype = str(dtype).removeprefix("torch.")
        self._torch = torch

    def whisper_features(self, speech: np.ndarray) -> np.ndarray:
        """(audio_frames, layers, dim) for 16 kHz speech, 30 s at a time (Whisper's window)."""
        torch = self._torch
        rate = self.features.sampling_rate
        window = rate * 30
        parts = []
        for start in range(0, speech.size, window):
            piece = speech[start:start + window]
            inputs = self.features(piece, sampling_rate=rate, return_tensors="pt").input_features
            with torch.inference_mode():
                states = self.encoder(inputs.to(self.device, self.torch_dtype), output_hidden_states=True).hidden_states
            stacked = torch.stack(states, dim=2)[0].float().cpu().numpy()  # frames x layers x dim
            parts.append(stacked[: math.ceil(piece.size / rate * AUDIO_FPS)])
        return np.concatenate(parts)

    def _latents(self, crops: np.ndarray):
        torch = self._torch
        pixels = torch.from_numpy(crops).to(self.device, self.torch_dtype).permute(0, 3, 1, 2) / 127.5 - 1.0
        masked = pixels.clone()
        masked[:, :, CROP // 2:, :] = -1.0  # the lower half, blank: what the model fills in
        scale = self.vae.config.scaling_factor
        encode = lambda x: self.vae.encode(x).latent_dist.mode() * scale  # noqa: E731
        return torch.cat([encode(masked), encode(pixels)], dim=1)

    def predict(self, request: Any) -> VideoOutput:
        import cv2

        torch = self._torch
        speech, rate = decode_wav("audio", request.audio, min_seconds=0.2, max_seconds=MAX_SECONDS)
        speech16k = resample(speech, rate, self.features.sampling_rate)
        count = max(1, int(speech16k.size / self.features.sampling_rate * request.fps))
        if count > MAX_FRAMES:
            raise InputError(f"audio: {count} frames at {request.fps} fps; at most {MAX_FRAMES}: "
                             f"send shorter speech or ask for a lower fps")
        references, _ = decode_frames("reference", request.reference, max_frames=min(count, MAX_REFERENCE_FRAMES),
                                      max_pixels=MAX_REFERENCE_PIXELS)
        height, width = references[0].shape[:2]
        if count * height * width > MAX_OUTPUT_PIXELS:
            raise InputError(f"reference: {count} frames of {width}x{height} is more video than one request may make; "
                             f"send a smaller reference (720p allows a minute at 25 fps) or shorter speech")
        started = time.perf_counter()
        boxes, previous = [], None
        for index, frame in enumerate(references):
            found = [box for box in (face_box(f.box, frame.shape, self.extra_margin) for f in self.faces.faces(frame))
                     if box is not None]
            if found:
                previous = max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            elif index == 0:
                raise InputError("reference: no face found in the image; send a photo or video with one clearly "
                                 "visible, front-facing face, not cut off by the frame's edge")
            boxes.append(previous)
        cycle = list(range(len(references))) + list(range(len(references) - 2, 0, -1))  # forward, then back
        order = [cycle[i % len(cycle)] for i in range(count)]
        windows = audio_windows(self.whisper_features(speech16k), count, request.fps)
        windows = windows + positional_encoding(windows.shape[1], windows.shape[2])[None]
        out = np.empty((count,) + references[0].shape, dtype=np.uint8)
        for start in range(0, count, BATCH):
            chunk = order[start:start + BATCH]
            crops = np.stack([cv2.resize(references[i][b[1]:b[3], b[0]:b[2]], (CROP, CROP),
                                         interpolation=cv2.INTER_AREA) for i, b in ((i, boxes[i]) for i in chunk)])
            with torch.inference_mode():
                latents = self._latents(crops.astype(np.float32))
                audio = torch.from_numpy(windows[start:start + len(chunk)]).to(self.device, self.torch_dtype)
                timestep = torch.zeros(len(chunk), device=self.device, dtype=torch.long)
                predicted = self.unet(latents, timestep, encoder_hidden_states=audio).sample
                faces = self.vae.decode(predicted / self.vae.config.scaling_factor).sample
            faces = faces.float().permute(0, 2, 3, 1).cpu().numpy()
            if not np.isfinite(faces).all():
                raise FloatingPointError("the model produced NaN or infinite pixels (a float16 overflow?)")
            faces = (np.clip(faces, -1.0, 1.0) + 1.0) / 2.0
            for offset, reference_index in enumerate(chunk):
                x0, y0, x1, y1 = boxes[reference_index]
                frame = references[reference_index].astype(np.float32) / 255.0
                mouth = cv2.resize(faces[offset], (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
                mask = blend_mask(y1 - y0, x1 - x0)
                frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1 - mask) + mouth * mask
                out[start + offset] = (frame * 255.0).round().astype(np.uint8)
        return VideoOutput(out, request.fps, (speech16k, self.features.sampling_rate), time.perf_counter() - started)


def load(spec: ModelSpec, model_dir: Path, device: str) -> MuseTalk:
    return MuseTalk(spec, model_dir, device)
