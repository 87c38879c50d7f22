"""Which files get a layer of their own: push and pull times for three `large_file_bytes`.

    .venv/bin/python -m bench.threshold [--thresholds-mib 16 64 256] [--scale 1]

A model of 27 random files from 1 MiB to 256 MiB (three of each power of two, 1.5 GiB; `--scale`
multiplies every size) is laid out as the builder lays weights out: each file at or over the
threshold a layer of its own, the rest in one bundle. For each threshold the image (those layers
only) is pushed by the builder's push into a registry of its own and pulled into an empty
second engine, so nothing is shared between the rounds. More layers: more requests, but more in
parallel and finer reuse between models; fewer: one big bundle that changes whenever any small
file does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from builder.registry import RegistryClient, RegistryRef
from builder.registry.push import Pusher
from builder.weights.tar import Entry, TarBlob, pieces_of
from tests.engines import scratch_registry, second_engine


def make_files(root: Path, scale: float) -> list[tuple[Path, int, str]]:
    files = []
    for power in range(9):
        for copy in range(3):
            size = int((2**power) * 2**20 * scale)
            path = root / f"w-{power}-{copy}.bin"
            digest = hashlib.sha256()
            with path.open("wb") as handle:
                for start in range(0, size, 2**24):
                    block = os.urandom(min(2**24, size - start))
                    digest.update(block)
                    handle.write(block)
            files.append((path, size, digest.hexdigest()))
    return files


def layers_for(files: list[tuple[Path, int, str]], threshold: int) -> list[TarBlob]:
    layers, small = [], []
    for path, size, sha in files:
        if size >= threshold:
            layers.append(TarBlob(pieces_of([Entry(f"opt/weights/sha256/{sha}", size=size, source=path)])))
        else:
            small.append(Entry(f"opt/models/bench/{path.name}", size=size, source=path))
    if small:
        layers.append(TarBlob(pieces_of(small)))
    for layer in layers:
        _ = layer.diff_id  # computed before the clock starts
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds-mib", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-threshold-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "files").mkdir()
        files = make_files(tmp / "files", args.scale)
        total = sum(size for _, size, _ in files)
        for mib in args.thresholds_mib:
            layers = layers_for(files, mib * 2**20)
            config = json.dumps({"architecture": "amd64", "os": "linux",
                                 "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
                                 "config": {}}).encode()
            with scratch_registry(tmp / f"registry-{mib}") as registry, second_engine(tmp / f"engine-{mib}") as other:
                client = RegistryClient(RegistryRef.parse(registry))
                pusher = Pusher(client, None, state_dir=tmp / f"state-{mib}")
                started = time.perf_counter()
                digest = pusher.push_blobs("model", "1", config, [pusher.weights_blob(layer) for layer in layers])
                push = time.perf_counter() - started
                started = time.perf_counter()
                other.images.pull(f"{registry}/model@{digest}")
                pull = time.perf_counter() - started
            rows.append((mib, len(layers), push, pull))
            print(f"  {mib} MiB: {len(layers)} layers, push {push:.1f}s, pull {pull:.1f}s", flush=True)
    print()
    print(f"{len(files)} files, {total / 1e9:.2f} GB")
    print("| large_file_bytes | layers | push s | pull s | push + pull vs the first row |")
    print("|---|---|---|---|---|")
    first = rows[0][2] + rows[0][3]
    for mib, count, push, pull in rows:
        print(f"| {mib} MiB | {count} | {push:.1f} | {pull:.1f} | {(push + pull) / first:.2f} |")


if __name__ == "__main__":
    main()
