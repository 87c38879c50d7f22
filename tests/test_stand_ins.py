"""The CPU stand-ins differ from their production manifests only in source, the licence of
their (random) weights, and sizes: what they prove about the production build stays true."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"name", "version", "description", "license", "sources", "smoke_test"}


@pytest.mark.parametrize(("production", "stand_in"), [("flux", "tiny-flux"), ("z-image", "tiny-z-image")])
def test_stand_in_differs_only_in_source_and_sizes(production: str, stand_in: str) -> None:
    real = yaml.safe_load((ROOT / "manifests" / f"{production}.yaml").read_text())
    tiny = yaml.safe_load((ROOT / "manifests" / f"{stand_in}.yaml").read_text())
    assert {k: v for k, v in real.items() if k not in ALLOWED} == {k: v for k, v in tiny.items() if k not in ALLOWED}
    # the smoke asks the same of both, at another size
    shape = lambda data: {k: v for k, v in data["smoke_test"]["inputs"].items() if k not in ("width", "height", "num_inference_steps")}  # noqa: E731
    assert shape(real) == shape(tiny)
    assert load_manifest(ROOT / "manifests" / f"{stand_in}.yaml").locked


REFERENCE = ROOT / "tests/reference/known-artifacts.yaml"
SHARED = ROOT.parent / "shared/reference/known-artifacts.yaml"


def test_the_reference_copy_matches_the_shared_one_where_both_exist() -> None:
    if not SHARED.exists():
        pytest.skip("../shared/reference is not next to this checkout (a clean CI clone): the copy stands alone")
    assert yaml.safe_load(REFERENCE.read_text()) == yaml.safe_load(SHARED.read_text())


def test_production_manifests_pin_only_what_is_known() -> None:
    """Every hash in them is one the reference lists; nothing was invented."""
    known = yaml.safe_load(REFERENCE.read_text())
    for name, repo in (("flux", "black-forest-labs/FLUX.1-dev"), ("z-image", "Tongyi-MAI/Z-Image-Turbo")):
        manifest = load_manifest(ROOT / "manifests" / f"{name}.yaml")
        source = manifest.sources[0]
        assert source.repo_id == repo
        files = known[repo]["files"]
        assert source.revision == known[repo]["revision"]
        for artifact in source.artifacts:
            reference = files[artifact.path]
            assert artifact.sha256 == reference.get("sha256")
            assert artifact.size == reference.get("size")
        assert not manifest.locked  # the rest waits for `builder lock` on a machine that reaches the Hub
