"""GPU check: the smoke of every tiny pipeline, on CUDA, in one go; prints a short table.

Two steps, because the GPU machine has no network and lacks diffusers, pydantic and pillow:

    .venv/bin/python -m bench.gpu_check prepare          # here: .cache/gpu-check/ (models + wheels, ~10 MB)
    python3 bench/gpu_check.py run [--device cuda]       # there, from the repository root

`prepare` makes the tiny models (tests/fixtures/tiny_models.py) with their image manifests and
downloads the Python 3.12 wheels the check needs. `run` installs those wheels into a private
directory (never into the machine's Python), then runs `server.smoke` (the same code the
build's smoke gate runs) for each model on the device, and prints load seconds, first-inference
seconds, peak GPU memory, dtype and the verdict. Exit code 1 if any smoke failed.

With the device tool: run(command="python3 bench/gpu_check.py run", carry=[".cache/gpu-check"]).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "gpu-check"
# Not on the GPU machine (see ../shared/MACHINE.md), pure Python or manylinux wheels for 3.12.
WHEELS = ["diffusers==0.42.1", "pillow==13.0.0", "pydantic==2.14.3", "pydantic_core==2.50.4",
          "annotated-types==0.8.0", "typing-inspection==0.4.5", "typing_extensions==4.16.0",
          "importlib_metadata==10.2.0", "zipp==4.1.2", "lazy-importer==0.1.0", "regex==2026.11.19",
          "safetensors==0.8.0", "filelock==4.3.1", "requests==2.34.2", "urllib3==2.8.0", "idna==3.20",
          "charset_normalizer==3.5.3", "certifi==2026.10.19.post1"]
MODELS = {"tiny-sd": "demo", "tiny-flux": "tiny-flux", "tiny-z-image": "tiny-z-image", "tiny-qwen3": "tiny-qwen3",
          "tiny-bert": "tiny-bert"}


def prepare() -> None:
    from builder.manifest import load_manifest
    from builder.render import image_manifest_json
    from tests.fixtures.tiny_models import MAKERS

    WORK.mkdir(parents=True, exist_ok=True)
    for model, manifest_name in MODELS.items():
        target = WORK / "models" / model
        if not (target / "README.md").exists():
            MAKERS[model](target)
        (WORK / "models" / f"{model}.json").write_text(
            image_manifest_json(load_manifest(ROOT / "manifests" / f"{manifest_name}.yaml")))
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64", "--platform",
                    "manylinux2014_x86_64", "--implementation", "cp", "-d", str(WORK / "wheels"), *WHEELS], check=True)
    size = sum(p.stat().st_size for p in WORK.rglob("*") if p.is_file())
    print(f"prepared {WORK} ({size / 1e6:.1f} MB): carry it with the device tool")


def _install_wheels() -> Path | None:
    """The carried wheels in a private directory, unless this Python already has them (a dry run here)."""
    import importlib.util

    if all(importlib.util.find_spec(name) for name in ("diffusers", "pydantic", "PIL")):
        return None
    target = WORK / f"site-{platform.python_version()}"
    if not target.exists():
        wheels = sorted(str(p) for p in (WORK / "wheels").glob("*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--target", str(target), *wheels], check=True)
    return target


def run(device: str) -> int:
    site = _install_wheels()
    env_path = os.pathsep.join([str(ROOT)] + ([str(site)] if site else []))
    rows = []
    for model in MODELS:
        env = {**os.environ, "PYTHONPATH": env_path, "BUILDER_MANIFEST": str(WORK / "models" / f"{model}.json"),
               "BUILDER_MODEL_DIR": str(WORK / "models" / model), "BUILDER_DEVICE": device, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-m", "server.smoke"], env=env, capture_output=True, text=True,
                              timeout=600, cwd=ROOT)
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            result = {"passed": False, "reason": (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]}
        rows.append((model, result))
    card = "cpu"
    if device == "cuda":
        import torch

        card = torch.cuda.get_device_name(0)
    print(f"GPU check on {card}, Python {platform.python_version()}")
    print(f"{'model':14} {'passed':7} {'load s':>7} {'infer s':>8} {'peak GPU MB':>12} {'dtype':>9}  reason")
    for model, r in rows:
        print(f"{model:14} {str(r.get('passed')):7} {r.get('load_seconds') or 0:7.2f} {r.get('inference_seconds') or 0:8.3f} "
              f"{r.get('peak_gpu_mb') or 0:12.1f} {r.get('dtype') or '-':>9}  {r.get('reason') or ''}")
    return 0 if all(r.get("passed") for _, r in rows) else 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=["prepare", "run"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    if args.step == "prepare":
        prepare()
    else:
        sys.exit(run(args.device))


if __name__ == "__main__":
    main()
