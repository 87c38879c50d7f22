"""How a cold build grows with the weights, against the two limits measured alone in the same run.

    .venv/bin/python -m bench.scale [--gib 1 2 4 8] [--pull]

For each size, a fixture of that many GiB of random (incompressible) weights, in two files
beside the demo's tiny pipeline (so the smoke runs a real model), is served by a loopback Hub.
In the same session, for each size:

- download alone: the fetch engine's stream of every file, verified (sha256), into nothing;
- upload alone: the same bytes, as the same layers, from disk to a registry of the same kind on
  the same disk (its own, so the build's push finds nothing there), through the builder's push;
- the build: `run_build`, cold (an empty weights cache), pushing to that registry; then a
  version bump of it (same weights, new version).

Disk: the build host's extra disk is sampled every 0.2 s (df of the filesystem holding the
weights cache and Docker's data root, less what the bench's own registry and Hub hold), and
the bytes written per phase are read from /proc/diskstats at the build's phase lines, less what
the registry wrote in that time. The fixture's files are removed afterwards.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from builder.build import BuildOptions, Services, run_build
from builder.config import BuilderConfig, MirrorEntry
from builder.docker import Docker
from builder.fetch import ContentCache, FetchConfig, FetchEngine, Mirror, PlannedFile
from builder.fetch.stream import stream_file
from builder.ledger import Ledger
from builder.manifest import Manifest
from builder.project import Project
from builder.registry import RegistryClient, RegistryRef
from builder.registry.layers import EngineLayers
from builder.registry.push import Pusher
from builder.weights.tar import Entry, TarBlob, file_layer_frame, pieces_of
from tests.engines import scratch_registry, second_engine
from tests.fixtures.tiny_models import make_tiny_sd
from tests.localhub import LocalHub

ROOT = Path(__file__).resolve().parent.parent
GB = 1e9


def du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def disk_written(device: str) -> int:
    """Bytes written to `device` (e.g. vda) since boot, from /proc/diskstats."""
    for line in Path("/proc/diskstats").read_text().splitlines():
        parts = line.split()
        if parts[2] == device:
            return int(parts[9]) * 512
    return 0


def device_of(path: Path) -> str:
    source = subprocess.run(["findmnt", "-no", "SOURCE", "--target", str(path)], capture_output=True, text=True).stdout
    return source.strip().rsplit("/", 1)[-1] or "vda"


@dataclass
class Watch:
    """Peak extra disk on the build host, and bytes written per phase, while a build runs."""

    where: Path
    own: list[Path]  # the bench's registry and Hub: not the build host's
    device: str
    baseline: int = 0
    own_baseline: int = 0
    peak: int = 0
    marks: list[tuple[str, float, int, int]] = field(default_factory=list)  # (phase, time, written, own)
    _stop: threading.Event = field(default_factory=threading.Event)

    def used(self) -> int:
        stat = os.statvfs(self.where)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize

    def own_bytes(self) -> int:
        return sum(du(p) for p in self.own)

    def start(self) -> None:
        self.baseline, self.own_baseline = self.used(), self.own_bytes()
        self.mark("start")
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            extra = self.used() - self.baseline - (self.own_bytes() - self.own_baseline)
            self.peak = max(self.peak, extra)

    def mark(self, phase: str) -> None:
        self.marks.append((phase, time.perf_counter(), disk_written(self.device), self.own_bytes()))

    def stop(self) -> None:
        self._stop.set()
        self.mark("end")

    def written(self) -> dict[str, int]:
        """Bytes the build host wrote in each phase (the registry's own writes taken out)."""
        out: dict[str, int] = {}
        for (phase, _, written, own), (_, _, next_written, next_own) in zip(self.marks, self.marks[1:]):
            out[phase] = out.get(phase, 0) + max(0, (next_written - written) - (next_own - own))
        return out


def phase_of(message: str) -> str | None:
    for start, phase in (("build ", "fetch + code image"), ("image ", "compose"), ("smoke test", "smoke"),
                         ("the image into the engine", "smoke"), ("push ", "push"), ("pushed in", "record")):
        if message.startswith(start):
            return phase
    return None


def fixture(workdir: Path, gib: float) -> tuple[Path, list[dict]]:
    repo = make_tiny_sd(workdir / "repo")
    padding = repo / "padding"
    padding.mkdir()
    half = int(gib * 2**30 / 2)
    for i in range(2):
        with (padding / f"shard-{i}.safetensors").open("wb") as handle:
            for _ in range(0, half, 2**24):
                handle.write(os.urandom(min(2**24, half)))
    artifacts = []
    for path in sorted(p for p in repo.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(2**24), b""):
                digest.update(block)
        artifacts.append({"path": str(path.relative_to(repo)), "size": path.stat().st_size, "sha256": digest.hexdigest()})
    return repo, artifacts


class _NullSink:
    def write(self, data: bytes) -> None:
        pass

    def commit(self, digest: str, size: int) -> None:
        pass

    def abort(self) -> None:
        pass


def download_alone(hub: LocalHub, repo_id: str, commit: str, artifacts: list[dict], scratch: Path) -> float:
    config = FetchConfig(mirrors=(Mirror("local", hub.url),))
    engine = FetchEngine(config, None, ContentCache(scratch), "bench", log=lambda line: None)
    items = [PlannedFile(repo_id, "model", commit, a["path"], a["path"], a["sha256"], a["size"], "x") for a in artifacts]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
        for future in [pool.submit(stream_file, engine, item, (b"", b""), _NullSink()) for item in items]:
            future.result()
    return time.perf_counter() - started


def upload_alone(registry: str, repo: Path, artifacts: list[dict], name: str) -> float:
    client = RegistryClient(RegistryRef.parse(registry))
    pusher = Pusher(client, None)
    layers = []
    for a in artifacts:
        path = repo / a["path"]
        member = f"opt/weights/sha256/{a['sha256']}"
        layers.append(pusher.weights_blob(TarBlob(pieces_of([Entry(member, size=a["size"], source=path)]),
                                                  _frame_digest(path, member, a["size"]))))
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%s]}}' % b",".join(
        b'"%s"' % layer.digest.encode() for layer in layers)
    started = time.perf_counter()
    pusher.push_blobs(name, "1", config, layers)
    return time.perf_counter() - started


def _frame_digest(path: Path, member: str, size: int) -> str:
    head, tail = file_layer_frame(member, size)
    digest = hashlib.sha256(head)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**24), b""):
            digest.update(block)
    digest.update(tail)
    return "sha256:" + digest.hexdigest()


def build_once(manifest: Manifest, services: Services, docker: Docker, registry: str | None, watch: Watch) -> dict:
    def say(message: str) -> None:
        phase = phase_of(message)
        if phase is not None:
            watch.mark(phase)

    watch.start()
    started = time.perf_counter()
    try:
        result = run_build(manifest, "bench", Project(ROOT), BuildOptions(registry=registry, push=registry is not None),
                           services, lambda: docker, say, lambda line: None)
    finally:
        watch.stop()
    return {"wall": time.perf_counter() - started, "seconds": result.seconds, "downloaded": result.downloaded_bytes,
            "written": watch.written(), "peak": watch.peak, "reference": result.digest_reference,
            "image_id": result.image_id, "via": result.smoke_via}


def run_size(gib: float, run: str, demo: dict, docker: Docker, registry: str, registry_dir: Path, pull: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        repo, artifacts = fixture(tmp, gib)
        total = sum(a["size"] for a in artifacts)
        with LocalHub(tmp / "hub") as hub:
            repo_id = f"bench/scale-{run}"
            commit = hub.serve_in_place(repo_id, repo)
            out: dict = {"bytes": total}
            out["download alone"] = download_alone(hub, repo_id, commit, artifacts, tmp / "null-cache")
            # Into a registry of its own (the same program, on the same disk): the build's push must
            # not find these very layers there already.
            with scratch_registry(tmp / "alone-registry") as alone:
                out["upload alone"] = upload_alone(alone, repo, artifacts, f"alone-{run}-{gib:g}")
            shutil.rmtree(tmp / "alone-registry", ignore_errors=True)
            data = copy.deepcopy(demo)
            data["name"] = f"scale-{run}-{str(gib).replace('.', '-')}g"
            data["sources"] = [{"repo_id": repo_id, "revision": commit, "artifacts": artifacts}]
            data["runtime"]["large_file_bytes"] = 1048576
            cache = tmp / "weights-cache"
            config = BuilderConfig(mirrors=(MirrorEntry(name="local", url=hub.url),), weights_cache=str(cache))
            services = Services(config, Ledger(tmp / "ledger.sqlite3"))
            watch = Watch(cache.parent, [registry_dir, tmp / "repo", tmp / "hub"], device_of(cache.parent))
            out["cold"] = build_once(Manifest.model_validate(data), services, docker, registry, watch)
            data["version"] = "0.1.1"
            bump = Watch(cache.parent, [registry_dir, tmp / "repo", tmp / "hub"], device_of(cache.parent))
            out["bump"] = build_once(Manifest.model_validate(data), services, docker, registry, bump)
            out["cache bytes"] = du(cache)
            # The other way to smoke the same image: load it into the engine (what --no-push does).
            loaded = Watch(cache.parent, [registry_dir, tmp / "repo", tmp / "hub"], device_of(cache.parent))
            out["load"] = build_once(Manifest.model_validate(data), services, docker, None, loaded)
            docker.client.images.remove(out["load"]["image_id"], force=True)
            if pull:
                with second_engine(tmp / "engine") as other:
                    started = time.perf_counter()
                    other.images.pull(out["cold"]["reference"])
                    out["pull"] = time.perf_counter() - started
        shutil.rmtree(tmp / "weights-cache", ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--pull", action="store_true", help="also time a pull of each image into an empty engine")
    args = parser.parse_args()
    demo = yaml.safe_load((ROOT / "manifests/demo.yaml").read_text())
    docker = Docker.connect()
    run = hashlib.sha256(str(time.time()).encode()).hexdigest()[:6]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-registry-", dir="/var/tmp") as tmp, \
            scratch_registry(Path(tmp)) as registry:
        # The base image is in the registry before the first build, as it is in use.
        base = docker.client.images.get(demo["runtime"]["base_image"]).id
        Pusher(RegistryClient(RegistryRef.parse(registry)), EngineLayers.open(docker.client)).push("base", "1", base)
        for gib in args.gib:
            found = run_size(gib, run, demo, docker, registry, Path(tmp), args.pull)
            results.append((gib, found))
            cold = found["cold"]
            print(f"  {gib:g} GiB: cold {cold['wall']:.1f}s (download alone {found['download alone']:.1f}s, upload "
                  f"alone {found['upload alone']:.1f}s), peak extra disk {cold['peak'] / GB:.2f} GB, "
                  f"bump {found['bump']['wall']:.1f}s", flush=True)
    print()
    print("| GiB | smoke via mounts: s, GB written | smoke via a load into the engine: s, GB written |")
    print("|---|---|---|")
    for gib, found in results:
        mounts, load = found["cold"], found["load"]
        print(f"| {gib:g} | {mounts['seconds'].get('smoke', 0):.1f}, {mounts['written'].get('smoke', 0) / GB:.2f} | "
              f"{load['seconds'].get('smoke', 0):.1f}, {load['written'].get('smoke', 0) / GB:.2f} |")
    print()
    print("| GiB | weights GB | download alone s | upload alone s | cold build s | ratio to max(alone) | "
          "fetch+code s | smoke s | push s | peak extra disk GB (x weights) | written GB: fetch, smoke, push | "
          "bump s | bump: downloaded, written GB | pull s |")
    print("|" + "---|" * 14)
    for gib, found in results:
        cold, bump = found["cold"], found["bump"]
        limit = max(found["download alone"], found["upload alone"])
        written = cold["written"]
        bump_written = sum(bump["written"].values())
        print(f"| {gib:g} | {found['bytes'] / GB:.2f} | {found['download alone']:.1f} | {found['upload alone']:.1f} | "
              f"{cold['wall']:.1f} | {cold['wall'] / limit:.2f} | {cold['seconds'].get('fetch', 0):.1f} | "
              f"{cold['seconds'].get('smoke', 0):.1f} | {cold['seconds'].get('push', 0):.1f} | "
              f"{cold['peak'] / GB:.2f} ({cold['peak'] / found['bytes']:.2f}) | "
              f"{written.get('fetch + code image', 0) / GB:.2f}, {written.get('smoke', 0) / GB:.2f}, "
              f"{(written.get('push', 0) + written.get('record', 0)) / GB:.2f} | {bump['wall']:.1f} | "
              f"{bump['downloaded'] / GB:.2f}, {bump_written / GB:.2f} | {found.get('pull', float('nan')):.1f} |")


if __name__ == "__main__":
    main()
