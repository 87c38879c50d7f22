"""The tiny models are made locally and must match what their manifests pin, byte for byte.

When a package upgrade changes the generated files, this fails first (before a build does):
regenerate with `python -m tests.fixtures.tiny_models NAME DIR REPO_ID`, which prints the
revision and artifact lines to paste into the manifest, and review the diff."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from builder.manifest import load_manifest
from tests.localhub import scan_repo

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_OF = {"tiny-sd": "demo", "tiny-flux": "tiny-flux", "tiny-z-image": "tiny-z-image",
               "tiny-qwen3": "tiny-qwen3", "tiny-bert": "tiny-bert", "tiny-instantid": "tiny-instantid",
               "tiny-sdxl": "tiny-instantid", "tiny-musetalk": "tiny-musetalk", "tiny-sd-vae": "tiny-musetalk",
               "tiny-whisper": "tiny-musetalk"}


def test_every_maker_has_a_manifest() -> None:
    from tests.fixtures.tiny_models import MAKERS

    assert set(MAKERS) == set(MANIFEST_OF)


@pytest.mark.parametrize("model", sorted(MANIFEST_OF))
def test_generated_files_match_the_manifest(model: str, tiny_models: dict[str, Path]) -> None:
    directory = tiny_models[model]
    sources = load_manifest(ROOT / "manifests" / f"{MANIFEST_OF[model]}.yaml").sources
    source = next(s for s in sources if s.repo_id == f"builder-demo/{model}")
    expected = {a.path: (a.sha256, a.size) for a in source.artifacts}
    actual = {
        p.relative_to(directory).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
        for p in directory.rglob("*") if p.is_file()
    }
    assert actual == expected
    assert scan_repo(source.repo_id, directory).commit == source.revision  # what the loopback Hub serves


def test_the_demo_pipeline_loads_and_draws_with_the_real_diffusers(tiny_sd: Path) -> None:
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a cat", num_inference_steps=2, width=64, height=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0.01


@pytest.mark.docker
def test_the_xtts_checkpoint_matches_its_manifest(tiny_xtts: Path) -> None:
    """Made in the audio base image (tests/fixtures/tiny_xtts.py); regenerate with
    `docker run ... python tests/fixtures/tiny_xtts.py OUT` there when its pins change."""
    source = load_manifest(ROOT / "manifests" / "tiny-xtts.yaml").sources[0]
    expected = {a.path: (a.sha256, a.size) for a in source.artifacts}
    actual = {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size) for p in tiny_xtts.iterdir()}
    assert actual == expected
    assert scan_repo(source.repo_id, tiny_xtts).commit == source.revision
