"""RunPod's queue-based serverless endpoints (/run, /runsync, /status): BUILDER_SERVE_MODE=queue.

The model loads first, because RunPod counts a worker that polls for jobs as ready; a model
that cannot load prints one line and exits 1 (an unhealthy worker). Then the runpod SDK's
worker loop takes jobs from RUNPOD_WEBHOOK_GET_JOB and posts each result to
RUNPOD_WEBHOOK_POST_OUTPUT. A job's `input` is the body of POST /v1/predict, validated by the
same pydantic model (the manifest's defaults, bounds and unsupported fields) and run through the
same Inference (gate, queue limit, timeout, up-front estimate, out-of-memory recovery); its
result is that route's JSON body, or {"error": one line} that names fields and rules but never
echoes the input (a dict with "error" marks the job FAILED). The SDK is imported here only, so
the HTTP mode never pays its 2 s import.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from server.errors import InputError, Refused
from server.guards import describe
from server.healthcheck import clear_ready, mark_ready
from server.inference import Inference
from server.loaders import Predictor, load_predictor
from server.responses import respond
from server.settings import Settings

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def make_handler(inference: Inference) -> Handler:
    request_model = inference.request_model

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        body = job.get("input")
        if not isinstance(body, dict):
            return {"error": "input: expected a JSON object, the body of POST /v1/predict"}
        try:
            request = request_model.model_validate(body)
        except ValidationError as exc:
            return {"error": f"invalid input: {describe(exc.errors())}"}
        try:
            result = await inference.predict(request)
        except InputError as exc:
            return {"error": f"invalid input: {one_line(str(exc))}"}
        except Refused as exc:
            return {"error": one_line(exc.detail)}
        reply = await asyncio.to_thread(respond, result.output, result.waited)  # MP4 encoding takes a while
        return reply.model_dump()

    return handler


def serve_queue(settings: Settings, loader: Callable[..., Predictor] = load_predictor) -> int:
    """Load, then take jobs until RunPod stops the worker; the process's exit status."""
    clear_ready(settings.ready_file)  # a restarted container keeps its /tmp: never trust an old marker
    inference = Inference(settings, loader)
    inference.load()
    if inference.state.status != "ready":
        print(f"model failed to load: {one_line(inference.state.reason or 'unknown reason')}", file=sys.stderr,
              flush=True)
        return 1
    mark_ready(settings.ready_file)
    # The SDK logs at DEBUG unless told otherwise, and at DEBUG it prints every job's whole
    # output (megabytes of base64) to stdout; it reads the level once, when imported.
    if "RUNPOD_LOG_LEVEL" not in os.environ and "RUNPOD_DEBUG_LEVEL" not in os.environ:
        os.environ["RUNPOD_LOG_LEVEL"] = "INFO"
    import runpod.serverless

    try:
        runpod.serverless.start({"handler": make_handler(inference)})
    finally:
        clear_ready(settings.ready_file)
        inference.shutdown()
    return 0
