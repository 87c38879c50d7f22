"""The CPU stand-ins differ from their production manifests only in source, the licence of
their (random) weights, and sizes: what they prove about the production build stays true."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"name", "version", "description", "license", "sources", "smoke_test", "serving"}
SIZES = ("width", "height", "num_inference_steps")


def same_serving_but_sizes(real: dict, tiny: dict) -> None:
    """The stand-in serves as the production model does, at its own (CPU) image sizes."""
    strip = lambda serving: {**serving, "request": {k: v for k, v in serving.get("request", {}).items()  # noqa: E731
                                                    if k not in SIZES}}
    assert strip(real["serving"]) == strip(tiny["serving"])
    assert set(real["serving"].get("request", {})) == set(tiny["serving"].get("request", {}))


@pytest.mark.parametrize(("production", "stand_in"), [("flux", "tiny-flux"), ("z-image", "tiny-z-image")])
def test_stand_in_differs_only_in_source_and_sizes(production: str, stand_in: str) -> None:
    real = yaml.safe_load((ROOT / "manifests" / f"{production}.yaml").read_text())
    tiny = yaml.safe_load((ROOT / "manifests" / f"{stand_in}.yaml").read_text())
    assert {k: v for k, v in real.items() if k not in ALLOWED} == {k: v for k, v in tiny.items() if k not in ALLOWED}
    # the smoke asks the same of both, at another size
    shape = lambda data: {k: v for k, v in data["smoke_test"]["inputs"].items() if k not in ("width", "height", "num_inference_steps")}  # noqa: E731
    assert shape(real) == shape(tiny)
    same_serving_but_sizes(real, tiny)
    assert load_manifest(ROOT / "manifests" / f"{stand_in}.yaml").locked


# The custom stand-ins may also differ where the CPU cannot follow: the face analyzer (antelopev2
# needs trained weights to find a face; the Haar cascade ships with OpenCV), the packages and
# apt packages the local CPU base lacks, and the SDXL weights' fp16 variant.
FACE_OPTIONS = {"face_analysis", "face_models", "face_modules", "face_projection", "variant"}


@pytest.mark.parametrize(("production", "stand_in"), [("instantid", "tiny-instantid"), ("musetalk", "tiny-musetalk")])
def test_custom_stand_in_differs_only_where_the_cpu_cannot_follow(production: str, stand_in: str) -> None:
    real = yaml.safe_load((ROOT / "manifests" / f"{production}.yaml").read_text())
    tiny = yaml.safe_load((ROOT / "manifests" / f"{stand_in}.yaml").read_text())
    loose = ALLOWED | {"entrypoint", "runtime"}
    assert {k: v for k, v in real.items() if k not in loose} == {k: v for k, v in tiny.items() if k not in loose}
    strip = lambda entry: {**entry, "options": {k: v for k, v in entry["options"].items() if k not in FACE_OPTIONS}}  # noqa: E731
    assert strip(real["entrypoint"]) == strip(tiny["entrypoint"])
    assert real["entrypoint"]["options"]["face_analysis"] == "insightface"
    assert tiny["entrypoint"]["options"]["face_analysis"] == "opencv-haar"
    assert set(tiny["runtime"]["packages"]) <= set(real["runtime"]["packages"])
    assert set(real["runtime"]["packages"]) - set(tiny["runtime"]["packages"]) == {"insightface==2.1", "onnxruntime-gpu==1.31.1"}
    assert {k: v for k, v in real["runtime"].items() if k not in ("packages", "system_packages")} == \
        {k: v for k, v in tiny["runtime"].items() if k not in ("packages", "system_packages")}
    assert real["smoke_test"]["files"] == tiny["smoke_test"]["files"]
    same_serving_but_sizes(real, tiny)
    # the same sources, by target: each tiny repository stands in for one real one
    assert [s.get("target", "") for s in real["sources"] if s.get("target")] == [s["target"] for s in tiny["sources"]]
    assert load_manifest(ROOT / "manifests" / f"{stand_in}.yaml").locked


def test_the_xtts_stand_in_differs_only_in_source_and_its_cpu_time() -> None:
    """Same entrypoint, runtime pins and serving as XTTS-v2: what its Docker test proves on the
    audio base (tests/test_docker_xtts.py) is the production loader on the production pins."""
    real = yaml.safe_load((ROOT / "manifests" / "xtts-v2.yaml").read_text())
    tiny = yaml.safe_load((ROOT / "manifests" / "tiny-xtts.yaml").read_text())
    assert {k: v for k, v in real.items() if k not in ALLOWED} == {k: v for k, v in tiny.items() if k not in ALLOWED}
    assert real["serving"] == tiny["serving"]
    time_only = lambda smoke: {k: v for k, v in smoke.items() if k != "max_seconds"}  # noqa: E731
    assert time_only(real["smoke_test"]) == time_only(tiny["smoke_test"])
    assert load_manifest(ROOT / "manifests" / "tiny-xtts.yaml").locked


REFERENCE = ROOT / "tests/reference/known-artifacts.yaml"
SHARED = ROOT.parent / "shared/reference/known-artifacts.yaml"


def test_the_reference_copy_matches_the_shared_one_where_both_exist() -> None:
    if not SHARED.exists():
        pytest.skip("../shared/reference is not next to this checkout (a clean CI clone): the copy stands alone")
    assert yaml.safe_load(REFERENCE.read_text()) == yaml.safe_load(SHARED.read_text())


def test_production_manifests_pin_only_what_is_known() -> None:
    """Every hash in them is one the reference lists; nothing was invented."""
    known = yaml.safe_load(REFERENCE.read_text())
    for name, repo in (("flux", "black-forest-labs/FLUX.1-dev"), ("z-image", "Tongyi-MAI/Z-Image-Turbo"),
                       ("instantid", "InstantX/InstantID"), ("musetalk", "TMElyralab/MuseTalk")):
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


def test_custom_manifests_pin_only_what_is_known() -> None:
    """InstantID and MuseTalk: their helper sources (SDXL, the VAE, Whisper, the face models) are
    not in the reference, so they stay unlocked (a branch, no hashes) for `builder lock`.
    XTTS-v2: the reference knows every file the model needs, so it is fully locked."""
    known = yaml.safe_load(REFERENCE.read_text())
    for name in ("instantid", "musetalk"):
        manifest = load_manifest(ROOT / "manifests" / f"{name}.yaml")
        for source in manifest.sources[1:]:
            assert source.repo_id not in known or source.repo_type == "space"
            assert source.revision == "main" and source.ref == "main"
            assert all(a.sha256 is None for a in source.artifacts)
        assert not manifest.locked and not manifest.license.commercial_use
    xtts = load_manifest(ROOT / "manifests" / "xtts-v2.yaml")
    reference = known["coqui/XTTS-v2"]
    assert xtts.locked and xtts.sources[0].revision == reference["revision"]
    assert {a.path: {"size": a.size, "sha256": a.sha256} for a in xtts.sources[0].artifacts} == reference["files"]
    assert not xtts.license.commercial_use and xtts.license.approval is None
