"""The weights cache (a BuildKit cache mount) in real builds: cold vs warm, in one session.

    .venv/bin/python -m bench.weights_cache [--gib 1]

Needs what `make env` starts. Publishes a model of fresh random files (so no earlier run can
have cached them) to a loopback Hub and times three image builds through builder's own render
and docker modules (build only: the files are random, there is nothing to smoke-test):

1. cold: model A, nothing cached: download, verify, export, layers;
2. another model B holding the same files: its weights stage runs, but the cache serves every
   byte (copied out and re-hashed, never downloaded);
3. model A again, unchanged: BuildKit's layer cache, the weights stage does not run.

Prints seconds, the ratio to the cold build, and the bytes each build asked the Hub for.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

from builder.docker import BuildRequest, Docker
from builder.manifest import Manifest
from builder.project import Project
from builder.render import RenderOptions, write_context
from tests.localhub import LocalHub

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    demo = yaml.safe_load((ROOT / "manifests/demo.yaml").read_text())
    docker = Docker.connect()
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repo"
        repo.mkdir()
        size = int(args.gib * 2**30 / 2)
        for i in range(2):
            with (repo / f"shard-{i}.safetensors").open("wb") as fh:
                for _ in range(0, size, 2**24):
                    fh.write(os.urandom(min(2**24, size)))
        (repo / "config.json").write_text('{"bench": true}\n')
        artifacts = []
        for path in sorted(repo.iterdir()):
            artifacts.append({"path": path.name, "size": path.stat().st_size,
                              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
        with LocalHub(tmp / "hub") as hub:
            commit = hub.serve_in_place("bench/cache-model", repo)
            config = tmp / "fetch.json"
            config.write_text(json.dumps({"mirrors": [{"name": "local", "url": hub.url}], "progress_seconds": 3600}))
            rows, images = [], []
            for label, name in (("cold: model A, nothing cached", "bench-a"),
                                ("model B, same files, cache warm", "bench-b"),
                                ("model A again, unchanged", "bench-a")):
                data = copy.deepcopy(demo)
                data.update(name=name, profile="experimental")
                data["sources"] = [{"repo_id": "bench/cache-model", "revision": commit, "artifacts": artifacts}]
                manifest = Manifest.model_validate(data)
                context = write_context(manifest, "bench", RenderOptions(), Project(ROOT), tmp / f"ctx-{len(rows)}")
                hub.clear_log()
                started = time.perf_counter()
                image = docker.build(BuildRequest(context, {"fetch_config": config}), on_line=lambda line: None)
                seconds = time.perf_counter() - started
                images.append(image)
                sent = sum(r.sent for r in hub.requests)
                rows.append((label, seconds, sent))
    for image in set(images):
        docker.client.images.remove(image, force=True)
    cold = rows[0][1]
    total = sum(a["size"] for a in artifacts)
    print(f"model of {total / 1e9:.2f} GB ({len(artifacts)} files); image build only")
    print(f"{'build':36} {'seconds':>8} {'vs cold':>8} {'bytes from Hub':>15}")
    for label, seconds, sent in rows:
        print(f"{label:36} {seconds:8.1f} {seconds / cold:8.2f} {sent:15,}")


if __name__ == "__main__":
    main()
