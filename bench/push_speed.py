"""Push speed: the builder's push against `docker push`, on a weights-heavy image.

    .venv/bin/python -m bench.push_speed [--gib 2] [--files 4] [--rounds 2]

One session, one machine, a registry of its own on loopback (distribution, its storage in a
temporary directory), images built here with the project's weights-stage layout: FILES files of
random (incompressible) bytes, each in its own `COPY /export/sha256-.../` layer, on a small
Debian base. Each round builds an image with new weights and pushes it both ways into fresh
repositories, the order alternating; medians are printed. Then:

- a version bump (same weights, new code) pushed by both into a fresh repository of the same
  registry: seconds and weight bytes sent;
- a push stopped at about half way (SIGTERM's path: the chunks in flight finish), then resumed
  by a new process' worth of state: bytes the resumed push sent over the bytes that were left;
  and the same after SIGKILL (nothing finishes: an upload session cut mid-chunk is refused by
  the registry, so the blobs in flight start over);
- pulls of both images, by digest, into a second Docker engine with an empty data root.

With `--profile ghcr`, both pushes go through a stand-in that answers as GHCR does
(tests/registry_standin.py: a chunk over 4 MiB with Content-Range refused with 416) in front of
the same registry, and the builder pushes three ways: its GHCR profile (each large blob in one
PATCH without Content-Range, as `docker push` sends it), that profile held to 4 MiB chunks with
Content-Range (each acknowledged, resumable), and nothing configured (the first 416 teaches the
limit); both also push straight to the registry, for what the stand-in itself costs. Only the
push times are measured then.

The table goes into as_built.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker

from builder.registry import RegistryClient, RegistryRef, profiles
from builder.registry.layers import EngineLayers
from builder.registry.push import PushSettings, PushStopped, Pusher
from tests.engines import scratch_registry, second_engine
from tests.registry_standin import ghcr, registry_standin

BASE = "builder-local/debian:bookworm"
DOCKER_CLI = "/usr/bin/docker"


def build_image(workdir: Path, tag: str, seed: str, code: str, files: int, mib: int) -> str:
    """An image laid out like the builder's: weights from a `weights` stage, one layer per file."""
    names = [hashlib.sha256(f"{seed}/{i}".encode()).hexdigest() for i in range(files)]
    lines = [f"FROM {BASE} AS weights", f"RUN echo {seed}"]
    for i, name in enumerate(names):
        lines.append(f"RUN mkdir -p /export/sha256-{name}/models/bench && "
                     f"head -c {mib * 1024 * 1024} /dev/urandom > /export/sha256-{name}/models/bench/w{i}.safetensors")
    lines.append(f"FROM {BASE}")
    lines += [f"COPY --from=weights /export/sha256-{name}/ /" for name in names]
    lines += ["COPY app.txt /app/app.txt", 'CMD ["cat", "/app/app.txt"]']
    ctx = workdir / f"ctx-{tag.replace(':', '-').replace('/', '-')}"
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    (ctx / "app.txt").write_text(code + "\n")
    subprocess.run([DOCKER_CLI, "build", "-q", "--network", "host", "-t", tag, str(ctx)], check=True,
                   capture_output=True, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    return docker.from_env().images.get(tag).id


def docker_push(client, registry: str, repo: str, image_id: str) -> tuple[float, int]:
    """`docker push` (through the engine's API): seconds, and bytes of layers it uploaded."""
    client.api.tag(image_id, f"{registry}/{repo}", "1")
    uploaded: dict[str, int] = {}
    started = time.perf_counter()
    for event in client.api.push(f"{registry}/{repo}", tag="1", stream=True, decode=True):
        if "error" in event:
            raise RuntimeError(event["error"])
        detail = event.get("progressDetail") or {}
        if event.get("status") == "Pushing" and detail.get("total"):
            uploaded[event["id"]] = detail["total"]
        if event.get("status", "").startswith(("Mounted from", "Layer already exists")):
            uploaded.pop(event.get("id", ""), None)
    seconds = time.perf_counter() - started
    client.api.remove_image(f"{registry}/{repo}:1")
    return seconds, sum(uploaded.values())


SETTINGS = PushSettings()


def builder_push(registry: str, repo: str, image_id: str, state: Path, stop_at: float | None = None,
                 settings: PushSettings | None = None) -> tuple[float, Pusher]:
    stop = threading.Event()

    def watch(progress) -> None:
        if stop_at is not None and progress.total and progress.done >= stop_at * progress.total:
            stop.set()

    pusher = Pusher(RegistryClient(RegistryRef.parse(registry)), EngineLayers.open(docker.from_env()),
                    settings or SETTINGS, on_progress=watch, stop=stop, state_dir=state)
    started = time.perf_counter()
    try:
        pusher.push(repo, "1", image_id)
    except PushStopped:
        pass
    return time.perf_counter() - started, pusher


def acknowledged(registry: str, repo: str, image_id: str, state: Path) -> tuple[int, int]:
    """(bytes the registry holds for this push, total bytes): finished or mountable blobs, open sessions."""
    client = RegistryClient(RegistryRef.parse(registry))
    pusher = Pusher(client, EngineLayers.open(docker.from_env()), state_dir=state)
    config, blobs = pusher.plan(image_id)
    held, total = 0, len(config)
    for blob in blobs:
        size = blob.expected
        total += size
        holders = [client.ref.path(repo), *pusher.state.holders(blob.digest or "")]
        if blob.digest and any(client.blob_size(h, blob.digest) is not None for h in holders):
            held += size  # in this repository, or mountable from another: no byte to send
            continue
        session = pusher.state.session(client.ref.path(repo), blob.digest or "")
        if session and client.upload_offset(client.ref.path(repo), session[0]) == session[1]:
            held += session[1]
    return held, total


def _child_push(registry: str, repo: str, image_id: str, state: str) -> None:
    """Run one push and print the bytes done every 0.1 s (for the SIGKILL measurement)."""
    last = [0.0]

    def report(progress) -> None:
        now = time.monotonic()
        if now - last[0] > 0.1:
            last[0] = now
            print(json.dumps({"done": progress.done, "total": progress.total}), flush=True)

    Pusher(RegistryClient(RegistryRef.parse(registry)), EngineLayers.open(docker.from_env()),
           on_progress=report, state_dir=Path(state)).push(repo, "1", image_id)


def killed_push(registry: str, repo: str, image_id: str, state: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bench.push_speed", "--child", registry, repo, image_id, str(state)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        progress = json.loads(line)
        if progress["total"] and progress["done"] >= progress["total"] / 2:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()


def pull(client, reference: str) -> float:
    """Seconds to pull `reference` (by digest) into `client`'s engine, which is emptied afterwards."""
    started = time.perf_counter()
    for event in client.api.pull(reference, stream=True, decode=True):
        if "error" in event:
            raise RuntimeError(event["error"])
    seconds = time.perf_counter() - started
    for image in client.images.list(all=True):
        client.images.remove(image.id, force=True)
    return seconds


def ghcr_profile(args: argparse.Namespace, engine, run: str, mib: int) -> None:
    """Push times through a stand-in that answers as GHCR: `docker push` against the builder's
    GHCR profile (streamed), the same profile in 4 MiB chunks, and the builder with nothing configured."""
    ways = {"ghcr profile (streamed PATCH)": profiles.by_name("ghcr"),
            "ghcr profile, 4 MiB chunks": dataclasses.replace(profiles.by_name("ghcr"), streamed=False),
            "nothing configured (learns from the 416)": profiles.DEFAULT}
    direct = {"docker push, straight to the registry": None, "builder, straight to the registry": profiles.DEFAULT}
    times: dict[str, list[float]] = {"docker push": [], **{name: [] for name in ways}, **{name: [] for name in direct}}
    requests_made: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="push-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        with scratch_registry(work / "registry") as upstream, registry_standin(upstream, ghcr()) as (registry, log):
            print(f"GHCR stand-in {registry} in front of {upstream}; {args.files} x {mib} MiB per image, {args.rounds} rounds")
            base_id = engine.images.get(BASE).id
            docker_push(engine, registry, f"warm-docker-{run}", base_id)
            docker_push(engine, upstream, f"warm-docker-direct-{run}", base_id)
            builder_push(upstream, f"warm-builder-direct-{run}", base_id, work / "state-direct")
            for i, profile in enumerate(ways.values()):
                builder_push(registry, f"warm-builder-{run}-{i}", base_id, work / f"state-{i}",
                             settings=PushSettings(chunk_bytes=SETTINGS.chunk_bytes, profile=profile))
            for r in range(args.rounds):
                image_id = build_image(work, f"bench-push-{run}-{r}:1", f"{run}-{r}", "v1", args.files, mib)
                order = ["docker push", *ways, *direct]
                for name in (order if r % 2 == 0 else order[::-1]):
                    before = len(log.requests)
                    if name == "docker push":
                        seconds, _ = docker_push(engine, registry, f"d-{run}-{r}", image_id)
                    elif name in direct and direct[name] is None:
                        seconds, _ = docker_push(engine, upstream, f"dd-{run}-{r}", image_id)
                    elif name in direct:
                        seconds, _ = builder_push(upstream, f"bd-{run}-{r}", image_id, work / "state-direct")
                    else:
                        i = list(ways).index(name)
                        seconds, _ = builder_push(registry, f"b{i}-{run}-{r}", image_id, work / f"state-{i}",
                                                  settings=PushSettings(chunk_bytes=SETTINGS.chunk_bytes,
                                                                        profile=ways[name]))
                    times[name].append(seconds)
                    requests_made[name] = len(log.requests) - before
                    print(f"  round {r + 1}: {name}: {seconds:.1f}s, {requests_made[name]} requests")
        for image in engine.images.list(name=f"bench-push-{run}-*"):
            engine.images.remove(image.id, force=True)
    theirs = statistics.median(times["docker push"])
    print()
    print("| push through a GHCR stand-in | seconds (median) | requests | vs docker push |")
    print("|---|---|---|---|")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"| {name} | {seconds:.1f} | {requests_made[name]} | {theirs / seconds:.1f}x |")
    print(json.dumps({name: statistics.median(values) for name, values in times.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="Weights per image, GiB.")
    parser.add_argument("--files", type=int, default=4, help="Weight files (layers) per image.")
    parser.add_argument("--rounds", type=int, default=2, help="Push rounds (each method once per round).")
    parser.add_argument("--pulls", type=int, default=2, help="Pull rounds (each image once per round).")
    parser.add_argument("--chunk-mb", type=int, default=PushSettings().chunk_bytes // 2**20, help="Chunk size, MiB.")
    parser.add_argument("--profile", choices=["ghcr"], help="Push through a stand-in that answers as this registry.")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global SETTINGS
    SETTINGS = PushSettings(chunk_bytes=args.chunk_mb * 2**20)
    if args.child:
        _child_push(*args.child)
        return
    mib = int(args.gib * 1024 / args.files)
    engine = docker.from_env(timeout=1200)
    run = hashlib.sha256(str(time.time()).encode()).hexdigest()[:8]
    if args.profile == "ghcr":
        ghcr_profile(args, engine, run, mib)
        return
    rows: dict[str, object] = {"weights_gib": mib * args.files / 1024, "files": args.files}
    with tempfile.TemporaryDirectory(prefix="push-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        with scratch_registry(work / "registry") as registry:
            print(f"registry {registry}, {args.files} x {mib} MiB of random weights per image, {args.rounds} rounds")
            # Both methods first push the base image, untimed: in use, the base is in the registry.
            base_id = engine.images.get(BASE).id
            docker_push(engine, registry, f"warm-docker-{run}", base_id)
            docker_push(engine, upstream, f"warm-docker-direct-{run}", base_id)
            builder_push(upstream, f"warm-builder-direct-{run}", base_id, work / "state-direct")
            builder_push(registry, f"warm-builder-{run}", base_id, work / "state")
            theirs, ours, our_stats = [], [], []
            images = []
            for r in range(args.rounds):
                image_id = build_image(work, f"bench-push-{run}-{r}:1", f"{run}-{r}", "v1", args.files, mib)
                images.append(image_id)
                for method in (("docker", "builder") if r % 2 == 0 else ("builder", "docker")):
                    if method == "docker":
                        seconds, _ = docker_push(engine, registry, f"d-{run}-{r}", image_id)
                        theirs.append(seconds)
                    else:
                        seconds, pusher = builder_push(registry, f"b-{run}-{r}", image_id, work / "state")
                        ours.append(seconds)
                        our_stats.append(pusher.stats)
                    print(f"  round {r + 1}: {method} push {seconds:.1f}s")
            rows["docker_push_s"] = statistics.median(theirs)
            rows["builder_push_s"] = statistics.median(ours)
            rows["push_speedup"] = rows["docker_push_s"] / rows["builder_push_s"]

            # A version bump: the last round's weights, new code, into fresh repositories.
            bump = build_image(work, f"bench-push-{run}-bump:1", f"{run}-{args.rounds - 1}", "v2", args.files, mib)
            seconds, sent = docker_push(engine, registry, f"d-{run}-bump", bump)
            rows["bump_docker_s"], rows["bump_docker_layer_bytes"] = seconds, sent
            seconds, pusher = builder_push(registry, f"b-{run}-bump", bump, work / "state")
            rows["bump_builder_s"], rows["bump_builder_weight_bytes"] = seconds, pusher.stats.weight_bytes_sent
            print(f"  version bump: docker {rows['bump_docker_s']:.1f}s ({sent} layer bytes), builder "
                  f"{seconds:.1f}s ({pusher.stats.weight_bytes_sent} weight bytes, {pusher.stats.sent_bytes} bytes in all)")

            # Stopped half way (SIGTERM / Ctrl-C: chunks in flight finish), then resumed.
            stopped_image = build_image(work, f"bench-push-{run}-stop:1", f"{run}-stop", "v1", args.files, mib)
            builder_push(registry, f"b-{run}-stop", stopped_image, work / "state", stop_at=0.5)
            held, total = acknowledged(registry, f"b-{run}-stop", stopped_image, work / "state")
            seconds, pusher = builder_push(registry, f"b-{run}-stop", stopped_image, work / "state")
            rows["stop_left_bytes"], rows["stop_resume_sent_bytes"] = total - held, pusher.stats.sent_bytes
            rows["stop_resume_ratio"] = pusher.stats.sent_bytes / max(total - held, 1)
            print(f"  stopped at {held / total:.0%}: resume sent {pusher.stats.sent_bytes} of {total - held} bytes left "
                  f"({rows['stop_resume_ratio']:.3f}x)")

            # Killed (SIGKILL) half way, then resumed.
            killed_image = build_image(work, f"bench-push-{run}-kill:1", f"{run}-kill", "v1", args.files, mib)
            killed_push(registry, f"b-{run}-kill", killed_image, work / "state")
            held, total = acknowledged(registry, f"b-{run}-kill", killed_image, work / "state")
            seconds, pusher = builder_push(registry, f"b-{run}-kill", killed_image, work / "state")
            rows["kill_left_bytes"], rows["kill_resume_sent_bytes"] = total - held, pusher.stats.sent_bytes
            rows["kill_resume_ratio"] = pusher.stats.sent_bytes / max(total - held, 1)
            print(f"  killed at {held / total:.0%} acknowledged: resume sent {pusher.stats.sent_bytes} of "
                  f"{total - held} bytes left ({rows['kill_resume_ratio']:.3f}x)")

            # Pulls into an engine that has none of the layers.
            client = RegistryClient(RegistryRef.parse(registry))
            last = args.rounds - 1
            gz = client.image(f"d-{run}-{last}", "1")
            raw = client.image(f"b-{run}-{last}", "1")
            pulls: dict[str, list[float]] = {"docker": [], "builder": []}
            with second_engine(work / "engine") as other:
                for r in range(args.pulls):
                    for method in (("docker", "builder") if r % 2 == 0 else ("builder", "docker")):
                        ref = f"{registry}/d-{run}-{last}@{gz.digest}" if method == "docker" else \
                            f"{registry}/b-{run}-{last}@{raw.digest}"
                        pulls[method].append(pull(other, ref))
            rows["pull_gzip_s"] = statistics.median(pulls["docker"])
            rows["pull_uncompressed_s"] = statistics.median(pulls["builder"])
        for image in engine.images.list(name=f"bench-push-{run}-*"):
            engine.images.remove(image.id, force=True)
    print()
    print("| measure | docker push | builder | ratio |")
    print("|---|---|---|---|")
    print(f"| push {rows['weights_gib']:.1f} GiB image (median of {args.rounds}) | {rows['docker_push_s']:.1f} s | "
          f"{rows['builder_push_s']:.1f} s | {rows['push_speedup']:.1f}x faster |")
    print(f"| version bump into a fresh repository | {rows['bump_docker_s']:.1f} s | {rows['bump_builder_s']:.1f} s, "
          f"{rows['bump_builder_weight_bytes']} weight bytes | |")
    print(f"| resume after a stop at ~50% (bytes sent / bytes left) | (starts over) | "
          f"{rows['stop_resume_sent_bytes'] / 1e9:.2f} / {rows['stop_left_bytes'] / 1e9:.2f} GB | {rows['stop_resume_ratio']:.2f}x |")
    print(f"| resume after SIGKILL at ~50% | (starts over) | "
          f"{rows['kill_resume_sent_bytes'] / 1e9:.2f} / {rows['kill_left_bytes'] / 1e9:.2f} GB | {rows['kill_resume_ratio']:.2f}x |")
    print(f"| pull by digest into an empty engine (median of {args.pulls}) | {rows['pull_gzip_s']:.1f} s (gzip) | "
          f"{rows['pull_uncompressed_s']:.1f} s (uncompressed) | {rows['pull_gzip_s'] / rows['pull_uncompressed_s']:.2f}x |")
    print(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
