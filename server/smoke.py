"""The smoke test: load the baked-in model, run the manifest's smoke inputs through the same
code path as /v1/predict, check the output is real, print one JSON line, exit 0 only if it passed.

    python -m server.smoke            (inside the image; the builder's gate runs exactly this)
"""

from __future__ import annotations

import base64
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from server.checks import output_problem
from server.encode import png_bytes
from server.loaders import AudioOutput, ImageOutput, InputError, LoadError, VideoOutput, load_predictor
from server.media import encode_mp4, encode_wav
from server.schemas import REQUEST_OF_TASK, request_model_for
from server.settings import Settings
from server.spec import ModelSpec


def _peak_memory_mb(device: str | None) -> dict[str, float]:
    peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device == "cuda":
        import torch

        peak["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def _within(seconds: float, work, *args):
    """Run work(*args) in a thread; (finished, result, error)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work(*args)
        except BaseException as exc:  # noqa: BLE001 - reported, not swallowed
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("result"), box.get("error")


ASSETS_ROOT = Path(__file__).resolve().parent  # smoke_test.files are paths under server/


def smoke_files(files: dict[str, str]) -> dict[str, str]:
    """The smoke's file inputs, read from the server folder shipped in the image, base64-encoded."""
    return {field: base64.b64encode((ASSETS_ROOT / path).read_bytes()).decode() for field, path in files.items()}


def run_smoke(settings: Settings) -> dict[str, Any]:
    result: dict[str, Any] = {"passed": False, "reason": None, "load_seconds": None,
                              "inference_seconds": None, "device": None}
    try:
        spec = ModelSpec.load(settings.manifest_path)
    except (OSError, ValueError, KeyError) as exc:
        result["reason"] = f"cannot read the manifest {settings.manifest_path}: {exc}"
        return result
    smoke = spec.smoke
    if spec.task not in REQUEST_OF_TASK:
        result["reason"] = f"no smoke test for task {spec.task} in this server version"
        return result
    try:  # the request model as the image serves it: the smoke's inputs must pass its bounds too
        request_model = request_model_for(spec.task, spec.serving)
    except ValueError as exc:
        result["reason"] = f"the manifest's {exc}"
        return result
    try:
        request = request_model.model_validate({**smoke["inputs"], **smoke_files(smoke.get("files") or {})})
    except OSError as exc:
        result["reason"] = f"smoke_test.files: {exc}"
        return result
    except ValidationError as exc:
        first = exc.errors()[0]
        result["reason"] = f"smoke_test.inputs.{'.'.join(map(str, first['loc']))}: {first['msg']}"
        return result

    started = time.perf_counter()
    done, predictor, error = _within(float(smoke.get("load_timeout_seconds", 600)), load_predictor,
                                     spec, settings.model_dir, settings.device)
    result["load_seconds"] = round(time.perf_counter() - started, 3)
    if not done:
        result["reason"] = f"loading took longer than load_timeout_seconds={smoke.get('load_timeout_seconds')}"
        return result
    if error is not None:
        result["reason"] = str(error) if isinstance(error, LoadError) else f"load failed: {type(error).__name__}: {error}"
        return result
    result["device"], result["dtype"] = predictor.device, predictor.dtype
    if getattr(predictor, "memory", None) is not None:  # where the weights sat, and why (server/memory.py)
        result["memory"] = predictor.memory.as_dict()

    max_seconds = float(smoke["max_seconds"])
    started = time.perf_counter()
    done, output, error = _within(max_seconds, predictor.predict, request)
    elapsed = time.perf_counter() - started
    result["inference_seconds"] = round(elapsed, 3)
    result.update(_peak_memory_mb(predictor.device))
    if not done:
        result["reason"] = f"inference took longer than max_seconds={max_seconds:g}"
        return result
    if isinstance(error, InputError):
        result["reason"] = f"the smoke's input was refused: {error}"
        return result
    if error is not None:
        result["reason"] = f"inference failed: {type(error).__name__}: {error}"
        return result
    if elapsed > max_seconds:
        result["reason"] = f"inference took {elapsed:.1f}s, more than max_seconds={max_seconds:g}"
        return result
    problem = output_problem(output, smoke["expect"], request)
    if problem is None and isinstance(output, ImageOutput):
        result["png_bytes"] = len(png_bytes(output.pixels))  # the route's encoding works too
    if problem is None and isinstance(output, AudioOutput):
        result["wav_bytes"] = len(encode_wav(output.samples, output.sample_rate))
        result["audio_seconds"] = round(output.samples.size / output.sample_rate, 3)
    if problem is None and isinstance(output, VideoOutput):
        result["mp4_bytes"] = len(encode_mp4(output.frames, output.fps, output.audio))
        result["frames"] = int(output.frames.shape[0])
    result["reason"] = problem
    result["passed"] = problem is None
    return result


def main() -> int:
    result = run_smoke(Settings.from_env())
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
