"""The one inference path behind both front doors: the HTTP route (server/app.py) and the queue
handler (server/queue_worker.py). One model in memory, loaded once.

Health is a small state machine: `loading` -> `ready`, or `failed` with the reason.
One inference runs at a time (one worker thread: one model, one GPU); up to `max_queue` callers
wait, the rest are refused at once (Busy). A caller that cannot finish within `request_timeout`
is refused (TimedOut), and the model stays busy until that inference really ends. Every outcome
other than an output is an exception from server/errors.py that each front door maps to its
own answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from server.errors import Busy, InferenceFailed, InputError, LoadError, NotReady, TimedOut
from server.loaders import Predictor, load_predictor
from server.metrics import Metrics
from server.schemas import REQUEST_OF_TASK, RESPONSE_OF_TASK, TextToImageRequest, TextToImageResponse
from server.settings import Settings
from server.spec import ModelSpec


@dataclass
class ModelState:
    status: str = "loading"  # loading | ready | failed
    reason: str | None = None
    predictor: Predictor | None = None
    load_seconds: float | None = None
    pending: int = 0  # requests inside predict: the one running plus those waiting
    last_seconds: float | None = None  # the last inference's duration (None before the first)


@dataclass(frozen=True)
class Result:
    output: Any  # one of server.loaders' outputs
    waited: float  # seconds spent waiting for the model


class Inference:
    def __init__(self, settings: Settings, loader: Callable[..., Predictor] = load_predictor) -> None:
        self.settings = settings
        self.loader = loader
        self.state = ModelState()
        self.metrics = Metrics()
        try:
            self.spec: ModelSpec | None = ModelSpec.load(settings.manifest_path)
        except (OSError, ValueError, KeyError) as exc:
            self.spec = None
            self.state.status = "failed"
            self.state.reason = f"cannot read the manifest {settings.manifest_path}: {exc}"
        self.task = self.spec.task if self.spec else "text-to-image"
        self.request_model: type[BaseModel] = REQUEST_OF_TASK.get(self.task, TextToImageRequest)
        self.response_model: type[BaseModel] = RESPONSE_OF_TASK.get(self.task, TextToImageResponse)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")  # one model, one inference
        # Not bound to a loop until first contended: the HTTP server and the queue worker each run their own.
        self._gate = asyncio.Semaphore(1)

    def load(self) -> None:
        """Load the model (blocking; seconds to minutes). Never raises: a failure becomes the state."""
        if self.spec is None:
            return
        started = time.perf_counter()
        try:
            predictor = self.loader(self.spec, self.settings.model_dir, self.settings.device)
        except LoadError as exc:
            self.state.status, self.state.reason = "failed", str(exc)
            return
        except Exception as exc:  # noqa: BLE001 - a broken model must not kill the server: the state says why
            self.state.status, self.state.reason = "failed", f"{type(exc).__name__}: {exc}"
            return
        self.state.predictor, self.state.load_seconds = predictor, time.perf_counter() - started
        self.metrics.load_seconds.set(self.state.load_seconds)
        self.metrics.ready.set(1)
        self.state.status = "ready"

    def shutdown(self) -> None:
        self._worker.shutdown(wait=True)  # graceful: the running inference finishes before the process exits

    async def predict(self, request: BaseModel, gone: Callable[[], Awaitable[bool]] | None = None) -> Result:
        """Run one validated request. `gone()` says whether the caller stopped waiting (an HTTP
        client that disconnected): then its turn is given up instead of holding the model."""
        state, timeout = self.state, self.settings.request_timeout
        if state.status != "ready" or state.predictor is None:
            raise NotReady(state.reason or "the model is still loading")
        if state.pending >= 1 + self.settings.max_queue:
            raise Busy(f"busy: {state.pending - 1} requests already waiting", (state.last_seconds or 1.0) * state.pending)
        state.pending += 1
        self._show_depth()
        queued = time.perf_counter()
        try:
            try:
                await asyncio.wait_for(self._gate.acquire(), timeout=timeout)
            except asyncio.TimeoutError:
                raise TimedOut(f"waited {timeout:g}s for the model") from None
            waited = time.perf_counter() - queued
            self._show_depth()
            future = await self._start(state.predictor, request, timeout - waited, gone)
            try:
                output = await asyncio.wait_for(asyncio.shield(future), timeout - waited)
            except asyncio.TimeoutError:
                raise TimedOut(f"inference took longer than {timeout:g}s") from None
            except InputError:  # the input was unusable (no face, a broken file): the caller's to fix
                raise
            except Exception as exc:  # noqa: BLE001 - the model failed this request; the server lives on
                raise InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}") from exc
        finally:
            state.pending -= 1
            self._show_depth()
        state.last_seconds = output.inference_seconds
        self.metrics.inference.observe(output.inference_seconds)
        return Result(output, waited)

    async def _start(self, predictor: Predictor, request: BaseModel, remaining: float,
                     gone: Callable[[], Awaitable[bool]] | None) -> asyncio.Future:
        """Holding the gate: hand it to the inference, or give it back on every other way out
        (a refusal, a cancelled caller)."""
        try:
            last = self.state.last_seconds
            if last is not None and remaining < last:
                # It could not finish in time: do not hold the model for it.
                raise TimedOut(f"would not finish within {self.settings.request_timeout:g}s: "
                               f"{remaining:.0f}s left, inference takes about {last:.0f}s")
            if gone is not None and await gone():
                raise TimedOut("the caller stopped waiting before its turn")
        except BaseException:
            self._gate.release()
            raise
        self.metrics.in_flight.set(1)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._worker, predictor.predict, request)

        def finished(_: Any) -> None:
            # Free the model only when the inference really ended, even after a TimedOut.
            self.metrics.in_flight.set(0)
            loop.call_soon_threadsafe(self._gate.release)

        future.add_done_callback(finished)
        return future

    def _show_depth(self) -> None:
        self.metrics.queue_depth.set(max(self.state.pending - 1, 0))
