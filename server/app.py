"""The FastAPI app: create_app(settings) -> FastAPI. Nothing happens at import time.

Health is a small state machine: `loading` (503 on /ready) -> `ready` (200) or `failed` (503
with the reason; the process stays up so the pod shows why instead of restarting in a loop).
The model loads once, in a thread started from the lifespan, so /health answers at once.

One inference runs at a time (one worker thread: one model, one GPU); up to `max_queue`
requests wait, the rest get 429 with Retry-After. A request that cannot finish within
`request_timeout` gets 504, and the model stays busy until that inference really ends.
On shutdown (SIGTERM from the pod), uvicorn stops accepting and the lifespan waits for the
running inference.
"""

# No `from __future__ import annotations` here: FastAPI reads the predict route's body type
# from the annotation at runtime, and that type is chosen per manifest.

import asyncio
import base64
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from server.encode import png_bytes
from server.loaders import (
    AudioOutput,
    EmbeddingOutput,
    ImageOutput,
    InputError,
    LoadError,
    Predictor,
    TextOutput,
    VideoOutput,
    load_predictor,
)
from server.media import encode_mp4, encode_wav
from server.metrics import Metrics
from server.schemas import (
    REQUEST_OF_TASK,
    RESPONSE_OF_TASK,
    EmbeddingResponse,
    LipSyncResponse,
    TextGenerationResponse,
    TextToImageRequest,
    TextToImageResponse,
    TextToSpeechResponse,
    Timings,
)
from server.settings import Settings
from server.spec import ModelSpec

PACKAGES = ("torch", "diffusers", "transformers", "huggingface_hub", "safetensors", "accelerate", "fastapi", "uvicorn",
            "coqui-tts", "torchaudio", "opencv-python-headless", "insightface", "onnxruntime", "av")


@dataclass
class ModelState:
    status: str = "loading"  # loading | ready | failed
    reason: str | None = None
    predictor: Predictor | None = None
    load_seconds: float | None = None
    pending: int = 0  # requests inside predict: the one running plus those waiting
    last_seconds: float | None = None  # the last inference's duration (None before the first)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _respond(output: Any, waited: float, request: Request) -> Any:
    timings = Timings(queue_seconds=round(waited, 4), inference_seconds=round(output.inference_seconds, 4))
    if isinstance(output, ImageOutput):
        png = png_bytes(output.pixels)
        if "image/png" in request.headers.get("accept", ""):
            return Response(png, media_type="image/png", headers={"X-Seed": str(output.seed)})
        height, width = output.pixels.shape[:2]
        return TextToImageResponse(image=base64.b64encode(png).decode(), width=width, height=height,
                                   seed=output.seed, timings=timings)
    if isinstance(output, TextOutput):
        return TextGenerationResponse(text=output.text, tokens=output.tokens, seed=output.seed, timings=timings)
    if isinstance(output, EmbeddingOutput):
        return EmbeddingResponse(embeddings=output.vectors.tolist(), dim=int(output.vectors.shape[1]), timings=timings)
    if isinstance(output, AudioOutput):
        wav = encode_wav(output.samples, output.sample_rate)
        if "audio/wav" in request.headers.get("accept", ""):
            return Response(wav, media_type="audio/wav", headers={"X-Seed": str(output.seed)})
        return TextToSpeechResponse(audio=base64.b64encode(wav).decode(), sample_rate=output.sample_rate,
                                    seconds=round(output.samples.size / output.sample_rate, 3), seed=output.seed,
                                    timings=timings)
    if isinstance(output, VideoOutput):
        mp4 = encode_mp4(output.frames, output.fps, output.audio)
        if "video/mp4" in request.headers.get("accept", ""):
            return Response(mp4, media_type="video/mp4")
        count, height, width = output.frames.shape[:3]
        return LipSyncResponse(video=base64.b64encode(mp4).decode(), frames=count, width=width, height=height,
                               fps=output.fps, timings=timings)
    raise TypeError(f"the predictor returned a {type(output).__name__}")


def create_app(settings: Settings, loader: Callable[..., Predictor] = load_predictor) -> FastAPI:
    state = ModelState()
    metrics = Metrics()
    try:
        spec: ModelSpec | None = ModelSpec.load(settings.manifest_path)
    except (OSError, ValueError, KeyError) as exc:
        spec = None
        state.status, state.reason = "failed", f"cannot read the manifest {settings.manifest_path}: {exc}"
    task = spec.task if spec else "text-to-image"
    request_model = REQUEST_OF_TASK.get(task, TextToImageRequest)
    response_model = RESPONSE_OF_TASK.get(task, TextToImageResponse)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")  # one model, one inference

    def load() -> None:
        started = time.perf_counter()
        try:
            predictor = loader(spec, settings.model_dir, settings.device)
        except LoadError as exc:
            state.status, state.reason = "failed", str(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a broken model must not kill the server: /ready says why
            state.status, state.reason = "failed", f"{type(exc).__name__}: {exc}"
            return
        state.predictor, state.load_seconds = predictor, time.perf_counter() - started
        metrics.load_seconds.set(state.load_seconds)
        metrics.ready.set(1)
        state.status = "ready"

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if spec is not None:
            threading.Thread(target=load, name="model-loader", daemon=True).start()
        yield
        worker.shutdown(wait=True)  # graceful: the running inference finishes before the process exits

    app = FastAPI(title=f"{spec.name if spec else 'model'} inference", version=spec.version if spec else "0",
                  lifespan=lifespan)
    gate = asyncio.Semaphore(1)

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

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
            "task": task,
            "profile": spec.profile if spec else None,
            "manifest_digest": spec.manifest_digest if spec else None,
            "sources": list(spec.sources) if spec else [],
            "artifacts": [vars(a) for a in spec.artifacts] if spec else [],
            "device": getattr(predictor, "device", None),
            "dtype": getattr(predictor, "dtype", None),
            "packages": _package_versions(),
            "python": platform.python_version(),
            "status": state.status,
        }

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(getattr(state.predictor, "device", None)),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    def busy(detail: str, retry_after: float) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=429, headers={"Retry-After": str(max(1, round(retry_after)))})

    @app.post("/v1/predict", response_model=response_model)
    async def predict(body: request_model, request: Request):  # type: ignore[valid-type]
        if state.status != "ready" or state.predictor is None:
            return JSONResponse({"detail": state.reason or "the model is still loading"}, status_code=503)
        if state.pending >= 1 + settings.max_queue:
            return busy(f"busy: {state.pending - 1} requests already waiting", (state.last_seconds or 1.0) * state.pending)
        state.pending += 1
        metrics.queue_depth.set(max(state.pending - 1, 0))
        queued = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            try:
                await asyncio.wait_for(gate.acquire(), timeout=settings.request_timeout)
            except asyncio.TimeoutError:
                return JSONResponse({"detail": f"waited {settings.request_timeout:g}s for the model"}, status_code=504)
            waited = time.perf_counter() - queued
            metrics.queue_depth.set(max(state.pending - 1, 0))
            remaining = settings.request_timeout - waited
            if (state.last_seconds is not None and remaining < state.last_seconds) or await request.is_disconnected():
                # It could not finish in time (or nobody waits for it): do not hold the model for it.
                gate.release()
                return JSONResponse({"detail": f"would not finish within {settings.request_timeout:g}s: "
                                               f"{remaining:.0f}s left, inference takes about "
                                               f"{state.last_seconds:.0f}s"}, status_code=504)
            metrics.in_flight.set(1)
            future = loop.run_in_executor(worker, state.predictor.predict, body)

            def finished(_: Any) -> None:
                # Free the model only when the inference really ended, even after a 504.
                metrics.in_flight.set(0)
                loop.call_soon_threadsafe(gate.release)

            future.add_done_callback(finished)
            try:
                output = await asyncio.wait_for(asyncio.shield(future), settings.request_timeout - waited)
            except asyncio.TimeoutError:
                return JSONResponse({"detail": f"inference took longer than {settings.request_timeout:g}s"},
                                    status_code=504)
            except InputError as exc:  # the input was unusable (no face, a broken file): the client's to fix
                return JSONResponse({"detail": str(exc)}, status_code=422)
            except Exception as exc:  # noqa: BLE001 - the model failed this request; the server lives on
                return JSONResponse({"detail": f"inference failed: {type(exc).__name__}: {exc}"}, status_code=500)
        finally:
            state.pending -= 1
            metrics.queue_depth.set(max(state.pending - 1, 0))
        state.last_seconds = output.inference_seconds
        metrics.inference.observe(output.inference_seconds)
        return await asyncio.to_thread(_respond, output, waited, request)  # MP4 encoding takes a while

    app.state.model = state
    app.state.metrics = metrics
    return app
