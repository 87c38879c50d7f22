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


def server_env(manifest_json: Path, model_dir: Path, port: int | None = None) -> dict[str, str]:
    env = {**os.environ, "BUILDER_MANIFEST": str(manifest_json), "BUILDER_MODEL_DIR": str(model_dir),
           "HF_HUB_OFFLINE": "1", "BUILDER_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    if port is not None:
        env.update(PORT=str(port), HOST="127.0.0.1")
    return env


@contextmanager
def serve(manifest_json: Path, model_dir: Path, wait_ready: bool = True) -> Iterator[str]:
    port = free_port()
    log = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads while it runs, so it must not fill up
    proc = subprocess.Popen([sys.executable, "-m", "server"], env=server_env(manifest_json, model_dir, port),
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


@pytest.mark.parametrize(("body", "field"), [({"width": 65}, "width"), ({"prompt": ""}, "prompt"),
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
