"""Loading the model baked into the image, by the manifest's entrypoint, and running it."""

from __future__ import annotations

import importlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from server.spec import ModelSpec


class LoadError(Exception):
    """The model cannot be loaded; the message says why (shown by /ready and the smoke)."""


@dataclass(frozen=True)
class ImageOutput:
    pixels: np.ndarray  # H x W x C, float32 in [0, 1]
    seed: int
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


class DiffusersTextToImage:
    """A diffusers text-to-image pipeline (StableDiffusion, Flux, ...), named by class."""

    def __init__(self, spec: ModelSpec, model_dir: Path, device: str) -> None:
        import diffusers
        import torch

        pipeline_class = getattr(diffusers, spec.class_name or "", None)
        if pipeline_class is None:
            raise LoadError(f"diffusers {diffusers.__version__} has no pipeline class {spec.class_name}")
        dtype = torch_dtype(spec.dtype, device)
        self.pipe = pipeline_class.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device = device
        self.dtype = str(dtype).removeprefix("torch.")

    def predict(self, request: Any) -> ImageOutput:
        import torch

        seed = request.seed if request.seed is not None else random.randrange(2**31)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        started = time.perf_counter()
        with torch.inference_mode():
            result = self.pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt,
                width=request.width,
                height=request.height,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                generator=generator,
                output_type="np",
            )
        pixels = np.asarray(result.images[0], dtype=np.float32)
        return ImageOutput(pixels, seed, time.perf_counter() - started)


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
    if spec.loader == "diffusers" and spec.task == "text-to-image":
        return DiffusersTextToImage(spec, model_dir, device)
    raise LoadError(f"no loader for {spec.loader} models of task {spec.task} in this server version")
