"""The demo model is made locally and must match what manifests/demo.yaml pins, byte for byte.

When a package upgrade changes the generated files, this fails first (before a build does):
regenerate with `python -m tests.fixtures.tiny_models tiny-sd DIR`, and update the manifest's
hashes, sizes and revision (the loopback Hub's commit id for those files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from builder.manifest import Manifest
from tests.localhub import scan_repo


def test_generated_files_match_the_demo_manifest(tiny_sd: Path, demo_manifest_data: dict) -> None:
    manifest = Manifest.model_validate(demo_manifest_data)
    source = manifest.sources[0]
    expected = {a.path: (a.sha256, a.size) for a in source.artifacts}
    actual = {
        p.relative_to(tiny_sd).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
        for p in tiny_sd.rglob("*") if p.is_file()
    }
    assert actual == expected


def test_the_loopback_hub_serves_them_at_the_pinned_revision(tiny_sd: Path, demo_manifest_data: dict) -> None:
    source = demo_manifest_data["sources"][0]
    assert scan_repo(source["repo_id"], tiny_sd).commit == source["revision"]


def test_the_pipeline_loads_and_draws_with_the_real_diffusers(tiny_sd: Path) -> None:
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a cat", num_inference_steps=2, width=64, height=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all() and image.std() > 0.01
