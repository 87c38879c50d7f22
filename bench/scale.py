"""How the cost of a build grows with the weights: each phase's seconds and GB/s at 1, 2 and 4 GiB.

    .venv/bin/python -m bench.scale [--gib 1 2 4]

For each size, a fixture of that many GiB of random (incompressible) weights, in two files
beside the demo's tiny pipeline (so the smoke runs a real model), is published to a loopback Hub
and built by the builder itself (`run_build`), cold: nothing of it in the weights cache. A
registry of the bench's own takes the push. Phases, from BuildKit's step timings and the build's
own clock:

- fetch + verify + export: the weights stage's fetch step (download from the Hub, sha256 as the
  bytes arrive, then the copy into /export);
- layers: the `COPY --from=weights` steps plus BuildKit's "exporting layers" (the engine hashes
  and stores each layer);
- smoke: the container runs the model;
- push: the builder's push (uncompressed weights layers).

Printed beside what this machine can do at most: sha256 (`openssl speed -evp sha256`), a disk
write with fdatasync (`dd`), so a reader sees which phase grows fastest and how far each is from
its limit. The padding files are removed from the weights cache afterwards.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from builder.build import BuildOptions, Services, run_build
from builder.cache import run_cache_tool
from builder.config import BuilderConfig, MirrorEntry
from builder.docker import Docker
from builder.ledger import Ledger
from builder.manifest import Manifest
from builder.project import Project
from builder.registry import RegistryClient, RegistryRef
from builder.registry.layers import EngineLayers
from builder.registry.push import Pusher
from tests.engines import scratch_registry
from tests.fixtures.tiny_models import make_tiny_sd
from tests.localhub import LocalHub

ROOT = Path(__file__).resolve().parent.parent
_STEP = re.compile(r"^#(\d+) (\[.*)$")
_DONE = re.compile(r"^#(\d+) DONE (\d+(?:\.\d+)?)s$")
_EXPORT = re.compile(r"exporting layers (\d+(?:\.\d+)?)s done")


def machine_limits(workdir: Path) -> dict[str, float]:
    out = subprocess.run(["openssl", "speed", "-evp", "sha256", "-seconds", "2", "-bytes", "16777216"],
                         capture_output=True, text=True).stdout
    sha = float(out.strip().splitlines()[-1].split()[-1].rstrip("k")) * 1000 / 1e9
    target = workdir / "dd.bin"
    dd = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=16M", "count=64", "conv=fdatasync"],
                        capture_output=True, text=True).stderr
    target.unlink(missing_ok=True)
    match = re.search(r"copied, ([\d.]+) s", dd)
    disk = (16 * 64 * 2**20 / float(match.group(1)) / 1e9) if match else float("nan")
    return {"sha256_gbps": sha, "disk_write_gbps": disk}


def fixture(workdir: Path, gib: float) -> Path:
    repo = make_tiny_sd(workdir / "repo")
    padding = repo / "padding"
    padding.mkdir()
    half = int(gib * 2**30 / 2)
    for i in range(2):
        with (padding / f"shard-{i}.safetensors").open("wb") as handle:
            for _ in range(0, half, 2**24):
                handle.write(os.urandom(min(2**24, half)))
    return repo


def phases(lines: list[str]) -> dict[str, float]:
    names: dict[str, str] = {}
    found = {"fetch + verify + export": 0.0, "layers": 0.0}
    for line in lines:
        if match := _STEP.match(line):
            names.setdefault(match.group(1), match.group(2))
        elif match := _DONE.match(line):
            name = names.get(match.group(1), "")
            if "builder.fetch /opt/builder-fetch/weights.json" in name:
                found["fetch + verify + export"] += float(match.group(2))
            elif "COPY --from=weights" in name:
                found["layers"] += float(match.group(2))
        if match := _EXPORT.search(line):
            found["layers"] += float(match.group(1))
    return found


def run_size(gib: float, run: str, demo: dict, docker: Docker, registry: str) -> tuple[dict[str, float], int]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        repo = fixture(tmp, gib)
        files = sorted(p for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts)
        artifacts = []
        for path in files:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(2**24), b""):
                    digest.update(block)
            artifacts.append({"path": str(path.relative_to(repo)), "size": path.stat().st_size, "sha256": digest.hexdigest()})
        total = sum(a["size"] for a in artifacts)
        with LocalHub(tmp / "hub") as hub:
            repo_id = f"bench/scale-{run}"
            commit = hub.serve_in_place(repo_id, repo)
            data = copy.deepcopy(demo)
            data["name"] = f"scale-{run}-{str(gib).replace('.', '-')}g"
            data["sources"] = [{"repo_id": repo_id, "revision": commit, "artifacts": artifacts}]
            data["runtime"]["large_file_bytes"] = 1048576
            manifest = Manifest.model_validate(data)
            services = Services(BuilderConfig(mirrors=(MirrorEntry(name="local", url=hub.url),)),
                                Ledger(tmp / "ledger.sqlite3"))
            lines: list[str] = []
            started = time.perf_counter()
            result = run_build(manifest, "bench", Project(ROOT), BuildOptions(registry=registry), services,
                               lambda: docker, lambda message: None, lines.append)
            wall = time.perf_counter() - started
            found = phases(lines)
            found["smoke"] = result.seconds.get("smoke", 0.0)
            found["push"] = result.seconds.get("push", 0.0)
            found["whole build"] = wall
            docker.client.images.remove(result.image_id, force=True)
        # Leave the weights cache as it was: drop this fixture's files from it.
        ours = {a["sha256"] for a in artifacts}
        present = {r["sha256"] for r in run_cache_tool(docker, demo["runtime"]["base_image"], ["ls"]) if r.get("sha256")}
        run_cache_tool(docker, demo["runtime"]["base_image"], ["prune", "--unreferenced"], keep=present - ours)
    return found, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    args = parser.parse_args()
    demo = yaml.safe_load((ROOT / "manifests/demo.yaml").read_text())
    docker = Docker.connect()
    run = hashlib.sha256(str(time.time()).encode()).hexdigest()[:6]
    with tempfile.TemporaryDirectory(prefix="bench-limits-", dir="/var/tmp") as tmp:
        limits = machine_limits(Path(tmp))
    print(f"this machine: sha256 {limits['sha256_gbps']:.2f} GB/s (openssl, one core), "
          f"disk write {limits['disk_write_gbps']:.2f} GB/s (dd, fdatasync)")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-registry-", dir="/var/tmp") as tmp, \
            scratch_registry(Path(tmp)) as registry:
        # The base image is in the registry before the first build, as it is in use: each build's
        # push is then its weights and code (the base layers are mounted, not sent).
        base = docker.client.images.get(demo["runtime"]["base_image"]).id
        Pusher(RegistryClient(RegistryRef.parse(registry)), EngineLayers.open(docker.client)).push("base", "1", base)
        for gib in args.gib:
            found, total = run_size(gib, run, demo, docker, registry)
            results.append((gib, found, total))
            print(f"  {gib:g} GiB done: " + ", ".join(f"{k} {v:.1f}s" for k, v in found.items()), flush=True)
    print()
    order = ["fetch + verify + export", "layers", "smoke", "push", "whole build"]
    print("| phase | " + " | ".join(f"{gib:g} GiB: s (GB/s)" for gib, _, _ in results) + " | growth 1st->last |")
    print("|---|" + "---|" * (len(results) + 1))
    for phase in order:
        cells = []
        for _, found, total in results:
            seconds = found[phase]
            cells.append(f"{seconds:.1f} ({total / 1e9 / seconds:.2f})" if seconds > 0 else "-")
        first, last = results[0][1][phase], results[-1][1][phase]
        growth = f"{last / first:.1f}x for {results[-1][2] / results[0][2]:.1f}x the bytes" if first > 0 else "-"
        print(f"| {phase} | " + " | ".join(cells) + f" | {growth} |")


if __name__ == "__main__":
    main()
