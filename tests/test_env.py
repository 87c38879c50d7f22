"""The local CPU base image must already hold every package that manifests built on it pin,
so their `pip install` step needs no network (CI and these machines reach only PyPI, and only
through a proxy the container does not trust)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from packaging.version import InvalidVersion, Version

from builder.manifest import load_manifest

ROOT = Path(__file__).resolve().parent.parent
LOCAL_BASE = "builder-local/python-cpu:3.11"
# Stand-ins built on the local audio base (torch 2.9.1, torchaudio, coqui-tts), not the CPU one.
ON_AUDIO_BASE = {"tiny-xtts"}


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
        if manifest.name in ON_AUDIO_BASE:
            continue
        checked += 1
        assert manifest.runtime.python == "3.11"
        pins = _pins(list(manifest.runtime.packages))
        assert {name: base.get(name) for name in pins} == pins, f"{path.name} pins differ from the base image"
    assert checked >= 5


def test_audio_stand_ins_pin_what_the_audio_base_holds() -> None:
    audio = _pins((ROOT / "tests/env/audio-requirements.txt").read_text().splitlines())
    for name in sorted(ON_AUDIO_BASE):
        manifest = load_manifest(ROOT / "manifests" / f"{name}.yaml")
        assert manifest.runtime.python == "3.11"
        pins = _pins(list(manifest.runtime.packages))
        assert {name: audio.get(name) for name in pins} == pins, f"{name}.yaml pins differ from the audio base image"


def test_the_audio_base_is_installed_from_its_own_full_lock() -> None:
    """Every package audio-requirements.txt names is pinned the same in audio-constraints.txt, and
    torch there is the release whose torchaudio loads here (2.9.1, not the CPU base's 2.13.0)."""
    wanted = _pins((ROOT / "tests/env/audio-requirements.txt").read_text().splitlines())
    locked = _pins((ROOT / "tests/env/audio-constraints.txt").read_text().splitlines())
    assert {name: locked.get(name) for name in wanted} == wanted
    assert locked["torch"] == locked["torchaudio"] == "2.9.1"


def test_the_base_image_and_the_dev_environment_share_one_lock() -> None:
    base = _pins((ROOT / "tests/env/base-requirements.txt").read_text().splitlines())
    locked = {name: version.split("+", 1)[0] for name, version in
              _pins((ROOT / "tests/env/constraints.txt").read_text().splitlines()).items()}
    assert {name: locked.get(name) for name in base} == base


# A pin other machines can install: a package name, `==`, a version (a local label such as +cpu
# allowed). No URLs, `name @ file://...`, paths, editable installs or pip options: those name
# something that exists on one machine only (see issue 10: a wheel under /tmp/lint).
_PIN = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==([^\s;#]+)")


def pin_problems(text: str) -> list[str]:
    """Every line of a requirements or constraints file that is not a `name==version` pin or a comment."""
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        match = _PIN.fullmatch(line)
        if match is None:
            problems.append(f"line {number}: {line!r} is not name==version")
            continue
        try:
            Version(match.group(2))
        except InvalidVersion:
            problems.append(f"line {number}: {match.group(2)!r} is not a version")
    return problems


def _pin_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [p for p in listed if re.search(r"(requirements|constraints)[^/]*\.(txt|in)$", Path(p).name)]


def test_every_requirements_and_constraints_file_holds_only_name_version_pins() -> None:
    files = _pin_files()
    assert "tests/env/constraints.txt" in files and "tests/env/base-requirements.txt" in files
    problems = {path: pin_problems((ROOT / path).read_text(encoding="utf-8")) for path in files}
    assert {path: found for path, found in problems.items() if found} == {}


@pytest.mark.parametrize("line", [
    "zizmor @ file:///tmp/lint/zizmor-1.32.0-py3-none-manylinux_2_28_x86_64.whl#sha256=84a6",
    "torch @ https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-linux_x86_64.whl",
    "-e .",
    "-r other.txt",
    "--find-links /opt/wheels",
    "./wheels/torch-2.13.0-cp311-cp311-linux_x86_64.whl",
    "/tmp/lint/zizmor.whl",
    "git+https://github.com/org/repo@main",
    "torch>=2.4",
    "torch",
    "torch==latest",
])
def test_the_pin_check_refuses_what_only_one_machine_has(line: str) -> None:
    problems = pin_problems(f"# a comment\nnumpy==2.4.6\n{line}\n")
    assert len(problems) == 1 and problems[0].startswith("line 3: "), problems


def test_the_pin_check_accepts_plain_pins_and_comments() -> None:
    assert pin_problems("# head\n\ntorch==2.13.0+cpu\nPyYAML==6.0.4  # why\nbackports.zstd==1.8.0\n") == []
