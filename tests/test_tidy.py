"""`builder tidy` on a real engine of its own (tests/engines.py: a second dockerd, so nothing the
other tests or the lead's builds hold is touched): old model images and stale build cache go;
the base, the newest versions and the weights cache mount stay, and the next build still works."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder.tidy import stale
from tests.conftest import make_project, run_builder
from tests.engines import second_engine

REGISTRY = "reg.test/ns"
BASE = f"{REGISTRY}/cuda-base:1"  # under the registry on purpose: a manifest's base stays whatever its name
DOCKER = "/usr/bin/docker"  # the 20.10 client: BuildKit without the buildx plugin (MACHINE.md)


def test_stale_keeps_the_newest_versions_of_each_model() -> None:
    tags = [(f"r/m:{v}", "") for v in ("1.0.0", "1.10.0", "1.2.0", "1.9.0")] + [("r/o:2.0.0", "")]
    assert stale(tags, 2) == ["r/m:1.0.0", "r/m:1.2.0"]  # 1.10.0 is newer than 1.9.0: numbers, not text
    assert stale([("r/m:a", "2026-01-02"), ("r/m:b", "2026-01-01")], 1) == ["r/m:b"]  # not semver: by date


def shell_rootfs() -> bytes:
    """A minimal root: dash as /bin/sh with the C library it needs (enough for RUN and `test`)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for source, target in (("/bin/dash", "bin/sh"), ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6"),
                               ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2")):
            data = Path(source).resolve().read_bytes()
            info = tarfile.TarInfo(target)
            info.size, info.mode = len(data), 0o755
            archive.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def build(engine, context: Path, tag: str, payload: bytes, dockerfile: str) -> None:
    context.mkdir(parents=True, exist_ok=True)
    (context / "payload").write_bytes(payload)
    (context / "Dockerfile").write_text(dockerfile)
    env = {**os.environ, "DOCKER_HOST": engine.socket_url, "DOCKER_BUILDKIT": "1"}
    done = subprocess.run([DOCKER, "build", "--network", "host", "-q", "-t", tag, str(context)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def version_dockerfile(version: str) -> str:
    # The weights stage's way: a file fetched into the weights cache mount, then copied into a layer.
    return (f"FROM {BASE}\n"
            f"RUN --mount=type=cache,id=builder-weights-v1,target=/cache echo {version} > /cache/blob-{version}\n"
            "COPY payload /payload\n")


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_tidy_frees_old_images_and_cache_and_keeps_what_the_next_build_needs(tmp_path: Path,
                                                                             demo_manifest_data: dict) -> None:
    data = json.loads(json.dumps(demo_manifest_data))
    data["runtime"]["base_image"] = BASE
    project = make_project(tmp_path, data)
    with second_engine(tmp_path / "engine") as engine:
        engine.api.import_image_from_data(shell_rootfs(), repository=BASE.rsplit(":", 1)[0], tag="1")
        engine.images.get(BASE).tag("tools/unrelated", "1")  # not under the registry: never touched
        for version in ("1.0.0", "1.1.0", "1.2.0", "1.10.0"):
            build(engine, tmp_path / f"m-{version}", f"{REGISTRY}/m:{version}", os.urandom(1 << 20),
                  version_dockerfile(version))
        build(engine, tmp_path / "o-a", f"{REGISTRY}/o:1.0.0", os.urandom(1 << 20), version_dockerfile("o"))
        build(engine, tmp_path / "o-b", f"{REGISTRY}/o:1.0.0", os.urandom(1 << 20), version_dockerfile("o"))  # the first: dangling
        assert engine.images.list(filters={"dangling": True})

        env = {**os.environ, "DOCKER_HOST": engine.socket_url}
        proc = run_builder(["--root", str(project.root), "tidy", "--registry", REGISTRY, "--keep", "2",
                            "--cache-hours", "0", "--json"], env)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["removed"] == [f"{REGISTRY}/m:1.0.0", f"{REGISTRY}/m:1.1.0"]
        assert report["image_bytes"] >= 2 << 20 and report["cache_bytes"] > 0  # what it freed, as measured
        tags = {tag for image in engine.images.list() for tag in image.tags}
        assert tags == {BASE, "tools/unrelated:1", f"{REGISTRY}/m:1.2.0", f"{REGISTRY}/m:1.10.0", f"{REGISTRY}/o:1.0.0"}
        assert not engine.images.list(filters={"dangling": True})
        records = engine.df()["BuildCache"] or []
        assert any(r["Type"] == "exec.cachemount" for r in records)  # the weights cache mount stays
        assert not [r for r in records if r["Type"] == "regular" and not r["InUse"]]

        # The next build still finds its base, and the weights it cached before the tidy.
        build(engine, tmp_path / "next", f"{REGISTRY}/m:1.11.0", b"next",
              f"FROM {BASE}\nRUN --mount=type=cache,id=builder-weights-v1,target=/cache test -f /cache/blob-1.0.0\n"
              "COPY payload /payload\n")

        plain = run_builder(["--root", str(project.root), "tidy", "--registry", REGISTRY, "--keep", "1"], env)
        assert plain.returncode == 0, plain.stderr
        assert f"removed {REGISTRY}/m:1.10.0" in plain.stdout and "freed " in plain.stdout.splitlines()[-1]


def test_tidy_without_a_registry_is_one_line(tmp_path: Path, demo_manifest_data: dict) -> None:
    project = make_project(tmp_path, demo_manifest_data)
    env = {k: v for k, v in os.environ.items() if k != "BUILDER_REGISTRY"}
    proc = run_builder(["--root", str(project.root), "tidy"], env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no registry: pass --registry")
