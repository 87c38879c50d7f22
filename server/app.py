"""The FastAPI app: create_app(settings) -> FastAPI. Nothing happens at import time.

Health is a small state machine: `loading` (503 on /ready) -> `ready` (200) or `failed` (503
with the reason; the process stays up so the pod shows why instead of restarting in a loop).
The model loads once, in a thread started from the lifespan, so /health answers at once.
One inference runs at a time; up to `max_queue` requests wait, the rest get 429 with
Retry-After.
"""


import asyncio
import base64
import platform
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from server.encode import png_bytes
from server.loaders import LoadError, Predictor, load_predictor
from server.schemas import REQUEST_OF_TASK, TextToImageRequest, TextToImageResponse, Timings
from server.settings import Settings
from server.spec import ModelSpec

PACKAGES = ("torch", "diffusers", "transformers", "huggingface_hub", "fastapi", "uvicorn")


@dataclass
class ModelState:
    status: str = "loading"  # loading | ready | failed
    reason: str | None = None
    predictor: Predictor | None = None
    load_seconds: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def create_app(settings: Settings, loader: Callable[..., Predictor] = load_predictor) -> FastAPI:
    state = ModelState()
    try:
        spec: ModelSpec | None = ModelSpec.load(settings.manifest_path)
    except (OSError, ValueError, KeyError) as exc:
        spec = None
        state.status, state.reason = "failed", f"cannot read the manifest {settings.manifest_path}: {exc}"

    def load() -> None:
        started = time.perf_counter()
        try:
            predictor = loader(spec, settings.model_dir, settings.device)
        except LoadError as exc:
            state.status, state.reason = "failed", str(exc)
            return
        except Exception as exc:  # a broken model must not kill the server: /ready says why
            state.status, state.reason = "failed", f"{type(exc).__name__}: {exc}"
            return
        state.predictor, state.load_seconds, state.status = predictor, time.perf_counter() - started, "ready"

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if spec is not None:
            threading.Thread(target=load, name="model-loader", daemon=True).start()
        yield

    app = FastAPI(title=f"{spec.name if spec else 'model'} inference", lifespan=lifespan)
    gate = asyncio.Semaphore(1)
    queue = {"waiting": 0, "last_seconds": 1.0}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        body = {"status": state.status, "reason": state.reason, "load_seconds": state.load_seconds}
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    @app.get("/metadata")
    async def meta() -> dict[str, Any]:
        predictor = state.predictor
        return {
            "name": spec.name if spec else None,
            "version": spec.version if spec else None,
            "task": spec.task if spec else None,
            "manifest_digest": spec.manifest_digest if spec else None,
            "sources": list(spec.sources) if spec else [],
            "artifacts": [vars(a) for a in spec.artifacts] if spec else [],
            "device": getattr(predictor, "device", None),
            "dtype": getattr(predictor, "dtype", None),
            "packages": _package_versions(),
            "python": platform.python_version(),
            "status": state.status,
        }

    request_model = REQUEST_OF_TASK.get(spec.task if spec else "", TextToImageRequest)

    async def _run(body: Any) -> tuple[Any, float]:
        if state.status != "ready" or state.predictor is None:
            raise _Unavailable(state.reason or "the model is still loading")
        if queue["waiting"] >= settings.max_queue:
            raise _Busy(int(queue["last_seconds"] * (queue["waiting"] + 1)) + 1)
        queue["waiting"] += 1
        queued = time.perf_counter()
        try:
            await asyncio.wait_for(gate.acquire(), timeout=settings.request_timeout)
        except asyncio.TimeoutError:
            raise _Busy(int(queue["last_seconds"]) + 1) from None
        finally:
            queue["waiting"] -= 1
        try:
            waited = time.perf_counter() - queued
            output = await run_in_threadpool(state.predictor.predict, body)
            queue["last_seconds"] = output.inference_seconds
            return output, waited
        finally:
            gate.release()

    @app.post("/v1/predict", response_model=TextToImageResponse)
    async def predict(body: request_model, request: Request):  # type: ignore[valid-type]
        try:
            output, waited = await _run(body)
        except _Unavailable as exc:
            return JSONResponse({"detail": str(exc)}, status_code=503)
        except _Busy as exc:
            return JSONResponse({"detail": "busy: too many requests queued"}, status_code=429,
                                headers={"Retry-After": str(exc.retry_after)})
        png = png_bytes(output.pixels)
        if "image/png" in request.headers.get("accept", ""):
            return Response(png, media_type="image/png", headers={"X-Seed": str(output.seed)})
        height, width = output.pixels.shape[:2]
        return TextToImageResponse(
            image=base64.b64encode(png).decode(),
            width=width,
            height=height,
            seed=output.seed,
            timings=Timings(queue_seconds=round(waited, 4), inference_seconds=round(output.inference_seconds, 4)),
        )

    app.state.model = state
    return app


class _Unavailable(Exception):
    pass


class _Busy(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after
