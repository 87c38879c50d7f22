"""Where a pipeline's weights sit: all on the GPU, one component at a time, or layer by layer.

The manifest's `serving.memory` asks for a policy; `auto` decides at load from the GPU's free
memory and the size of each component's weights, both known before a byte is loaded (the
manifest pins every file's size). diffusers' offload hooks do the moving:
`enable_model_cpu_offload` keeps one component (the transformer, a text encoder, the VAE) on the
GPU at a time, so the largest one must fit; `enable_sequential_cpu_offload` streams layer by
layer (slowest, least memory). https://huggingface.co/docs/diffusers/optimization/memory
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
# Folders of a diffusers pipeline that hold weights; everything else is configs and tokenizers.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx")


@dataclass(frozen=True)
class MemoryPlan:
    policy: str  # none | model | sequential (what was applied) or cpu (no GPU: nothing to decide)
    requested: str  # none | model | sequential | auto (what the manifest asked for)
    reason: str
    vae_tiling: bool = False
    vae_slicing: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "requested": self.requested, "reason": self.reason,
                "vae_tiling": self.vae_tiling, "vae_slicing": self.vae_slicing}


def component_sizes(artifacts: Any) -> dict[str, int]:
    """Bytes of weights per pipeline component (the first folder of each path; "" for the root)."""
    sizes: dict[str, int] = {}
    for artifact in artifacts:
        path = artifact.dest
        if not path.endswith(_WEIGHT_SUFFIXES) or not artifact.size:
            continue
        component = path.split("/", 1)[0] if "/" in path else ""
        sizes[component] = sizes.get(component, 0) + int(artifact.size)
    return sizes


def _gib(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def choose(requested: str, device: str, free_bytes: int | None, sizes: dict[str, int], headroom_gb: float = 1.0,
           vae_tiling: bool = False, vae_slicing: bool = False) -> MemoryPlan:
    """The policy to apply, and why, in one line a person can check."""
    if device != "cuda":
        return MemoryPlan("cpu", requested, f"no GPU ({device}): the pipeline runs in main memory", vae_tiling,
                          vae_slicing)
    if requested != "auto":
        return MemoryPlan(requested, requested, f"{requested}: as the manifest asks", vae_tiling, vae_slicing)
    total, headroom = sum(sizes.values()), headroom_gb * GIB
    largest_name, largest = max(sizes.items(), key=lambda item: item[1], default=("", 0))
    if free_bytes is None or not sizes:
        why = "the GPU's free memory is unknown" if free_bytes is None else "no component sizes in the manifest"
        return MemoryPlan("model", requested, f"auto: {why}; model offload is the safe choice", vae_tiling, vae_slicing)
    facts = (f"{_gib(free_bytes)} free, weights {_gib(total)}, largest {largest_name or 'root'} {_gib(largest)}, "
             f"headroom {_gib(headroom)}")
    if total + headroom <= free_bytes:
        return MemoryPlan("none", requested, f"auto: {facts}: everything fits on the GPU", vae_tiling, vae_slicing)
    if largest + headroom <= free_bytes:
        # Decoding a large image is what runs short next to an offloaded pipeline: tile the VAE.
        return MemoryPlan("model", requested, f"auto: {facts}: one component at a time (model offload)", True,
                          vae_slicing)
    return MemoryPlan("sequential", requested, f"auto: {facts}: even the largest component does not fit, layer by "
                                               "layer (sequential offload, slow)", True, True)


def module_sizes(pipe: Any) -> dict[str, int]:
    """Bytes of each loaded component as it will sit on the GPU (parameters and buffers in the
    dtype it was loaded in): exact where file sizes are not (Z-Image-Turbo's transformer is stored
    in float32 and served in bfloat16, half its file size)."""
    sizes: dict[str, int] = {}
    for name, component in (getattr(pipe, "components", None) or {}).items():
        tensors = [*getattr(component, "parameters", lambda: [])(), *getattr(component, "buffers", lambda: [])()]
        total = sum(t.numel() * t.element_size() for t in tensors)
        if total:
            sizes[name] = int(total)
    return sizes


def plan_for(spec: Any, device: str, pipe: Any = None) -> MemoryPlan:
    """The plan for this manifest on this device (its serving.memory, or auto), from the loaded
    pipeline's component sizes when there is one, else the manifest's file sizes."""
    policy = (getattr(spec, "serving", None) or {}).get("memory") or {}
    free = gpu_free_bytes() if device == "cuda" else None
    sizes = (module_sizes(pipe) if pipe is not None else {}) or component_sizes(spec.artifacts)
    return choose(policy.get("offload", "auto"), device, free, sizes, float(policy.get("headroom_gb", 1.0)),
                  bool(policy.get("vae_tiling")), bool(policy.get("vae_slicing")))


def gpu_free_bytes() -> int | None:
    try:
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.mem_get_info()[0])
    except Exception:  # noqa: BLE001 - an unknown answer, not a failure: choose() says so
        return None
    return None


def apply(pipe: Any, plan: MemoryPlan, device: str) -> None:
    """Put the pipeline where the plan says (offload hooks move components to `device` on use)."""
    if plan.policy == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif plan.policy == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    vae = getattr(pipe, "vae", None)
    if plan.vae_tiling and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    if plan.vae_slicing and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
