"""The ways RunPod runs one image, chosen by environment: the HTTP server with /ping (pods and
load-balancing endpoints, PORT_HEALTH), and the queue worker (BUILDER_SERVE_MODE=queue) driven by
the real runpod SDK against a loopback job queue that speaks its job-take protocol."""

from __future__ import annotations

import base64
import copy
import io
import json
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from server.schemas import TextToImageResponse
from tests.conftest import ROOT, free_port, wait_for
from tests.test_server import serve, server_env, write_manifest_json

# The SDK's fitness checks run before it takes jobs: they connect to 8.8.8.8:53 and check memory,
# disk and (where nvidia-smi answers) the GPU, and os._exit(1) on a failure. A test must not
# reach a live service, so they are off here; on RunPod they stay on.
SDK_CHECKS_OFF = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"}
GOOD_JOB = {"prompt": "a photo of the cat", "width": 96, "height": 64, "num_inference_steps": 2, "seed": 7}


def _custom(data: dict, function: str, **options: str) -> dict:
    data = copy.deepcopy(data)
    data["profile"] = "custom-local"
    data["entrypoint"] = {"loader": "custom", "function": function, **({"options": options} if options else {})}
    return data


# -- pods and load-balancing endpoints: /ping ------------------------------------------------
def test_ping_is_204_while_loading_then_200_on_both_ports_and_the_health_port_serves_only_ping(
        tmp_path: Path, tiny_sd: Path, demo_manifest_data) -> None:
    gate = tmp_path / "gate"
    manifest_json = write_manifest_json(tmp_path, _custom(demo_manifest_data, "tests.fixtures.rigged:gated",
                                                          gate=str(gate)))
    health_port = free_port()
    with serve(manifest_json, tiny_sd, wait_ready=False, PORT_HEALTH=str(health_port)) as url:
        health = f"http://127.0.0.1:{health_port}"
        assert requests.get(f"{url}/ping", timeout=5).status_code == 204
        assert requests.get(f"{health}/ping", timeout=5).status_code == 204
        assert requests.get(f"{url}/ready", timeout=5).json()["status"] == "loading"  # still held at the gate
        gate.touch()
        wait_for(lambda: requests.get(f"{health}/ping", timeout=2).status_code == 200, 30, "ready on the health port")
        assert requests.get(f"{url}/ping", timeout=5).json() == {"status": "healthy"}
        assert requests.post(f"{health}/v1/predict", json=GOOD_JOB, timeout=10).status_code == 404
        assert requests.get(f"{health}/metadata", timeout=5).status_code == 404
        predicted = requests.post(f"{url}/v1/predict", json=GOOD_JOB, timeout=60)
        assert predicted.status_code == 200 and predicted.json()["width"] == 96


def test_ping_is_503_after_a_failed_load(tmp_path: Path, tiny_sd: Path, demo_manifest_data) -> None:
    manifest_json = write_manifest_json(tmp_path, _custom(demo_manifest_data, "tests.fixtures.rigged:broken"))
    health_port = free_port()
    with serve(manifest_json, tiny_sd, PORT_HEALTH=str(health_port)) as url:
        for base in (url, f"http://127.0.0.1:{health_port}"):
            ping = requests.get(f"{base}/ping", timeout=5)
            assert ping.status_code == 503
            assert ping.json()["reason"] == "RuntimeError: CUDA out of memory (rigged)"


def test_an_unknown_serve_mode_exits_2_with_one_line(tmp_path: Path, tiny_sd: Path, demo_manifest_data) -> None:
    env = server_env(write_manifest_json(tmp_path, demo_manifest_data), tiny_sd, BUILDER_SERVE_MODE="grpc")
    result = subprocess.run([sys.executable, "-m", "server"], env=env, capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "BUILDER_SERVE_MODE='grpc'" in result.stderr and "http, queue" in result.stderr


@pytest.mark.parametrize(("environ", "message"), [
    ({"PORT_HEALTH": "80a"}, "PORT_HEALTH='80a': expected an integer"),
    ({"BUILDER_REQUEST_TIMEOUT": "soon"}, "BUILDER_REQUEST_TIMEOUT='soon': expected a number"),
    ({"BUILDER_SERVE_MODE": "Queue"}, "BUILDER_SERVE_MODE='Queue': expected one of http, queue"),
])
def test_a_setting_the_server_cannot_use_names_its_variable(environ: dict[str, str], message: str) -> None:
    from server.settings import Settings, SettingsError

    with pytest.raises(SettingsError) as raised:
        Settings.from_env(environ)
    assert str(raised.value).startswith(message)


def test_settings_read_runpods_ports_and_the_mode() -> None:
    from server.settings import Settings

    assert Settings.from_env({}).port_health is None and Settings.from_env({}).serve_mode == "http"
    settings = Settings.from_env({"PORT": "5000", "PORT_HEALTH": "5001", "BUILDER_SERVE_MODE": "queue"})
    assert (settings.port, settings.port_health, settings.serve_mode) == (5000, 5001, "queue")


# -- queue-based endpoints: the runpod SDK's worker loop ---------------------------------------
class JobQueue:
    """RunPod's job queue as the SDK's worker loop speaks to it. GET job-take long-polls (up to
    a second) for one job, `{"id", "input"}`, and answers 204 when none comes; POST job-done
    carries the job's result as a JSON body; GET job-stop (the cancel channel) never stops any."""

    WORKER_ID = "worker-test"

    def __init__(self) -> None:
        self.pending: queue.Queue[dict[str, Any]] = queue.Queue()
        self.results: dict[str, dict[str, Any]] = {}
        self.polls = 0
        self.done = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, body: bytes = b"") -> None:
                self.send_response(code)
                if body:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                if self.path.startswith(f"/job-take/{owner.WORKER_ID}?"):
                    owner.polls += 1
                    try:
                        job = owner.pending.get(timeout=1.0)
                    except queue.Empty:
                        return self._answer(204)
                    return self._answer(200, json.dumps(job).encode())
                if self.path.startswith(f"/job-stop/{owner.WORKER_ID}?"):
                    threading.Event().wait(1.0)
                    return self._answer(204)
                return self._answer(404)

            def do_POST(self) -> None:  # noqa: N802
                parts = self.path.split("?")[0].split("/")  # /job-done/WORKER/JOB
                if parts[1:3] != ["job-done", owner.WORKER_ID]:
                    return self._answer(404)
                # The SDK posts JSON labelled application/x-www-form-urlencoded.
                result = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.done:
                    owner.results[parts[3]] = result
                    owner.done.notify_all()
                return self._answer(200, b"{}")

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def __enter__(self) -> "JobQueue":
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()

    def env(self) -> dict[str, str]:
        # The forms RunPod sets: the SDK puts the worker id for $ID (job-take) and
        # $RUNPOD_POD_ID (job-done), the job's id for the second $ID, and appends `&...` to both.
        return {"RUNPOD_POD_ID": self.WORKER_ID,
                "RUNPOD_WEBHOOK_GET_JOB": f"{self.url}/job-take/$ID?gpu=cpu",
                "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.url}/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu"}

    def submit(self, job_input: Any) -> str:
        job_id = f"job-{uuid.uuid4().hex[:8]}"
        self.pending.put({"id": job_id, "input": job_input})
        return job_id

    def result(self, job_id: str, timeout: float, worker: "subprocess.Popen | None" = None) -> dict[str, Any]:
        with self.done:
            finished = self.done.wait_for(lambda: job_id in self.results or (worker and worker.poll() is not None),
                                          timeout)
        assert finished and job_id in self.results, f"no result for {job_id} (worker exit: {worker and worker.poll()})"
        return self.results[job_id]


def queue_env(manifest_json: Path, model_dir: Path, jobs: JobQueue, ready_file: Path, **extra: str) -> dict[str, str]:
    return server_env(manifest_json, model_dir, BUILDER_SERVE_MODE="queue", BUILDER_READY_FILE=str(ready_file),
                      **SDK_CHECKS_OFF, **jobs.env(), **extra)


@contextmanager
def queue_worker(env: dict[str, str]) -> Iterator[subprocess.Popen]:
    log = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads while it runs
    proc = subprocess.Popen([sys.executable, "-m", "server"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    proc.log = log  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _output(proc: subprocess.Popen) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read().decode(errors="replace")  # type: ignore[attr-defined]


def _healthcheck(env: dict[str, str]) -> int:
    return subprocess.run([sys.executable, "-m", "server.healthcheck"], env=env, cwd=ROOT, timeout=30).returncode


@pytest.fixture(scope="module")
def demo_queue(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path, demo_manifest_data) -> Iterator[JobQueue]:
    """One queue worker on the tiny text-to-image model, ready to take jobs."""
    tmp = tmp_path_factory.mktemp("queue")
    with JobQueue() as jobs:
        env = queue_env(write_manifest_json(tmp, demo_manifest_data), tiny_sd, jobs, tmp / "ready")
        with queue_worker(env) as proc:
            jobs.worker = proc  # type: ignore[attr-defined]
            wait_for(lambda: jobs.polls > 0, 120, "the worker's first job-take",
                     lambda: f"exited: {_output(proc)[-2000:]}" if proc.poll() is not None else None)
            yield jobs


def test_a_queue_job_returns_the_predict_routes_body_with_the_same_png(demo_queue: JobQueue, tmp_path: Path,
                                                                       tiny_sd: Path, demo_manifest_data) -> None:
    result = demo_queue.result(demo_queue.submit(GOOD_JOB), 60, demo_queue.worker)  # type: ignore[attr-defined]
    assert set(result) == {"output"}, result
    body = TextToImageResponse.model_validate(result["output"])
    image = Image.open(io.BytesIO(base64.b64decode(body.image)))
    assert image.format == "PNG" and image.size == (96, 64) and body.seed == 7
    with serve(write_manifest_json(tmp_path, demo_manifest_data), tiny_sd) as url:
        http = requests.post(f"{url}/v1/predict", json=GOOD_JOB, timeout=60).json()
    assert http.keys() == result["output"].keys()
    assert http["image"] == body.image  # the same model, seed and path: the same pixels


SECRET = "do-not-echo-" * 300  # a long value of the caller's, never to be sent back in an error


@pytest.mark.parametrize(("job_input", "expected"), [
    ({**GOOD_JOB, "prompt": SECRET, "colour": SECRET}, "colour: Extra inputs are not permitted"),
    ({**GOOD_JOB, "prompt": SECRET, "width": 72}, "width: Value error, must be a multiple of 16"),
    ({**GOOD_JOB, "prompt": SECRET, "num_inference_steps": 0}, "num_inference_steps: Input should be greater than"),
    ({**GOOD_JOB, "prompt": SECRET * 2}, "prompt: String should have at most 4000 characters"),
    ([SECRET], "input: expected a JSON object"),
])
def test_a_bad_queue_job_fails_naming_the_field_without_echoing_the_input(demo_queue: JobQueue, job_input: Any,
                                                                          expected: str) -> None:
    result = demo_queue.result(demo_queue.submit(job_input), 30, demo_queue.worker)  # type: ignore[attr-defined]
    assert set(result) == {"error"}, result
    assert expected in result["error"]
    assert "do-not-echo" not in result["error"] and "\n" not in result["error"]


def test_a_queue_job_past_its_timeout_fails_and_sigterm_stops_the_worker_cleanly(tmp_path: Path, tiny_sd: Path,
                                                                                 demo_manifest_data) -> None:
    manifest_json = write_manifest_json(tmp_path, _custom(demo_manifest_data, "tests.fixtures.rigged:slow"))
    ready_file = tmp_path / "ready"
    with JobQueue() as jobs:
        env = queue_env(manifest_json, tiny_sd, jobs, ready_file, BUILDER_REQUEST_TIMEOUT="1")
        with queue_worker(env) as proc:
            wait_for(lambda: jobs.polls > 0, 120, "the worker's first job-take",
                     lambda: f"exited: {_output(proc)[-2000:]}" if proc.poll() is not None else None)
            assert _healthcheck(env) == 0  # the HEALTHCHECK in queue mode: loaded and alive
            late = jobs.result(jobs.submit({"prompt": "x", "width": 64, "height": 64}), 30, proc)
            assert late == {"error": "inference took longer than 1s"}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, _output(proc)[-2000:]
        assert not ready_file.exists() and _healthcheck(env) == 1


def test_a_queue_worker_whose_model_cannot_load_exits_1_with_one_line_and_takes_no_job(
        tmp_path: Path, tiny_sd: Path, demo_manifest_data) -> None:
    manifest_json = write_manifest_json(tmp_path, _custom(demo_manifest_data, "tests.fixtures.rigged:broken"))
    with JobQueue() as jobs:
        env = queue_env(manifest_json, tiny_sd, jobs, tmp_path / "ready")
        result = subprocess.run([sys.executable, "-m", "server"], env=env, capture_output=True, text=True, cwd=ROOT,
                                timeout=120)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == ["model failed to load: RuntimeError: CUDA out of memory (rigged)"]
        assert jobs.polls == 0 and _healthcheck(env) == 1
