"""The FastAPI app: create_app(settings) -> FastAPI. Nothing happens at import time.

The model loads once, in a thread started from the lifespan, so /health answers at once; its
state (server/inference.py) shows on /ready (503 while `loading` or `failed`, with the reason;
the process stays up so the pod shows why instead of restarting in a loop) and on /ping, in
the codes RunPod's load-balancing endpoints expect. The predict route takes the task's request
model as the manifest serves it (server/schemas.py request_model_for: its defaults and bounds
are the ones /openapi.json shows), behind server/guards.py (body limit, strict JSON, 422s that
never echo the input); it runs the shared inference path and maps its refusals to status codes:
413 body too large, 422 unusable input, 429 busy (Retry-After), 503 not ready or out of GPU
memory, 504 timed out or would not finish in time, 500 the model failed. No malformed body is
a 5xx. On shutdown (SIGTERM from the pod), uvicorn stops accepting and the lifespan waits for
the running inference.
"""

# No `from __future__ import annotations` here: FastAPI reads the predict route's body type
# from the annotation at runtime, and that type is chosen per manifest.

import asyncio
import platform
import threading
import time
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any, Callable

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from server.errors import Busy, InferenceFailed, InputError, NotReady, OutOfMemory, Refused, TimedOut
from server.estimate import WORK_UNIT
from server.guards import BodyLimit, StrictJSONRoute, problems
from server.inference import Inference
from server.loaders import Predictor, load_predictor
from server.responses import RawMedia, respond
from server.schemas import describe_request, max_body_bytes
from server.settings import Settings

PACKAGES = ("torch", "diffusers", "transformers", "huggingface_hub", "safetensors", "accelerate", "fastapi", "uvicorn",
            "coqui-tts", "torchaudio", "opencv-python-headless", "insightface", "onnxruntime", "av")
STATUS_OF_REFUSAL = {NotReady: 503, Busy: 429, TimedOut: 504, OutOfMemory: 503, InferenceFailed: 500}


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _refusal(exc: Refused) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, Busy) else None
    return JSONResponse({"detail": exc.detail}, status_code=STATUS_OF_REFUSAL[type(exc)], headers=headers)


def _memory(predictor: Any) -> dict[str, Any] | None:
    """Where the weights sit and why (server/memory.py), for loaders that decide it."""
    plan = getattr(predictor, "memory", None)
    return plan.as_dict() if plan is not None else None


def create_app(settings: Settings, loader: Callable[..., Predictor] = load_predictor) -> FastAPI:
    inference = Inference(settings, loader)
    state, metrics, spec = inference.state, inference.metrics, inference.spec

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        threading.Thread(target=inference.load, name="model-loader", daemon=True).start()
        yield
        inference.shutdown()

    app = FastAPI(title=f"{spec.name if spec else 'model'} inference", version=spec.version if spec else "0",
                  lifespan=lifespan)
    body_limit = settings.max_body_bytes or max_body_bytes(inference.task, inference.serving)
    # Added first, so innermost of the middleware: the request counter below still sees its 413s.
    app.add_middleware(BodyLimit, limit=body_limit)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler copies each error's `input` back: a prompt, a base64 file, a value
        # that cannot even be encoded (NaN, a lone surrogate: a 500 while answering a 422).
        return JSONResponse({"detail": problems(list(exc.errors()))}, status_code=422)

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    if settings.port_health is not None and settings.port_health != settings.port:
        @app.middleware("http")
        async def health_port_serves_only_ping(request: Request, call_next):
            # The same app listens on both ports (server/__main__.py); the port a request came in
            # on is the listening socket's, so the health port can be kept to its one route.
            server = request.scope.get("server") or (None, None)
            if server[1] == settings.port_health and request.url.path != "/ping":
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        body = {"status": state.status, "reason": state.reason, "load_seconds": state.load_seconds,
                "memory": _memory(state.predictor)}
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/ping")
    async def ping() -> Response:
        # RunPod's load-balancing contract: 204 while initializing, 200 when it may route requests
        # here; any other code marks the worker unhealthy (https://docs.runpod.io/serverless/load-balancing/overview).
        if state.status == "loading":
            return Response(status_code=204)
        if state.status == "ready":
            return JSONResponse({"status": "healthy"})
        return JSONResponse({"status": "failed", "reason": state.reason}, status_code=503)

    @app.get("/metadata")
    async def meta() -> dict[str, Any]:
        predictor = state.predictor
        return {
            "name": spec.name if spec else None,
            "version": spec.version if spec else None,
            "task": inference.task,
            "profile": spec.profile if spec else None,
            "manifest_digest": spec.manifest_digest if spec else None,
            "sources": list(spec.sources) if spec else [],
            "artifacts": [vars(a) for a in spec.artifacts] if spec else [],
            "device": getattr(predictor, "device", None),
            "dtype": getattr(predictor, "dtype", None),
            "memory": _memory(predictor),
            "packages": _package_versions(),
            "python": platform.python_version(),
            "status": state.status,
            "serving": {**describe_request(inference.request_model, inference.serving), "max_body_bytes": body_limit},
            "estimate": {"work_unit": WORK_UNIT.get(inference.task), **inference.rate.facts()},
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(getattr(state.predictor, "device", None)),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    request_model = inference.request_model

    strict = APIRouter(route_class=StrictJSONRoute)

    @strict.post("/v1/predict", response_model=inference.response_model)
    async def predict(body: request_model, request: Request):  # type: ignore[valid-type]
        try:
            result = await inference.predict(body, gone=request.is_disconnected)
        except Refused as exc:
            return _refusal(exc)
        except InputError as exc:  # the input was unusable (no face, a broken file): the client's to fix
            return JSONResponse({"detail": str(exc)}, status_code=422)
        reply = await asyncio.to_thread(respond, result.output, result.waited, request.headers.get("accept", ""))
        if isinstance(reply, RawMedia):
            return Response(reply.content, media_type=reply.media_type, headers=reply.headers)
        return reply

    app.include_router(strict)
    app.state.model = state
    app.state.metrics = metrics
    app.state.inference = inference
    return app
