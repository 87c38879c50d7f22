"""GPU check: the smoke of every tiny pipeline, on CUDA, in one go; prints a short table.

Two steps, because the GPU machine has no network and lacks diffusers, pydantic and pillow:

    .venv/bin/python -m bench.gpu_check prepare          # here: .cache/gpu-check/ (models + wheels, ~10 MB)
    python3 bench/gpu_check.py run [--device cuda]       # there, from the repository root

`prepare` makes the tiny models (tests/fixtures/tiny_models.py) with their image manifests and
downloads the Python 3.12 wheels the check needs. `run` installs those wheels into a private
directory (never into the machine's Python), then runs `server.smoke` (the same code the
build's smoke gate runs) for each model on the device, and prints load seconds, first-inference
seconds, peak GPU memory, dtype, the memory policy used (server/memory.py) and the verdict.
`run --policies none,model,sequential` runs each model once per offload policy (the manifest's
serving.memory.offload replaced), so the table shows each stand-in's peak GPU memory under each.
Exit code 1 if any smoke failed.

With the device tool, carry is limited to 64 MiB a call, and OpenCV's and PyAV's wheels (for
the InstantID and MuseTalk stand-ins) are 62 and 36 MB: `prepare` splits the bundle in three,
and three calls in quick succession (the machine keeps what earlier calls carried while warm)
bring it over, the last one running the check:

    run(command="true", carry=[".cache/gpu-check/wheels-cv"])
    run(command="true", carry=[".cache/gpu-check/wheels-av"])
    run(command="python3 bench/gpu_check.py run", carry=[".cache/gpu-check/wheels", ".cache/gpu-check/models"])
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
          "charset_normalizer==3.5.3", "certifi==2026.10.19.post1",
          # the custom stand-ins: OpenCV (Haar face detection) and PyAV (MP4), abi3 wheels
          "opencv-python-headless==4.14.0.94", "av==18.1.0"]
# The stand-in manifests to smoke, by the name the table shows. XTTS-v2 has no stand-in: its
# runtime (coqui-tts) cannot be built here (as_built.md, section 15).
MODELS = {"tiny-sd": "demo", "tiny-flux": "tiny-flux", "tiny-z-image": "tiny-z-image", "tiny-qwen3": "tiny-qwen3",
          "tiny-bert": "tiny-bert", "tiny-instantid": "tiny-instantid", "tiny-musetalk": "tiny-musetalk"}


def prepare() -> None:
    import shutil

    from builder.manifest import load_manifest
    from builder.render import image_manifest_json
    from tests.fixtures.tiny_models import MAKERS

    WORK.mkdir(parents=True, exist_ok=True)
    made = WORK / "made"
    for model, manifest_name in MODELS.items():
        manifest = load_manifest(ROOT / "manifests" / f"{manifest_name}.yaml")
        model_dir = WORK / "models" / model
        if not model_dir.exists():  # each source's tiny repository under its target, as the build lays it out
            for source in manifest.sources:
                repo = made / source.repo_id.split("/")[1]
                if not repo.exists():
                    MAKERS[repo.name](repo)
                shutil.copytree(repo, model_dir / source.target, dirs_exist_ok=True)
        (WORK / "models" / f"{model}.json").write_text(image_manifest_json(manifest))
    shutil.rmtree(made, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64", "--platform",
                    "manylinux2014_x86_64", "--implementation", "cp", "-d", str(WORK / "wheels"), *WHEELS], check=True)
    for big, folder in (("opencv_python_headless-", "wheels-cv"), ("av-", "wheels-av")):  # one carry each
        (WORK / folder).mkdir(exist_ok=True)
        for wheel in (WORK / "wheels").glob(f"{big}*.whl"):
            wheel.rename(WORK / folder / wheel.name)
    size = sum(p.stat().st_size for p in WORK.rglob("*") if p.is_file())
    print(f"prepared {WORK} ({size / 1e6:.1f} MB): carry it with the device tool")


def _install_wheels() -> Path | None:
    """The carried wheels in a private directory, unless this Python already has them (a dry run here)."""
    import importlib.util

    if all(importlib.util.find_spec(name) for name in ("diffusers", "pydantic", "PIL", "cv2", "av")):
        return None
    target = WORK / f"site-{platform.python_version()}"
    if not target.exists():
        wheels = sorted(str(p) for p in WORK.glob("wheels*/*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--target", str(target), *wheels], check=True)
    return target


def _manifest_with(model: str, policy: str | None) -> Path:
    """The model's image manifest, with serving.memory.offload replaced when a policy is given."""
    path = WORK / "models" / f"{model}.json"
    if policy is None:
        return path
    document = json.loads(path.read_text())
    document.setdefault("serving", {}).setdefault("memory", {})["offload"] = policy
    changed = WORK / "models" / f"{model}.{policy}.json"
    changed.write_text(json.dumps(document))
    return changed


def run(device: str, policies: list[str | None]) -> int:
    site = _install_wheels()
    env_path = os.pathsep.join([str(ROOT)] + ([str(site)] if site else []))
    rows = []
    for model in MODELS:
        for policy in policies:
            env = {**os.environ, "PYTHONPATH": env_path, "BUILDER_MANIFEST": str(_manifest_with(model, policy)),
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
    print(f"{'model':14} {'policy':10} {'passed':7} {'load s':>7} {'infer s':>8} {'peak GPU MB':>12} {'dtype':>9}  reason")
    for model, r in rows:
        policy = (r.get("memory") or {}).get("policy", "-")
        print(f"{model:14} {policy:10} {str(r.get('passed')):7} {r.get('load_seconds') or 0:7.2f} "
              f"{r.get('inference_seconds') or 0:8.3f} {r.get('peak_gpu_mb') or 0:12.1f} {r.get('dtype') or '-':>9}  "
              f"{r.get('reason') or ''}")
    return 0 if all(r.get("passed") for _, r in rows) else 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=["prepare", "run"])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--policies", default="", help="Comma-separated offload policies to run each model under "
                                                        "(none,model,sequential,auto); default: as each manifest says.")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare()
    else:
        sys.exit(run(args.device, [p for p in args.policies.split(",") if p] or [None]))


if __name__ == "__main__":
    main()
