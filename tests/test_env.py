"""The local CPU base image must already hold every package that manifests built on it pin,
so their `pip install` step needs no network (CI and these machines reach only PyPI, and only
through a proxy the container does not trust)."""

from __future__ import annotations

from pathlib import Path

from builder.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent
LOCAL_BASE = "builder-local/python-cpu:3.11"


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_manifests_built_here_pin_what_the_local_base_holds() -> None:
    """The demo names the local base; the stand-ins are built on it with --base-image."""
    base = _pins((ROOT / "tests/env/base-requirements.txt").read_text().splitlines())
    checked = 0
    for path in sorted((ROOT / "manifests").glob("*.yaml")):
        manifest = load_manifest(path)
        if manifest.runtime.base_image != LOCAL_BASE and not manifest.name.startswith("tiny-"):
            continue
        checked += 1
        assert manifest.runtime.python == "3.11"
        pins = _pins(list(manifest.runtime.packages))
        assert {name: base.get(name) for name in pins} == pins, f"{path.name} pins differ from the base image"
    assert checked >= 5


def test_the_base_image_and_the_dev_environment_share_one_lock() -> None:
    base = _pins((ROOT / "tests/env/base-requirements.txt").read_text().splitlines())
    locked = {name: version.split("+", 1)[0] for name, version in
              _pins((ROOT / "tests/env/constraints.txt").read_text().splitlines()).items()}
    assert {name: locked.get(name) for name in base} == base
