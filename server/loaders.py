"""Loading the model baked into the image, by the manifest's entrypoint, and running it.

Profiles map to loaders: hf-diffusers-standard -> the diffusers pipeline class the manifest
names; hf-transformers-standard -> the transformers Auto class it names (text generation or
embeddings, by task); custom-local -> `module:function` in server code, called with
(spec, model_dir, device) and returning a Predictor. Every loader runs after the check that
each manifest file is present with its size.
"""

from __future__ import annotations

import importlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server.errors import InputError, LoadError
from server.memory import apply as apply_memory_plan
from server.memory import plan_for
from server.spec import ModelSpec

__all__ = ["AudioOutput", "EmbeddingOutput", "ImageOutput", "InputError", "LoadError", "Predictor", "TextOutput",
           "VideoOutput", "load_predictor"]


@dataclass(frozen=True)
class ImageOutput:
    pixels: np.ndarray  # H x W x C, float32 in [0, 1], before any PNG rounding can hide a NaN
    seed: int
    inference_seconds: float


@dataclass(frozen=True)
class TextOutput:
    text: str
    tokens: int
    seed: int
    inference_seconds: float


@dataclass(frozen=True)
class EmbeddingOutput:
    vectors: np.ndarray  # N x D float32
    inference_seconds: float


@dataclass(frozen=True)
class AudioOutput:
    samples: np.ndarray  # mono float32 in [-1, 1], before any PCM rounding can hide a NaN
    sample_rate: int
    seed: int
    inference_seconds: float


@dataclass(frozen=True)
class VideoOutput:
    frames: np.ndarray  # N x H x W x 3 uint8 (a minute of 720p is 4 GB even so), or float32 in [0, 1]
    fps: int
    audio: tuple[np.ndarray, int] | None  # the driving audio, muxed into the MP4
    inference_seconds: float


class Predictor(Protocol):
    device: str
    dtype: str

    def predict(self, request: Any) -> Any: ...


def check_artifacts(spec: ModelSpec, model_dir: Path) -> None:
    """Every file the manifest names is present with its size, before anything loads."""
    problems = []
    for artifact in spec.artifacts:
        path = model_dir / artifact.dest
        if not path.exists():
            problems.append(f"{artifact.dest} (missing)")
        elif artifact.size is not None and path.stat().st_size != artifact.size:
            problems.append(f"{artifact.dest} (size {path.stat().st_size}, expected {artifact.size})")
    if problems:
        raise LoadError(f"model files missing or wrong in {model_dir}: {', '.join(problems)}")


def pick_device(preference: str) -> str:
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise LoadError("BUILDER_DEVICE=cuda but no CUDA device is visible: run with --gpus all")
    return preference


def torch_dtype(name: str, device: str):
    import torch

    if device == "cpu" and name == "float16":
        return torch.float32  # many CPU kernels lack float16; the manifest's dtype is for the GPU
    return getattr(torch, name)


def _seed(value: int | None) -> int:
    return value if value is not None else random.randrange(2**31)


class DiffusersTextToImage:
    """A diffusers text-to-image pipeline (StableDiffusion, Flux, Z-Image...), named by class."""

    def __init__(self, spec: ModelSpec, model_dir: Path, device: str) -> None:
        import diffusers

        pipeline_class = getattr(diffusers, spec.class_name or "", None)
        if pipeline_class is None:
            raise LoadError(f"diffusers {diffusers.__version__} has no pipeline class {spec.class_name}")
        dtype = torch_dtype(spec.dtype, device)
        self.pipe = pipeline_class.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        self.memory = plan_for(spec, device, self.pipe)
        apply_memory_plan(self.pipe, self.memory, device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device = device
        self.dtype = str(dtype).removeprefix("torch.")
        # FLUX.1-dev's distilled guidance ignores negative_prompt; true CFG (a second, negative pass
        # per step) makes it count, where the manifest declares a scale for it.
        self.true_cfg_scale = (getattr(spec, "serving", None) or {}).get("true_cfg_scale")

    def predict(self, request: Any) -> ImageOutput:
        import torch

        seed = _seed(request.seed)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        started = time.perf_counter()
        kwargs: dict[str, Any] = dict(
            prompt=request.prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            generator=generator,
            output_type="np",
        )
        if request.negative_prompt is not None:
            kwargs["negative_prompt"] = request.negative_prompt
            if self.true_cfg_scale is not None:
                kwargs["true_cfg_scale"] = self.true_cfg_scale
        with torch.inference_mode():
            result = self.pipe(**kwargs)
        pixels = np.asarray(result.images[0], dtype=np.float32)
        return ImageOutput(pixels, seed, time.perf_counter() - started)


class _Transformers:
    """A transformers model and its tokenizer, the class named by the manifest's class_name."""

    def __init__(self, spec: ModelSpec, model_dir: Path, device: str) -> None:
        import transformers

        model_class = getattr(transformers, spec.class_name or "", None)
        if model_class is None:
            raise LoadError(f"transformers {transformers.__version__} has no class {spec.class_name}")
        dtype = torch_dtype(spec.dtype, device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = model_class.from_pretrained(model_dir, dtype=dtype, local_files_only=True).to(device).eval()
        self.device = device
        self.dtype = str(dtype).removeprefix("torch.")


class TransformersTextGeneration(_Transformers):
    """A causal language model (class_name: AutoModelForCausalLM or a concrete class)."""

    def predict(self, request: Any) -> TextOutput:
        import torch

        seed = _seed(request.seed)
        torch.manual_seed(seed)
        started = time.perf_counter()
        inputs = self.tokenizer(request.prompt, return_tensors="pt").to(self.device)
        sampling = request.temperature > 0
        options: dict[str, Any] = {"max_new_tokens": request.max_new_tokens, "do_sample": sampling}
        if sampling:
            options.update(temperature=request.temperature, top_p=request.top_p)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(**inputs, **options, pad_token_id=pad)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        return TextOutput(text, int(new_tokens.shape[0]), seed, time.perf_counter() - started)


class TransformersEmbedding(_Transformers):
    """An encoder whose mean-pooled last hidden state is the embedding (class_name: AutoModel...)."""

    def predict(self, request: Any) -> EmbeddingOutput:
        import torch

        started = time.perf_counter()
        batch = self.tokenizer(request.inputs, padding=True, truncation=True, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        vectors = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        if request.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return EmbeddingOutput(vectors.cpu().numpy(), time.perf_counter() - started)


_LOADERS = {
    ("diffusers", "text-to-image"): DiffusersTextToImage,
    ("transformers", "text-generation"): TransformersTextGeneration,
    ("transformers", "feature-extraction"): TransformersEmbedding,
}


def _quiet_progress_bars() -> None:
    """Loading progress bars are noise in a server's log and in the smoke's output."""
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            importlib.import_module(module).disable_progress_bar()
        except ImportError:
            continue


def load_predictor(spec: ModelSpec, model_dir: Path, device_preference: str = "auto") -> Predictor:
    check_artifacts(spec, model_dir)
    _quiet_progress_bars()
    device = pick_device(device_preference)
    if spec.loader == "custom":
        module_name, _, function_name = (spec.function or "").partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as exc:
            raise LoadError(f"custom loader {spec.function} not found: {exc}") from None
        return factory(spec, model_dir, device)
    loader = _LOADERS.get((spec.loader, spec.task))
    if loader is None:
        raise LoadError(f"no loader for {spec.loader} models of task {spec.task} in this server version")
    return loader(spec, model_dir, device)
