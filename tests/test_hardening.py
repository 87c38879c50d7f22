"""A server no request can knock over, over real HTTP: the manifest's serving section (defaults,
bounds, unsupported fields) in the request model, the body limit, hostile JSON, GPU
out-of-memory, the up-front refusal by estimated time, and a schemathesis fuzz of /v1/predict."""

from __future__ import annotations

import base64
import copy
import io
import json
import socket
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image

from tests.conftest import wait_for
from tests.test_server import serve, write_manifest_json

SENTINEL = "sentinel-4f9c"  # put into hostile inputs; no answer may carry it back
BODY_LIMIT = 16384
SERVING = {
    "request": {
        "num_inference_steps": {"default": 2, "max": 4},
        "width": {"default": 64, "max": 128},
        "height": {"default": 64, "min": 16, "max": 128},  # a min below the hard limit: the hard limit holds
        "guidance_scale": {"min": -5, "max": 100},  # wider than the hard limits on both sides: they hold
        "prompt": {"max": 200},
    },
    "unsupported": ["negative_prompt"],
    "max_body_bytes": BODY_LIMIT,
}


def hardened(data: dict, **entrypoint: Any) -> dict:
    data = copy.deepcopy(data)
    data["serving"] = SERVING
    del data["smoke_test"]["inputs"]["negative_prompt"]  # unsupported here: the smoke must not send it
    if entrypoint:
        data["profile"] = "custom-local"
        data["entrypoint"] = {"loader": "custom", **entrypoint}
    return data


@pytest.fixture(scope="module")
def hardened_server(tmp_path_factory: pytest.TempPathFactory, tiny_sd: Path, demo_manifest_data) -> Iterator[str]:
    """The demo's tiny Stable Diffusion, served under SERVING."""
    manifest_json = write_manifest_json(tmp_path_factory.mktemp("hardened"), hardened(demo_manifest_data))
    with serve(manifest_json, tiny_sd) as url:
        yield url


def predict(url: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(f"{url}/v1/predict", json=body, timeout=60, **kwargs)


def post_raw(url: str, data: bytes, content_type: str = "application/json") -> requests.Response:
    return requests.post(f"{url}/v1/predict", data=data, headers={"Content-Type": content_type}, timeout=60)


def image_size(response: requests.Response) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(response.json()["image"]))).size


# -- the manifest's defaults, bounds and unsupported fields ---------------------------------------
def test_openapi_shows_the_manifests_defaults_and_bounds_within_the_hard_limits(hardened_server: str) -> None:
    schema = requests.get(f"{hardened_server}/openapi.json", timeout=10).json()
    fields = schema["components"]["schemas"]["TextToImageRequest"]["properties"]
    assert (fields["width"]["default"], fields["width"]["minimum"], fields["width"]["maximum"]) == (64, 64, 128)
    assert (fields["num_inference_steps"]["default"], fields["num_inference_steps"]["maximum"]) == (2, 4)
    assert (fields["height"]["minimum"], fields["height"]["maximum"]) == (64, 128)  # the manifest cannot widen them
    assert (fields["guidance_scale"]["minimum"], fields["guidance_scale"]["maximum"]) == (0.0, 30.0)
    assert fields["prompt"]["maxLength"] == 200
    assert "negative_prompt" not in fields


def test_metadata_reports_the_effective_defaults_bounds_unsupported_fields_and_body_limit(hardened_server: str) -> None:
    serving = requests.get(f"{hardened_server}/metadata", timeout=10).json()["serving"]
    assert serving["defaults"]["num_inference_steps"] == 2 and serving["defaults"]["width"] == 64
    assert serving["defaults"]["guidance_scale"] == 5.0  # no policy: the server's own default
    assert serving["bounds"]["width"] == {"ge": 64, "le": 128}
    assert serving["bounds"]["height"] == {"ge": 64, "le": 128}
    assert serving["bounds"]["guidance_scale"] == {"ge": 0.0, "le": 30.0}
    assert serving["unsupported"] == ["negative_prompt"] and "negative_prompt" not in serving["defaults"]
    assert serving["max_body_bytes"] == BODY_LIMIT


def test_a_request_without_a_size_gets_the_manifests_default_size(hardened_server: str) -> None:
    response = predict(hardened_server, {"prompt": "a photo of the cat", "seed": 1})
    assert response.status_code == 200, response.text
    assert image_size(response) == (64, 64)  # the server's own default is 512x512


@pytest.mark.parametrize("value", ["blurry", None])
def test_an_unsupported_field_is_422_naming_it(hardened_server: str, value: str | None) -> None:
    response = predict(hardened_server, {"prompt": "x", "negative_prompt": value})
    assert response.status_code == 422
    assert response.json()["detail"] == [{"loc": ["body", "negative_prompt"], "type": "unsupported",
                                          "msg": "this model does not support negative_prompt: leave it out"}]


@pytest.mark.parametrize(("body", "field", "rule"), [
    ({"width": 144}, "width", "less than or equal to 128"),  # the manifest's bound
    ({"num_inference_steps": 5}, "num_inference_steps", "less than or equal to 4"),
    ({"prompt": "p" * 201}, "prompt", "at most 200 characters"),
    ({"height": 48}, "height", "greater than or equal to 64"),  # the hard limits, which the manifest asked to widen
    ({"guidance_scale": 31}, "guidance_scale", "less than or equal to 30"),
    ({"guidance_scale": -1}, "guidance_scale", "greater than or equal to 0"),
    ({"width": 72}, "width", "multiple of 16"),  # the server's own rules still apply
])
def test_bounds_are_enforced_and_the_hard_limits_still_hold(hardened_server: str, body: dict, field: str,
                                                            rule: str) -> None:
    response = predict(hardened_server, {"prompt": "x", **body})
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", field] and rule in problem["msg"]


# -- the body limit ---------------------------------------------------------------------------------
def _exchange(url: str, head: str, body: bytes) -> str:
    """Send a request's head and these body bytes, and nothing more; read the whole answer (its
    Content-Length) while the rest of the body is still owed. A server that waited for the rest
    of the body before answering would time this out."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = sock.recv(65536)
            assert chunk, f"the server closed before its whole answer: {answer!r}"
            answer += chunk
    return answer.decode()


def _length(answer: bytes) -> int:
    head = answer.partition(b"\r\n\r\n")[0].decode().lower()
    return next(int(line.split(":", 1)[1]) for line in head.splitlines() if line.startswith("content-length:"))


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(hardened_server: str) -> None:
    host = urlsplit(hardened_server).netloc
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10 ** 9}\r\n\r\n")
    answer = _exchange(hardened_server, head, b'{"pr')  # a gigabyte announced, four bytes sent
    assert answer.startswith("HTTP/1.1 413 ")
    assert "connection: close" in answer.lower()
    assert f"larger than {BODY_LIMIT} bytes" in answer


def test_a_streamed_body_is_cut_off_with_413_past_the_limit(hardened_server: str) -> None:
    host = urlsplit(hardened_server).netloc
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 10000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2))  # 20000 bytes, never the last chunk
    answer = _exchange(hardened_server, head, chunks)
    assert answer.startswith("HTTP/1.1 413 ")
    assert f"larger than {BODY_LIMIT} bytes" in answer


def test_a_body_within_the_limit_is_read_and_validated(hardened_server: str) -> None:
    response = predict(hardened_server, {"prompt": "p" * (BODY_LIMIT - 100)})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "prompt"]


# -- hostile JSON: never a 5xx, never the input echoed ------------------------------------------------
def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


HOSTILE = {
    "NaN": f'{{"prompt": "{SENTINEL}", "guidance_scale": NaN}}',
    "Infinity": f'{{"prompt": "{SENTINEL}", "guidance_scale": Infinity}}',
    "-Infinity": f'{{"prompt": "{SENTINEL}", "width": -Infinity}}',
    "1e999": f'{{"prompt": "{SENTINEL}", "guidance_scale": 1e999}}',
    "a number of 5000 digits": f'{{"prompt": "{SENTINEL}", "width": {"9" * 5000}}}',
    "arrays nested 5000 deep": f'{{"prompt": {_nested(5000, json.dumps(SENTINEL))}}}',
    "objects nested 2000 deep": '{"prompt": ' + '{"a":' * 2000 + json.dumps(SENTINEL) + "}" * 2000 + "}",
    "a top-level array nested 5000 deep": _nested(5000),
    "arrays nested 900 deep (parsed)": f'{{"prompt": "x", "seed": {_nested(900, json.dumps(SENTINEL))}}}',
    "wrong types at every level": json.dumps({"prompt": [SENTINEL], "width": {SENTINEL: SENTINEL}, "height": SENTINEL,
                                              "seed": [[SENTINEL]], "num_inference_steps": True,
                                              "guidance_scale": {"a": [SENTINEL]}}),
    "a huge string": json.dumps({"prompt": SENTINEL * 1200}),
    "invalid UTF-8": b'{"prompt": "\xff\xfe' + SENTINEL.encode() + b'"}',
    "a lone surrogate in a value": f'{{"prompt": "\\ud800{SENTINEL}"}}',
    "a lone surrogate in a field name": f'{{"prompt": "x", "\\udfff{SENTINEL}": 1}}',
    "an empty body": b"",
    "a JSON string": json.dumps(SENTINEL),
    "a JSON number": "42",
    "null": "null",
    "a JSON array": json.dumps([SENTINEL]),
    "trailing data": f'{{"prompt": "x"}} {SENTINEL}',
    "truncated JSON": f'{{"prompt": "{SENTINEL}", ',
    "form data": f"prompt={SENTINEL}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_json_is_a_4xx_with_a_message_that_does_not_echo_it(hardened_server: str, name: str) -> None:
    body = HOSTILE[name]
    content_type = "application/x-www-form-urlencoded" if name == "form data" else "application/json"
    response = post_raw(hardened_server, body if isinstance(body, bytes) else body.encode(), content_type)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert SENTINEL not in response.text
    problems = response.json()["detail"]
    assert problems and all(isinstance(p["msg"], str) and p["msg"] for p in problems)


@pytest.mark.parametrize(("name", "message"), [
    ("NaN", "the body is not valid JSON: NaN is not JSON: send a finite number"),
    ("1e999", "Input should be a finite number"),
    ("invalid UTF-8", "the body is not valid JSON: invalid UTF-8"),
    ("arrays nested 5000 deep", "the body is not valid JSON: arrays or objects nested too deeply"),
    ("an empty body", "the body is empty: send a JSON object"),
    ("a JSON string", "the body must be a JSON object"),
])
def test_each_malformed_body_gets_one_clear_message(hardened_server: str, name: str, message: str) -> None:
    body = HOSTILE[name]
    response = post_raw(hardened_server, body if isinstance(body, bytes) else body.encode())
    (problem,) = response.json()["detail"]
    assert problem["msg"].startswith(message)


def test_a_422_lists_a_few_problems_and_cuts_long_field_names(hardened_server: str) -> None:
    body = {"prompt": "x", **{f"unknown{i}": i for i in range(40)}, SENTINEL * 100: 1}
    response = predict(hardened_server, body)
    assert response.status_code == 422
    problems = response.json()["detail"]
    assert len(problems) == 6 and problems[-1]["msg"] == "and 36 more problems"
    (long_name,) = predict(hardened_server, {"prompt": "x", SENTINEL * 100: 1}).json()["detail"]
    assert long_name["msg"] == "Extra inputs are not permitted"
    assert long_name["loc"][1] == (SENTINEL * 100)[:64] + "..."  # the caller's text: only its start comes back


# -- GPU out of memory -------------------------------------------------------------------------------
def test_out_of_gpu_memory_is_503_and_the_next_request_is_served(tmp_path: Path, tiny_sd: Path,
                                                                  demo_manifest_data) -> None:
    data = hardened(demo_manifest_data, function="tests.fixtures.rigged:oom_once")
    with serve(write_manifest_json(tmp_path, data), tiny_sd, BUILDER_MAX_BODY_BYTES="2048") as url:
        first = predict(url, {"prompt": "x"})
        assert first.status_code == 503
        assert first.json()["detail"] == "the GPU ran out of memory for this request: try a smaller size or fewer steps"
        second = predict(url, {"prompt": "x"})
        assert second.status_code == 200 and image_size(second) == (64, 64)
        assert requests.get(f"{url}/ready", timeout=5).json()["status"] == "ready"
        # BUILDER_MAX_BODY_BYTES overrides the manifest's max_body_bytes
        assert predict(url, {"prompt": "p" * 3000}).status_code == 413
        assert requests.get(f"{url}/metadata", timeout=5).json()["serving"]["max_body_bytes"] == 2048


# -- refusing up front by the request's own size ----------------------------------------------------------
def learned(url: str) -> int:
    return requests.get(f"{url}/metadata", timeout=5).json()["estimate"]["samples"]


def test_a_request_that_would_not_finish_in_time_is_refused_before_it_runs(tmp_path: Path, tiny_sd: Path,
                                                                           demo_manifest_data) -> None:
    record = tmp_path / "ran.jsonl"
    data = hardened(demo_manifest_data, function="tests.fixtures.rigged:paced",
                    options={"record": str(record), "seconds_per_unit": 4e-5})
    big = {"prompt": "big", "width": 128, "height": 128, "num_inference_steps": 4}  # 65536 units: about 2.6 s
    with serve(write_manifest_json(tmp_path, data), tiny_sd, BUILDER_REQUEST_TIMEOUT="2") as url:
        assert requests.get(f"{url}/metadata", timeout=5).json()["estimate"]["seconds_per_unit"] is None
        first = predict(url, big)  # nothing has finished yet: no estimate, so it runs, and runs late
        assert first.status_code == 504 and first.json()["detail"] == "inference took longer than 2s"
        # It still finishes on the inference thread (the next request waits for it), but as the
        # first inference it carries the warm-up: nothing is learned from it.
        for prompt, steps in (("small", 1), ("defaults", None), ("three", 3)):  # 4096, 8192, 12288 units
            response = predict(url, {"prompt": prompt, **({"num_inference_steps": steps} if steps else {})})
            assert response.status_code == 200, response.text
        assert learned(url) == 3
        refused = predict(url, big)
        assert refused.status_code == 504
        detail = refused.json()["detail"]
        assert detail.startswith("refused before running: this request would take at least 3s (65536 work units "
                                 "at the rate of the last 3 inferences)"), detail
        assert "of the 2s limit (BUILDER_REQUEST_TIMEOUT)" in detail
    ran = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["prompt"] for r in ran] == ["big", "small", "defaults", "three"]  # the refused one never ran
    assert (ran[2]["num_inference_steps"], ran[2]["width"], ran[2]["height"]) == (2, 64, 64)  # the manifest's


PRODUCTION_SIZES = {"request": {"width": {"default": 1024, "max": 1024}, "height": {"default": 1024, "max": 1024},
                                "num_inference_steps": {"default": 28, "max": 28}}}


def test_after_one_tiny_request_a_production_size_request_is_admitted_and_served(tmp_path: Path, tiny_sd: Path,
                                                                                 demo_manifest_data) -> None:
    """Issue 22's worked example: one 64x64, 2-step request (warm-up included) used to price a
    1024x1024, 28-step one at thousands of seconds, and every large request was refused for good."""
    data = copy.deepcopy(demo_manifest_data)
    data["serving"] = PRODUCTION_SIZES
    data["profile"] = "custom-local"
    # 0.3 s of overhead, 2e-8 s a unit (1024x1024x28: about 0.9 s in all), 1 s of warm-up on the first
    data["entrypoint"] = {"loader": "custom", "function": "tests.fixtures.rigged:paced",
                          "options": {"seconds_per_unit": 2e-8, "overhead": 0.3, "warmup": 1.0}}
    tiny = {"prompt": "tiny", "width": 64, "height": 64, "num_inference_steps": 2}
    production = {"prompt": "production", "width": 1024, "height": 1024, "num_inference_steps": 28}
    with serve(write_manifest_json(tmp_path, data), tiny_sd, BUILDER_REQUEST_TIMEOUT="20") as url:
        assert predict(url, tiny).status_code == 200  # the first: 1.3 s, nearly all of it warm-up and overhead
        served = predict(url, production)
        assert served.status_code == 200, served.text
        assert image_size(served) == (1024, 1024)
        assert predict(url, tiny).status_code == 200  # one size learned since the warm-up: still no refusal
        again = predict(url, production)
        assert again.status_code == 200, again.text
        estimate = requests.get(f"{url}/metadata", timeout=5).json()["estimate"]
        assert estimate["samples"] == 3 and estimate["overhead_seconds"] == pytest.approx(0.3, abs=0.01)
        assert estimate["seconds_per_unit"] == pytest.approx(2e-8, rel=0.01)


# -- the queue handler uses the same request model ---------------------------------------------------------
def test_a_queue_job_gets_the_manifests_defaults_and_refusals(tmp_path: Path, tiny_sd: Path,
                                                               demo_manifest_data) -> None:
    from tests.test_serve_modes import JobQueue, queue_env, queue_worker

    manifest_json = write_manifest_json(tmp_path, hardened(demo_manifest_data))
    with JobQueue() as jobs, queue_worker(queue_env(manifest_json, tiny_sd, jobs, tmp_path / "ready")) as proc:
        wait_for(lambda: jobs.polls > 0, 120, "the worker's first job-take",
                 lambda: "exited" if proc.poll() is not None else None)
        served = jobs.result(jobs.submit({"prompt": "a cat", "seed": 3}), 60, proc)
        assert (served["output"]["width"], served["output"]["height"]) == (64, 64)
        unsupported = jobs.result(jobs.submit({"prompt": SENTINEL, "negative_prompt": SENTINEL}), 30, proc)
        assert unsupported == {"error": "invalid input: negative_prompt: this model does not support "
                                        "negative_prompt: leave it out"}
        not_finite = jobs.result(jobs.submit({"prompt": SENTINEL, "guidance_scale": float("nan")}), 30, proc)
        assert not_finite == {"error": "invalid input: guidance_scale: Input should be a finite number"}


# -- schemathesis ---------------------------------------------------------------------------------------
FUZZ_EXAMPLES = 100  # per mode, positive and negative: about fifteen seconds in all on the tiny model


def fuzz(url: str, mode: str) -> set[int]:
    """FUZZ_EXAMPLES requests generated from the server's own /openapi.json; fails on a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    operation = schemathesis.openapi.from_url(f"{url}/openapi.json")["/v1/predict"]["POST"]
    seen: set[int] = set()

    @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        response = case.call_and_validate(checks=[not_a_server_error], timeout=60)
        seen.add(response.status_code)

    run()
    return seen


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzing_predict_from_its_openapi_schema_finds_no_server_error(hardened_server: str, mode: str) -> None:
    seen = fuzz(hardened_server, mode)
    assert seen and max(seen) < 500, seen
    if mode == "positive":
        assert 200 in seen  # the generated requests did reach the model


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_fuzzing_the_built_demo_image_finds_no_server_error(tmp_path: Path, isolated_env: dict,
                                                            demo_manifest_data) -> None:
    import subprocess

    from tests.conftest import free_port, make_project, run_builder, unique_name

    data = hardened(demo_manifest_data)
    data["name"] = unique_name("hardened")
    project = make_project(tmp_path, data)
    built = run_builder(["--root", str(project.root), "build", data["name"], "--json", "--no-push"], isolated_env)
    assert built.returncode == 0, built.stderr[-3000:]
    tag = json.loads(built.stdout)["tag"]
    port = free_port()
    container = subprocess.run(["/usr/bin/docker", "run", "-d", "--rm", "--network", "host", "-e", f"PORT={port}", tag],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(f"{url}/ready", timeout=2).status_code == 200, 90, "the image's /ready")
        for mode in ("positive", "negative"):
            seen = fuzz(url, mode)
            assert seen and max(seen) < 500, (mode, seen)
    finally:
        subprocess.run(["/usr/bin/docker", "rm", "-f", container], capture_output=True)
        subprocess.run(["/usr/bin/docker", "rmi", "-f", tag], capture_output=True)


# -- pieces, without a server --------------------------------------------------------------------------
def test_the_rate_separates_fixed_overhead_from_seconds_per_unit() -> None:
    from server.estimate import WorkRate

    rate = WorkRate()
    assert rate.estimate(1000) is None  # nothing finished yet: no estimate, nothing refused
    rate.observe(100, 2.0 + 0.01 * 100)
    rate.observe(100, 2.0 + 0.01 * 100)
    assert rate.estimate(1000) is None  # one size only: overhead and rate cannot be told apart
    rate.observe(1000, 2.0 + 0.01 * 1000)
    assert rate.fit().overhead == pytest.approx(2.0) and rate.fit().rate == pytest.approx(0.01)
    assert rate.estimate(5000) == pytest.approx(52.0)
    assert rate.lower_bound(5000) == pytest.approx(52.0)  # a history without noise: the bound is the estimate


def test_a_stray_slow_inference_does_not_make_large_requests_look_hopeless() -> None:
    """Two tiny sizes and one slow outlier (a pause, a new kernel's compile): the estimate for a
    1024x1024x28 request is hundreds of seconds, but the bound, widened by that noise and the
    distance from the sizes seen, refuses nothing; a consistent history does refuse."""
    from server.estimate import WorkRate

    production = 1024 * 1024 * 28
    rate = WorkRate()
    for units, seconds in ((8192, 0.5), (8192, 0.5), (32768, 0.52), (32768, 1.5)):
        rate.observe(units, seconds)
    assert rate.estimate(production) > 300
    assert rate.lower_bound(production) < 0
    steady = WorkRate()
    for units in (8192, 32768, 8192, 32768):
        steady.observe(units, 0.5 + 2e-5 * units * (1.01 if units == 8192 else 0.99))
    assert steady.lower_bound(production) > 300


def test_old_inferences_fade_so_a_changed_cost_is_followed() -> None:
    from server.estimate import MAX_SAMPLES, WorkRate

    rate = WorkRate()
    for i in range(MAX_SAMPLES):
        units = 1000 * (1 + i % 3)
        rate.observe(units, 0.01 * units)
    assert rate.fit().rate == pytest.approx(0.01)
    for i in range(12):  # the GPU got twice as fast (another card, a new driver)
        units = 1000 * (1 + i % 3)
        rate.observe(units, 0.005 * units)
    assert rate.fit().rate < 0.0075  # the newer dozen outweighs the older twenty
    for i in range(MAX_SAMPLES):
        rate.observe(1000 * (1 + i % 3), 0.005 * 1000 * (1 + i % 3))
    assert rate.fit().rate == pytest.approx(0.005)  # the old ones are gone


def test_a_text_requests_work_includes_its_prompt() -> None:
    from server.estimate import work_units
    from server.schemas import TextGenerationRequest

    short = work_units("text-generation", TextGenerationRequest(prompt="hi", max_new_tokens=64))
    long = work_units("text-generation", TextGenerationRequest(prompt="word " * 4000, max_new_tokens=64))
    assert long - short == pytest.approx((20000 - 2) / 4)  # about four characters a token


def test_a_wav_length_is_read_from_its_header_alone() -> None:
    from server.estimate import wav_seconds, work_units
    from server.schemas import LipSyncRequest

    raw = io.BytesIO()
    with wave.open(raw, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(16000)
        writer.writeframes(b"\0\0" * 16000 * 3)
    encoded = base64.b64encode(raw.getvalue()).decode()
    assert wav_seconds(encoded) == pytest.approx(3.0, abs=0.01)
    assert work_units("lip-sync", LipSyncRequest(reference="x", audio=encoded, fps=25)) == pytest.approx(75, abs=1)
    assert wav_seconds(base64.b64encode(b"not a wav file at all, but long enough to hold a header").decode()) is None


@pytest.mark.parametrize(("serving", "message"), [
    ({"request": {"width": {"min": 4096}}},
     "serving.request.width: min 4096 leaves no value inside the server's limits (ge 64, le 2048)"),
    ({"request": {"width": {"default": 72}}},
     "serving.request.width.default 72: Value error, must be a multiple of 16"),
    ({"request": {"seed": {"default": "soon"}}},
     "serving.request.seed.default 'soon': Input should be a valid integer"),
    ({"request": {"colour": {"max": 3}}}, "serving.request.colour: not a request field"),
    ({"unsupported": ["prompt"]}, "serving.unsupported: 'prompt' is not an optional request field of text-to-image"),
])
def test_a_serving_policy_the_server_cannot_apply_names_the_field(serving: dict, message: str) -> None:
    from server.schemas import request_model_for

    with pytest.raises(ValueError) as raised:
        request_model_for("text-to-image", serving)
    assert str(raised.value).startswith(message)


def test_max_body_bytes_must_be_a_positive_number() -> None:
    from server.settings import Settings, SettingsError

    assert Settings.from_env({"BUILDER_MAX_BODY_BYTES": "2048"}).max_body_bytes == 2048
    with pytest.raises(SettingsError, match="BUILDER_MAX_BODY_BYTES='0': expected a positive number of bytes"):
        Settings.from_env({"BUILDER_MAX_BODY_BYTES": "0"})
