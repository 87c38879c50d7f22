"""Two build hosts, one registry: the second host's build against the first's.

    .venv/bin/python -m bench.fleet [--gib 1]

A model of the demo's tiny pipeline plus GIB of new random weights (two files) is published to a
loopback Hub. Host 1 (this machine's engine, nothing of the model cached) builds it with the
registry weights store first in its mirror list: it downloads every file from the Hub, pushes,
and publishes each file to `oci://REGISTRY/weights`. Host 2 (a second dockerd with its own data
root: no layer, no BuildKit cache, no weights cache; the base image pulled from the registry
beforehand, untimed) builds the same manifest. Printed: each host's whole build (render, weights
stage, image, smoke, push) in seconds, and the bytes each took from the Hub and from the
registry store.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import yaml

from builder.ledger import Ledger
from builder.registry import RegistryClient, RegistryRef
from builder.registry.layers import EngineLayers
from builder.registry.push import Pusher
from tests.engines import scratch_registry, second_engine
from tests.fixtures.tiny_models import make_tiny_sd
from tests.localhub import LocalHub

ROOT = Path(__file__).resolve().parent.parent
BASE = "builder-local/python-cpu:3.11"


def build(project: Path, name: str, env: dict, registry: str) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "builder", "--root", str(project), "build", name, "--json",
                           "--quiet", "--registry", registry], capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return seconds, json.loads(proc.stdout)


def from_store(ledger: Path, name: str) -> tuple[int, int]:
    rows = {r.mirror: r for r in Ledger(ledger).mirror_stats(name)}
    return (rows["org"].bytes if "org" in rows else 0), (rows["local"].bytes if "local" in rows else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        repo = make_tiny_sd(tmp / "repo")
        (repo / "extra").mkdir()
        half = int(args.gib * 2**30 / 2)
        for i in range(2):
            with (repo / "extra" / f"shard-{i}.safetensors").open("wb") as handle:
                for _ in range(0, half, 2**24):
                    handle.write(os.urandom(min(2**24, half)))
        artifacts = []
        for path in sorted(p for p in repo.rglob("*") if p.is_file()):
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(2**24), b""):
                    digest.update(block)
            artifacts.append({"path": str(path.relative_to(repo)), "size": path.stat().st_size, "sha256": digest.hexdigest()})
        name = f"fleet-{uuid.uuid4().hex[:6]}"
        data = yaml.safe_load((ROOT / "manifests/demo.yaml").read_text())
        project = tmp / "project"
        (project / "manifests").mkdir(parents=True)
        shutil.copytree(ROOT / "templates", project / "templates")
        shutil.copytree(ROOT / "server", project / "server", ignore=shutil.ignore_patterns("__pycache__"))
        with LocalHub(tmp / "hub") as hub, scratch_registry(tmp / "registry") as registry, \
                second_engine(tmp / "engine") as other:
            commit = hub.serve_in_place(f"bench/{name}", repo)
            data.update(name=name)
            data["sources"] = [{"repo_id": f"bench/{name}", "revision": commit, "artifacts": artifacts}]
            (project / "manifests" / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
            config = tmp / "builder.yaml"
            config.write_text(yaml.safe_dump({"mirrors": [{"name": "org", "url": f"oci://{registry}/weights"},
                                                          {"name": "local", "url": hub.url}],
                                              "prefer_fastest_mirror": False}))
            env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "BUILDER_REGISTRY", "HF_ENDPOINT")}
            env.update(BUILDER_CONFIG=str(config), HF_HOME=str(tmp / "hf"), BUILDER_LEDGER=str(tmp / "host1.sqlite3"),
                       BUILDER_WEIGHTS_CACHE=str(tmp / "host1-cache"))
            local = docker.from_env()
            Pusher(RegistryClient(RegistryRef.parse(registry)), EngineLayers.open(local)).push("base", "1", local.images.get(BASE).id)
            other.images.pull(f"{registry}/base", tag="1").tag(BASE)

            hub.clear_log()
            first_s, first = build(project, name, env, f"{registry}/one")
            first_hub = sum(r.sent for r in hub.requests)
            host2 = {**env, "DOCKER_HOST": other.socket_url, "BUILDER_LEDGER": str(tmp / "host2.sqlite3"),
                     "BUILDER_WEIGHTS_CACHE": str(tmp / "host2-cache")}
            hub.clear_log()
            second_s, second = build(project, name, host2, f"{registry}/two")
            second_hub = sum(r.sent for r in hub.requests)
            store1, _ = from_store(tmp / "host1.sqlite3", name)
            store2, _ = from_store(tmp / "host2.sqlite3", name)
            local.images.remove(first["image_id"], force=True)
        # each host's weights cache lived in the bench's temporary directory, gone with it
    total = sum(a["size"] for a in artifacts)
    print(f"model: {total / 1e9:.2f} GB in {len(artifacts)} files")
    print("| host | whole build s | vs host 1 | bytes from the Hub | bytes from the registry store | image build s | push s |")
    print("|---|---|---|---|---|---|---|")
    for label, seconds, hub_bytes, store_bytes, result in (("1 (cold, downloads, publishes)", first_s, first_hub, store1, first),
                                                             ("2 (new engine, empty caches)", second_s, second_hub, store2, second)):
        print(f"| {label} | {seconds:.1f} | {seconds / first_s:.2f} | {hub_bytes:,} | {store_bytes:,} | "
              f"{result['seconds'].get('code_image', 0):.1f} | {result['seconds'].get('push', 0):.1f} |")


if __name__ == "__main__":
    main()
