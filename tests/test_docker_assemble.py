"""Assemble on one host, smoke on another: a host with less disk than the model pushes the image
by digest, untagged, streaming the weights from the Hub to the registry; `builder smoke` then
pulls that digest, runs the smoke and only then tags it. Both run as the build workflow's own
step scripts (.github/workflows/build.yml), in bash as GitHub runs them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from builder.registry import RegistryClient, RegistryRef
from tests.conftest import ROOT, make_project, unique_name
from tests.engines import scratch_registry
from tests.test_docker_build import DOCKER, demo_variant
from tests.test_versions import _step

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]
BIG = 2 * 1024**3
SCRATCH_MB = 128


@pytest.fixture
def small_disk(tmp_path: Path):
    """A filesystem of 128 MiB for everything the builder writes (its cache, its temporary files)."""
    where = tmp_path / "scratch"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SCRATCH_MB}m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a small tmpfs (the tests run as root): {mounted.stderr}"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def run_step(name: str, cwd: Path, env: dict[str, str], tmp: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """A step of the build workflow, `python` being this interpreter; (process, its GITHUB_OUTPUT)."""
    script, _ = _step(name)
    shims = tmp / "bin"
    shims.mkdir(exist_ok=True)
    (shims / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (shims / "python").chmod(0o755)
    output = tmp / f"output-{len(list(tmp.glob('output-*')))}"
    output.write_text("")
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd, timeout=1200,
                          env={**env, "PATH": f"{shims}:{env['PATH']}", "PYTHONPATH": str(ROOT),
                               "GITHUB_OUTPUT": str(output)}, capture_output=True, text=True)
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return proc, outputs


def _peak_use(path: Path, stop: threading.Event, peak: list[int]) -> None:
    while not stop.wait(0.1):
        stat = os.statvfs(path)
        peak[0] = max(peak[0], (stat.f_blocks - stat.f_bfree) * stat.f_frsize)


def test_a_2_gib_model_assembles_through_a_disk_smaller_than_it_then_smokes_and_tags_elsewhere(
    tmp_path: Path, hub, tiny_sd: Path, isolated_env: dict, demo_manifest_data: dict, small_disk: Path
) -> None:
    data = demo_variant(demo_manifest_data, "asm")
    repo = tmp_path / "repo"
    shutil.copytree(tiny_sd, repo)
    (repo / "extra").mkdir()
    big = hashlib.sha256()
    with open(repo / "extra" / "big.bin", "wb") as out:
        for _ in range(BIG // (64 * 1024**2)):
            block = os.urandom(64 * 1024**2)
            big.update(block)
            out.write(block)
    repo_id = f"builder-test/{data['name']}"
    commit = hub.serve_in_place(repo_id, repo)
    artifacts = []
    for path in sorted(p for p in repo.rglob("*") if p.is_file()):
        body = path.read_bytes() if path.stat().st_size < BIG else None
        digest = hashlib.sha256(body).hexdigest() if body is not None else big.hexdigest()
        artifacts.append({"path": str(path.relative_to(repo)), "size": path.stat().st_size, "sha256": digest})
    data["sources"] = [{"repo_id": repo_id, "revision": commit, "artifacts": artifacts}]
    project = make_project(tmp_path, data)
    (small_disk / "tmp").mkdir()
    env = {**isolated_env, "BUILDER_WEIGHTS_CACHE": str(small_disk / "cache"), "TMPDIR": str(small_disk / "tmp")}

    with scratch_registry(tmp_path / "registry") as registry:
        where = f"{registry}/{unique_name('ns')}"
        stop, peak = threading.Event(), [0]
        watcher = threading.Thread(target=_peak_use, args=(small_disk, stop, peak), daemon=True)
        watcher.start()
        try:
            assembled, outputs = run_step("Assemble and push by digest", project.root,
                                          {**env, "BUILDER_REGISTRY": where, "MANIFESTS": json.dumps([data["name"]])},
                                          tmp_path)
        finally:
            stop.set()
            watcher.join()
        assert assembled.returncode == 0, assembled.stderr[-3000:]
        assert json.loads(outputs["names"]) == [data["name"]]
        reference = json.loads(outputs["references"])[data["name"]]
        result = json.loads((project.root / f"assembled-{data['name']}.json").read_text())
        assert reference == result["digest_reference"]
        assert reference.startswith(f"{where}/{data['name']}@sha256:") and not result["pushed"]
        assert result["smoke"] == {} and result["smoke_via"] == "none"
        # The 2 GiB went from the Hub to the registry: the disk held the small files, never it.
        assert peak[0] < 32 * 1024**2, f"{peak[0]} bytes used on the scratch disk"
        assert not (small_disk / "cache" / "v1" / "sha256" / big.hexdigest()).exists()
        client = RegistryClient(RegistryRef.parse(where))
        assert client.tags(data["name"]) == []  # no tag before a smoke passed

        smoked, _ = run_step("Pull by digest, smoke-test on the GPU, tag", project.root,
                             {**isolated_env, "REFERENCES": outputs["references"], "MANIFEST": data["name"]}, tmp_path)
        try:
            if smoked.returncode != 0:  # the workflow asks for the GPU, which this machine lacks: one line, then without
                assert "--gpus all: this Docker engine has no NVIDIA runtime" in smoked.stderr.strip().splitlines()[-1]
                smoked = subprocess.run([sys.executable, "-m", "builder", "smoke", reference, "--json"], cwd=project.root,
                                        capture_output=True, text=True, env=isolated_env, timeout=1200)
                (project.root / "result.json").write_text(smoked.stdout)
            assert smoked.returncode == 0, smoked.stderr[-3000:]
            done = json.loads((project.root / "result.json").read_text())
            assert done["smoke"]["passed"] and done["tag"] == f"{where}/{data['name']}:{data['version']}"
            assert client.image(data["name"], data["version"]).digest == reference.split("@", 1)[1]
            assert client.get_document(data["name"], f"{reference.split('@', 1)[1].replace(':', '-')}.smoke")["passed"]
            # The file is in the image, whole, at its place (checked in the pulled image itself).
            listing = subprocess.run([DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "sha256sum", reference,
                                      f"/opt/models/{data['name']}/extra/big.bin"],
                                     capture_output=True, text=True, check=True).stdout
            assert listing.split()[0] == big.hexdigest()
        finally:
            subprocess.run([DOCKER, "rmi", "-f", reference], capture_output=True)

        # A digest the registry does not hold is one line.
        other = subprocess.run([sys.executable, "-m", "builder", "--root", str(project.root), "smoke",
                                reference.replace(reference.rsplit(':', 1)[1], "0" * 64)],
                               capture_output=True, text=True, env=isolated_env, cwd=ROOT, timeout=300)
        assert other.returncode != 0 and "is not in the registry" in other.stderr.strip().splitlines()[-1]
