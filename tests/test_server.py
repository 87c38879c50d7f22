"""The inference server over real HTTP (uvicorn in a subprocess), and the smoke test."""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from PIL import Image

from builder.manifest import Manifest
from builder.render import image_manifest_json
from tests.conftest import ROOT, free_port, wait_for


def write_manifest_json(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(image_manifest_json(Manifest.model_validate(data)))
    return path


def server_env(manifest_json: Path, model_dir: Path, port: int | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "BUILDER_MANIFEST": str(manifest_json), "BUILDER_MODEL_DIR": str(model_dir),
           "HF_HUB_OFFLINE": "1", "BUILDER_DEVICE": "cpu", "PYTHONPATH": str(ROOT), **extra}
    if port is not None:
        env.update(PORT=str(port), HOST="127.0.0.1")
    return env


@contextmanager
def serve(manifest_json: Path, model_dir: Path, wait_ready: bool = True, **extra: str) -> Iterator[str]:
    port = free_port()
    log = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads while it runs, so it must not fill up
    proc = subprocess.Popen([sys.executable, "-m", "server"], env=server_env(manifest_json, model_dir, port, **extra),
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"

    def exited() -> str | None:
        if proc.poll() is None:
            return None
        log.seek(0)
        return f"exited: {log.read().decode(errors='replace')[-2000:]}"

    try:
        wait_for(lambda: requests.get(f"{url}/health", timeout=1).status_code == 200, 60, "server start", exited)
        if wait_ready:
            wait_for(lambda: requests.get(f"{url}/ready", timeout=2).json()["status"] != "loading", 60, "model load")
        serve.process = proc  # type: ignore[attr-defined]  # for the shutdown test
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory, tiny_sd: Path, demo_manifest_data) -> Iterator[str]:
    manifest_json = write_manifest_json(tmp_path_factory.mktemp("srv"), demo_manifest_data)
    with serve(manifest_json, tiny_sd) as url:
        yield url


def test_ready_and_metadata(demo_server: str, demo_manifest_data) -> None:
    ready = requests.get(f"{demo_server}/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    meta = requests.get(f"{demo_server}/metadata", timeout=5).json()
    assert meta["name"] == "demo" and meta["version"] == "0.1.0"
    assert meta["sources"] == [{"repo_id": "builder-demo/tiny-sd", "revision": demo_manifest_data["sources"][0]["revision"]}]
    assert meta["device"] == "cpu" and meta["dtype"] == "float32"
    assert meta["packages"]["diffusers"]
    # Issue 12: which memory policy was used, and why, in /metadata and /ready alike.
    assert meta["memory"]["policy"] == "cpu" and meta["memory"]["requested"] == "auto"
    assert "no GPU" in meta["memory"]["reason"] and ready.json()["memory"] == meta["memory"]


def _predict(url: str, **body):
    payload = {"prompt": "a photo of the cat", "width": 64, "height": 64, "num_inference_steps": 2, **body}
    return requests.post(f"{url}/v1/predict", json=payload, timeout=60)


def test_predict_returns_a_png_of_the_asked_size(demo_server: str) -> None:
    response = _predict(demo_server, width=96, height=64, seed=7)
    assert response.status_code == 200, response.text
    body = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert image.format == "PNG" and image.size == (96, 64)
    assert body["seed"] == 7 and body["timings"]["inference_seconds"] > 0


def test_raw_png_when_asked(demo_server: str) -> None:
    response = requests.post(f"{demo_server}/v1/predict", headers={"Accept": "image/png"}, timeout=60,
                             json={"prompt": "x", "width": 64, "height": 64, "num_inference_steps": 1, "seed": 3})
    assert response.headers["content-type"] == "image/png" and response.headers["x-seed"] == "3"
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)


def test_the_same_seed_gives_the_same_image(demo_server: str) -> None:
    first = _predict(demo_server, seed=42).json()["image"]
    second = _predict(demo_server, seed=42).json()["image"]
    third = _predict(demo_server, seed=43).json()["image"]
    assert first == second != third


@pytest.mark.parametrize(("body", "field"), [({"width": 72}, "width"), ({"prompt": ""}, "prompt"),
                                            ({"num_inference_steps": 0}, "num_inference_steps"), ({"color": 1}, "color")])
def test_bad_input_is_422_naming_the_field(demo_server: str, body: dict, field: str) -> None:
    response = _predict(demo_server, **body)
    assert response.status_code == 422
    assert field in [str(part) for part in response.json()["detail"][0]["loc"]]


def test_a_missing_artifact_keeps_the_server_up_and_ready_names_it(tmp_path: Path, tiny_sd: Path, demo_manifest_data) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_sd, model_dir)
    (model_dir / "vae/diffusion_pytorch_model.safetensors").unlink()
    with serve(write_manifest_json(tmp_path, demo_manifest_data), model_dir) as url:
        ready = requests.get(f"{url}/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed"
        assert "vae/diffusion_pytorch_model.safetensors (missing)" in ready.json()["reason"]
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
        assert _predict(url).status_code == 503


def _custom(data: dict, function: str) -> dict:
    data = copy.deepcopy(data)
    data["profile"] = "custom-local"
    data["entrypoint"] = {"loader": "custom", "function": function}
    return data


def test_a_load_failure_keeps_the_server_up_with_the_reason(tmp_path: Path, tiny_sd: Path, demo_manifest_data) -> None:
    manifest_json = write_manifest_json(tmp_path, _custom(demo_manifest_data, "tests.fixtures.rigged:broken"))
    with serve(manifest_json, tiny_sd) as url:
        ready = requests.get(f"{url}/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["reason"] == "RuntimeError: CUDA out of memory (rigged)"


def run_smoke(manifest_json: Path, model_dir: Path) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "server.smoke"], env=server_env(manifest_json, model_dir),
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def test_smoke_passes_on_the_real_tiny_pipeline(tmp_path: Path, tiny_sd: Path, demo_manifest_data) -> None:
    code, result = run_smoke(write_manifest_json(tmp_path, demo_manifest_data), tiny_sd)
    assert code == 0 and result["passed"], result
    assert result["device"] == "cpu" and result["load_seconds"] > 0 and result["peak_rss_mb"] > 0


@pytest.mark.parametrize(
    ("function", "max_seconds", "reason"),
    [
        ("tests.fixtures.rigged:blank", 60, "image is blank: constant value 0.500"),
        ("tests.fixtures.rigged:nan", 60, "image has NaN or infinite values"),
        ("tests.fixtures.rigged:slow", 1, "inference took longer than max_seconds=1"),
        ("tests.fixtures.rigged:broken", 60, "load failed: RuntimeError: CUDA out of memory (rigged)"),
    ],
)
def test_smoke_fails_on_rigged_models(tmp_path: Path, tiny_sd: Path, demo_manifest_data, function, max_seconds, reason) -> None:
    data = _custom(demo_manifest_data, function)
    data["smoke_test"]["max_seconds"] = max_seconds
    code, result = run_smoke(write_manifest_json(tmp_path, data), tiny_sd)
    assert code == 1 and not result["passed"]
    assert result["reason"].startswith(reason), result


def test_smoke_fails_when_the_output_size_is_not_the_expected_one(tmp_path: Path, tiny_sd: Path, demo_manifest_data) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["smoke_test"]["expect"] = {"kind": "image", "width": 128, "height": 64}
    code, result = run_smoke(write_manifest_json(tmp_path, data), tiny_sd)
    assert code == 1 and result["reason"] == "image is 64x64, expected 128x64"


# -- the transformers profile --------------------------------------------------------------
def _manifest(name: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "manifests" / f"{name}.yaml").read_text())


def test_text_generation_over_http(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    with serve(write_manifest_json(tmp_path, _manifest("tiny-qwen3")), tiny_models["tiny-qwen3"]) as url:
        body = {"prompt": "the cat sat on the", "max_new_tokens": 6, "temperature": 0.9, "seed": 5}
        first = requests.post(f"{url}/v1/predict", json=body, timeout=60)
        assert first.status_code == 200, first.text
        result = first.json()
        assert isinstance(result["text"], str) and 1 <= result["tokens"] <= 6 and result["seed"] == 5
        assert requests.post(f"{url}/v1/predict", json=body, timeout=60).json()["text"] == result["text"]
        bad = requests.post(f"{url}/v1/predict", json={"prompt": "x", "max_new_tokens": 0}, timeout=10)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "max_new_tokens"
        spec = requests.get(f"{url}/openapi.json", timeout=10).json()
        assert "max_new_tokens" in json.dumps(spec["components"]["schemas"]["TextGenerationRequest"])


def test_embeddings_over_http(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    import numpy as np

    with serve(write_manifest_json(tmp_path, _manifest("tiny-bert")), tiny_models["tiny-bert"]) as url:
        response = requests.post(f"{url}/v1/predict", json={"inputs": ["the cat", "a dog on the mat"]}, timeout=60)
        assert response.status_code == 200, response.text
        vectors = np.array(response.json()["embeddings"])
        assert vectors.shape == (2, 32) == (2, response.json()["dim"])
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert not np.allclose(vectors[0], vectors[1])
        empty = requests.post(f"{url}/v1/predict", json={"inputs": ["  "]}, timeout=10)
        assert empty.status_code == 422


# -- load: the queue, timeouts, metrics, shutdown ------------------------------------------
def _slow_server(tmp_path: Path, tiny_sd: Path, demo_manifest_data: dict, **extra: str):
    return serve(write_manifest_json(tmp_path, _custom(demo_manifest_data, "tests.fixtures.rigged:slow")), tiny_sd, **extra)


def test_beyond_the_queue_is_429_with_retry_after(tmp_path: Path, tiny_sd: Path, demo_manifest_data) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with _slow_server(tmp_path, tiny_sd, demo_manifest_data, BUILDER_MAX_QUEUE="1") as url:
        def call(delay: float):
            time.sleep(delay)
            return _predict(url, seed=1)

        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(call, [0.0, 0.3, 0.6]))  # one runs, one waits, one is turned away
        assert [r.status_code for r in responses] == [200, 200, 429]
        assert int(responses[2].headers["Retry-After"]) >= 1
        assert responses[1].json()["timings"]["queue_seconds"] > 1.0  # it really waited its turn


def test_a_request_past_its_timeout_is_504_and_the_model_stays_busy_until_done(tmp_path: Path, tiny_sd: Path,
                                                                               demo_manifest_data) -> None:
    from concurrent.futures import ThreadPoolExecutor

    record = tmp_path / "inside.log"
    data = _custom(demo_manifest_data, "tests.fixtures.rigged:probe")
    data["entrypoint"]["options"] = {"record": str(record), "seconds": 2}
    with serve(write_manifest_json(tmp_path, data), tiny_sd, BUILDER_REQUEST_TIMEOUT="1", BUILDER_MAX_QUEUE="4") as url:
        late = _predict(url)
        assert late.status_code == 504 and "longer than 1s" in late.json()["detail"]
        # The timed-out inference still runs on; three more callers at once while it does. Each
        # fails its own 1 s budget, and the model never holds two inferences at once: the probe
        # counts who is inside predict() at every entry.
        with ThreadPoolExecutor(3) as pool:
            statuses = [r.status_code for r in pool.map(lambda _: _predict(url), range(3))]
        assert statuses == [504, 504, 504]
        wait_for(lambda: record.read_text().count("enter") == record.read_text().count("exit"), 60,
                 "the model to finish what it started")
    events = record.read_text().split("\n")[:-1]
    entries = [int(line.split()[1]) for line in events if line.startswith("enter")]
    assert entries and max(entries) == 1, events


def test_metrics_count_requests_latency_and_load(demo_server: str) -> None:
    _predict(demo_server, seed=1)
    requests.post(f"{demo_server}/v1/predict", json={"prompt": ""}, timeout=10)
    text = requests.get(f"{demo_server}/metrics", timeout=10).text
    assert 'builder_requests_total{route="/v1/predict",status="200"}' in text
    assert 'builder_requests_total{route="/v1/predict",status="422"}' in text
    assert "builder_request_seconds_bucket" in text and "builder_inference_seconds_count" in text
    assert "builder_model_ready 1.0" in text
    load = next(line for line in text.splitlines() if line.startswith("builder_model_load_seconds "))
    assert float(load.split()[1]) > 0


def test_sigterm_lets_the_running_inference_finish(tmp_path: Path, tiny_sd: Path, demo_manifest_data) -> None:
    import signal
    from concurrent.futures import ThreadPoolExecutor

    with _slow_server(tmp_path, tiny_sd, demo_manifest_data) as url:
        process = serve.process  # type: ignore[attr-defined]
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_predict, url)
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            response = pending.result(timeout=30)
        assert response.status_code == 200
        # uvicorn shuts down gracefully, then re-raises the signal: exit by SIGTERM (143 in a container)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
