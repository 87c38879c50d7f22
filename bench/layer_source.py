"""Where the push reads layer bytes from: the engine's layer store (tar-split replay) against
`docker save`, on one image, in one session.

    .venv/bin/python -m bench.layer_source [--image builder-local/python-cpu:3.11] [--rounds 2]

Both read every layer of the image once; the replay also hashes each layer (the check that it
gives the diff id), `docker save` streams its archive to nowhere. Alternating rounds, medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import docker

from builder.registry.layers import EngineLayers


def replay(image_id: str) -> tuple[float, int]:
    store = EngineLayers.open(docker.from_env())
    started = time.perf_counter()
    total = 0
    for layer in store.layers(store.config(image_id)):
        assert layer.sha256() == layer.diff_id
        total += layer.size
    return time.perf_counter() - started, total


def save(image: str) -> tuple[float, int]:
    started = time.perf_counter()
    out = subprocess.run(f"/usr/bin/docker save {image} | wc -c", shell=True, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, int(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="builder-local/python-cpu:3.11")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    image_id = docker.from_env().images.get(args.image).id
    times: dict[str, list[float]] = {"replay": [], "save": []}
    sizes: dict[str, int] = {}
    for r in range(args.rounds):
        for kind in (("replay", "save") if r % 2 == 0 else ("save", "replay")):
            seconds, size = replay(image_id) if kind == "replay" else save(args.image)
            times[kind].append(seconds)
            sizes[kind] = size
    replay_s, save_s = statistics.median(times["replay"]), statistics.median(times["save"])
    print(f"{args.image}: {sizes['replay'] / 1e9:.2f} GB of layers")
    print(f"layer store replay (+ sha256 of each layer): {replay_s:.1f} s ({sizes['replay'] / 1e9 / replay_s:.2f} GB/s)")
    print(f"docker save to nowhere: {save_s:.1f} s ({sizes['save'] / 1e9 / save_s:.2f} GB/s); "
          f"replay takes {replay_s / save_s:.2f}x its time, with no copy of the image written")


if __name__ == "__main__":
    main()
