"""The memory policy chooser over GPU and model sizes (server/memory.py), and a real pipeline under it."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.memory import GIB, MemoryPlan, apply, choose, component_sizes, module_sizes
from server.spec import ArtifactSpec

GB = 10**9
# FLUX.1-dev in bfloat16, from its published files (see manifests/flux.yaml and the issue):
FLUX = {"transformer": int(23.8 * GB), "text_encoder_2": int(9.5 * GB), "text_encoder": int(0.25 * GB),
        "vae": int(0.17 * GB)}
# Z-Image-Turbo in bfloat16: the 6B transformer, the Qwen3-4B prompt encoder, the VAE.
Z_IMAGE = {"transformer": int(12.3 * GB), "text_encoder": int(8.0 * GB), "vae": int(0.17 * GB)}
CUDA_CONTEXT = int(0.6 * GIB)  # what a CUDA context takes before any weights


def free_on(card_gib: float) -> int:
    return int(card_gib * GIB) - CUDA_CONTEXT


@pytest.mark.parametrize("card, sizes, expected", [
    (24, FLUX, "model"),        # RTX A5000 / 4090: the transformer alone fits, the pipeline does not
    (48, FLUX, "none"),         # A6000 / L40S: 31.4 GiB of weights and the headroom fit in 47.4 GiB
    (80, FLUX, "none"),         # A100 / H100 80 GB: everything on the GPU
    (16, FLUX, "sequential"),   # a 16 GB card: even the transformer is too big
    (24, Z_IMAGE, "none"),      # 20.5 GB on a 24 GB card: fits, with the default 1 GiB headroom
    (16, Z_IMAGE, "model"),
    (12, Z_IMAGE, "sequential"),
])
def test_auto_picks_the_policy_the_sizes_allow(card: float, sizes: dict[str, int], expected: str) -> None:
    plan = choose("auto", "cuda", free_on(card), sizes)
    assert plan.policy == expected, plan.reason
    assert plan.reason.startswith("auto: ") and "free" in plan.reason and "largest transformer" in plan.reason


def test_flux_on_48_gib_is_the_boundary_the_headroom_decides() -> None:
    total = sum(FLUX.values())
    assert choose("auto", "cuda", total + GIB, FLUX).policy == "none"
    assert choose("auto", "cuda", total + GIB - 1, FLUX).policy == "model"
    assert choose("auto", "cuda", total, FLUX, headroom_gb=0).policy == "none"


def test_offloading_turns_on_vae_tiling_for_the_decode() -> None:
    assert choose("auto", "cuda", free_on(24), FLUX).vae_tiling
    assert not choose("auto", "cuda", free_on(80), FLUX).vae_tiling
    assert choose("auto", "cuda", free_on(80), FLUX, vae_tiling=True).vae_tiling  # the manifest can ask anyway


def test_an_explicit_policy_is_kept_and_the_cpu_decides_nothing() -> None:
    assert choose("sequential", "cuda", free_on(80), FLUX).policy == "sequential"
    plan = choose("auto", "cpu", None, FLUX)
    assert plan.policy == "cpu" and "no GPU" in plan.reason
    unknown = choose("auto", "cuda", None, FLUX)
    assert unknown.policy == "model" and "free memory is unknown" in unknown.reason


def test_component_sizes_come_from_the_manifest_weights_only() -> None:
    artifacts = [ArtifactSpec("transformer/a.safetensors", 10, None), ArtifactSpec("transformer/b.safetensors", 5, None),
                 ArtifactSpec("transformer/config.json", 99, None), ArtifactSpec("vae/d.safetensors", 3, None),
                 ArtifactSpec("model.safetensors", 7, None), ArtifactSpec("text_encoder/e.safetensors", None, None)]
    assert component_sizes(artifacts) == {"transformer": 15, "vae": 3, "": 7}


def test_a_real_pipeline_is_measured_and_placed(tiny_sd: Path) -> None:
    import diffusers
    import torch

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_sd, dtype=torch.float32, local_files_only=True)
    sizes = module_sizes(pipe)
    assert set(sizes) == {"unet", "vae", "text_encoder"}
    unet_bytes = sum(p.numel() * 4 for p in pipe.unet.parameters())
    assert sizes["unet"] >= unet_bytes
    plan = MemoryPlan("none", "auto", "test", vae_tiling=True, vae_slicing=True)
    apply(pipe, plan, "cpu")
    assert pipe.vae.use_tiling and pipe.vae.use_slicing
    assert plan.as_dict()["policy"] == "none"


def test_true_cfg_makes_flux_use_the_negative_prompt_only_where_declared(tiny_models: dict[str, Path]) -> None:
    """FLUX.1-dev ignores negative_prompt without true CFG; with serving.true_cfg_scale it counts."""
    import numpy as np

    from builder.manifest import load_manifest
    from builder.render import image_manifest_json
    from server.loaders import DiffusersTextToImage
    from server.schemas import TextToImageRequest
    from server.spec import ModelSpec
    import json as _json

    root = Path(__file__).resolve().parent.parent
    document = _json.loads(image_manifest_json(load_manifest(root / "manifests/tiny-flux.yaml")))
    declared = DiffusersTextToImage(ModelSpec.from_document(document), tiny_models["tiny-flux"], "cpu")
    document["serving"].pop("true_cfg_scale")
    plain = DiffusersTextToImage(ModelSpec.from_document(document), tiny_models["tiny-flux"], "cpu")
    base = dict(prompt="a red fox", width=64, height=64, num_inference_steps=2, guidance_scale=3.5, seed=3)
    negative = TextToImageRequest(**base, negative_prompt="snow, winter, blur")
    positive_only = TextToImageRequest(**base)
    assert declared.memory.policy == "cpu"
    with_cfg = declared.predict(negative).pixels
    assert not np.allclose(with_cfg, declared.predict(positive_only).pixels)  # the negative prompt changed it
    assert np.allclose(plain.predict(negative).pixels, plain.predict(positive_only).pixels)  # ignored without it
