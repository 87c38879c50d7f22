"""Cold start: `docker run` to /ready 200 for the demo image, against loading the same pipeline in
a bare Python process; and peak resident memory while loading against the weights' size.

    .venv/bin/python -m bench.cold_start [--runs 3] [--mid-channels 128 256 512]

Needs what `make env` starts. In one session: builds the demo image (`builder build demo
--no-push`, from a loopback Hub), then times, `--runs` times each, (a) `docker run` until
/ready answers 200 and (b) a fresh `python` that imports diffusers and loads the same files,
until it has the pipeline. Prints the medians and their ratio (goal: at most 1.3x).

Memory: a fresh process records its resident size after the imports and its peak after
loading, for the tiny demo pipeline and for a mid-size random Stable Diffusion pipeline (about
200M parameters, made here) whose weights dwarf the interpreter; the growth is compared with the
weights' size on disk (goal: at most 1.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.conftest import free_port
from tests.fixtures.tiny_models import make_tiny_sd
from tests.localhub import LocalHub

ROOT = Path(__file__).resolve().parent.parent
DOCKER = "/usr/bin/docker"
LOAD = """
import sys, time, json
started = time.perf_counter()
def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}
import torch
from diffusers import StableDiffusionPipeline
imported = status()
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM: count the peak of loading alone
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], local_files_only=True)
loaded = status()
loaded_seconds = time.perf_counter() - started
pipe.set_progress_bar_config(disable=True)
pipe("a cat", num_inference_steps=1, width=64, height=64, generator=torch.Generator().manual_seed(0))
inferred = status()  # every weight has now been read: mmap'd pages count as resident
print(json.dumps({"imported": imported, "loaded": loaded, "inferred": inferred, "loaded_seconds": loaded_seconds,
                  "total_seconds": time.perf_counter() - started}), flush=True)
"""


def build_demo(tmp: Path) -> tuple[str, Path]:
    model = make_tiny_sd(tmp / "tiny-sd")
    with LocalHub(tmp / "hub") as hub:
        hub.publish("builder-demo/tiny-sd", model)
        config = tmp / "builder.yaml"
        config.write_text(json.dumps({"mirrors": [{"name": "local", "url": hub.url}]}))
        env = {**os.environ, "BUILDER_CONFIG": str(config), "BUILDER_LEDGER": str(tmp / "ledger.sqlite3")}
        env.pop("HF_TOKEN", None)
        proc = subprocess.run([sys.executable, "-m", "builder", "build", "demo", "--no-push", "--json", "--quiet"],
                              env=env, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout)["image_id"], model


def container_cold_start(image: str) -> float:
    port = free_port()
    started = time.perf_counter()
    container = subprocess.run([DOCKER, "run", "-d", "--rm", "--network", "host", "-e", f"PORT={port}", image],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            if time.perf_counter() - started > 300:
                raise SystemExit("the container did not become ready in 300 s")
            time.sleep(0.02)
    finally:
        subprocess.run([DOCKER, "rm", "-f", container], capture_output=True)


def bare_load(model: Path) -> dict:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LOAD, str(model)], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}).stdout
    wall = time.perf_counter() - started
    result = json.loads(out.strip().splitlines()[-1])
    # from spawning the process to having the pipeline: the inference after it is not part of a cold start
    result["wall_seconds"] = wall - (result["total_seconds"] - result["loaded_seconds"])
    return result


def make_mid_size(target: Path, channels: list[int]) -> Path:
    """A Stable Diffusion pipeline as the demo's, with a wider UNet (random weights)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    make_tiny_sd(target)
    torch.manual_seed(0)
    blocks = len(channels)
    unet = UNet2DConditionModel(block_out_channels=tuple(channels), layers_per_block=2, sample_size=32,
                                in_channels=4, out_channels=4, cross_attention_dim=32,
                                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (blocks - 1),
                                up_block_types=("CrossAttnUpBlock2D",) * (blocks - 1) + ("UpBlock2D",))
    pipe = StableDiffusionPipeline.from_pretrained(target, local_files_only=True)
    pipe.unet = unet
    pipe.register_modules(unet=unet)
    pipe.save_pretrained(target)
    return target


def weights_bytes(model: Path) -> int:
    return sum(p.stat().st_size for p in model.rglob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mid-channels", type=int, nargs="+", default=[128, 256, 512])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp_name:
        tmp = Path(tmp_name)
        image, model = build_demo(tmp)
        container = [container_cold_start(image) for _ in range(args.runs)]
        bare = [bare_load(model) for _ in range(args.runs)]
        mid = make_mid_size(tmp / "mid", args.mid_channels)
        memory = [("tiny demo pipeline", weights_bytes(model), bare_load(model)),
                  ("mid-size SD pipeline", weights_bytes(mid), bare_load(mid))]
    c, b = statistics.median(container), statistics.median(r["wall_seconds"] for r in bare)
    print(f"cold start, median of {args.runs} ({os.cpu_count()} CPUs):")
    print(f"  docker run -> /ready 200           {c:6.2f} s   (runs: {', '.join(f'{x:.2f}' for x in container)})")
    bare_runs = ", ".join(f"{r['wall_seconds']:.2f}" for r in bare)
    print(f"  bare python: import + load          {b:6.2f} s   (runs: {bare_runs})")
    print(f"  ratio {c / b:.2f}x (goal <= 1.3x)")
    print("memory while loading, MB (fresh process, /proc/self/status; peak reset after the imports):")
    print(f"  {'model':22} {'weights':>8} {'imported':>9} {'loaded':>7} {'peak loading':>13} {'/weights':>9} "
          f"{'peak after 1st inference':>25} {'/weights':>9}")
    for label, size_bytes, r in memory:
        size = size_bytes / 2**20
        base = r["imported"]["VmRSS"]
        load_growth = r["loaded"]["VmHWM"] - base
        run_growth = r["inferred"]["VmHWM"] - base
        print(f"  {label:22} {size:8.1f} {base:9.0f} {r['loaded']['VmRSS']:7.0f} {load_growth:13.0f} "
              f"{load_growth / size:8.2f}x {run_growth:25.0f} {run_growth / size:8.2f}x")
    print("  (growth over the RSS after imports, which is the interpreter, torch and diffusers; goal: at most 1.5x"
          " the weights. Loading maps safetensors files; their pages become resident as inference reads them.)")


if __name__ == "__main__":
    main()
