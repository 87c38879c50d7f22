"""Demo build times: cold, unchanged, and after a server-code-only change, in one session.

    .venv/bin/python -m bench.build_times [--keep-cache]

Needs what `make env` starts (dockerd, the local base image). Serves the tiny demo model from a
loopback Hub, copies the project to a temp root, and times `python -m builder build demo --no-push`
(build + smoke, as a user runs it):

1. cold: BuildKit's cache pruned first (`docker builder prune -af`), base image kept, and an
   empty weights cache of the bench's own;
2. warm, nothing changed;
3. a one-line change to server/app.py.

Prints seconds and the ratio of each to the cold build, plus how many Hub requests each made.
Pruning the build cache affects other builds on this engine: pass --keep-cache to skip it
(then "cold" is only as cold as the cache allows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fixtures.tiny_models import make_tiny_sd
from tests.localhub import LocalHub

ROOT = Path(__file__).resolve().parent.parent


def timed_build(root: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds of the whole command, of the image build, of the smoke test)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "--root", str(root), "build", "demo", "--no-push", "--quiet", "--json"],
        check=True, env=env, capture_output=True, text=True,
    )
    wall = time.perf_counter() - started
    seconds = json.loads(proc.stdout)["seconds"]
    return wall, seconds["code_image"], seconds["smoke"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep-cache", action="store_true", help="do not prune BuildKit's cache first")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp_path = Path(tmp)
        model = make_tiny_sd(tmp_path / "tiny-sd")
        root = tmp_path / "project"
        for part in ("manifests", "templates", "server"):
            shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
        with LocalHub(tmp_path / "hub") as hub:
            hub.publish("builder-demo/tiny-sd", model)
            config = tmp_path / "builder.yaml"
            config.write_text(json.dumps({"mirrors": [{"name": "local", "url": hub.url}]}))
            env = {**os.environ, "BUILDER_CONFIG": str(config), "BUILDER_LEDGER": str(tmp_path / "ledger.sqlite3"),
                   "HF_HOME": str(tmp_path / "hf"), "BUILDER_WEIGHTS_CACHE": str(tmp_path / "weights-cache")}
            for name in ("HF_TOKEN", "HF_ENDPOINT"):
                env.pop(name, None)
            if not args.keep_cache:
                subprocess.run(["/usr/bin/docker", "builder", "prune", "-af"], check=True, stdout=subprocess.DEVNULL)
            rows = []
            for label, change in (("cold", None), ("warm, unchanged", None), ("server code changed", "server/app.py")):
                if change:
                    path = root / change
                    path.write_text(path.read_text() + f"\n# bench change {time.time()}\n")
                hub.clear_log()
                rows.append((label, *timed_build(root, env), len(hub.requests)))
    cold_wall, cold_build = rows[0][1], rows[0][2]
    print(f"{'demo, --no-push':22} {'total s':>8} {'vs cold':>8} {'code s':>8} {'vs cold':>8} {'smoke s':>8} {'hub reqs':>9}")
    for label, wall, build, smoke, requests in rows:
        print(f"{label:22} {wall:8.1f} {wall / cold_wall:8.2f} {build:8.1f} {build / cold_build:8.2f} {smoke:8.1f} {requests:9d}")


if __name__ == "__main__":
    main()
