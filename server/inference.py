"""The one inference path behind both front doors: the HTTP route (server/app.py) and the queue
handler (server/queue_worker.py). One model in memory, loaded once.

Health is a small state machine: `loading` -> `ready`, or `failed` with the reason.
One inference runs at a time (one worker thread: one model, one GPU); up to `max_queue` callers
wait, the rest are refused at once (Busy). A caller that cannot finish within `request_timeout`
is refused (TimedOut), and the model stays busy until that inference really ends; one that will
very likely take longer than the time it has left (a lower bound from server/estimate.py, fitted
on the finished inferences but the first, which carries the warm-up) is refused before it runs. A
GPU out-of-memory error frees what it can and refuses that request only (OutOfMemory): the next
one is served. Every outcome other than an output is an exception from server/errors.py that
each front door maps to its own answer.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from server.errors import Busy, InferenceFailed, InputError, LoadError, NotReady, OutOfMemory, TimedOut
from server.estimate import WorkRate, work_units
from server.loaders import Predictor, load_predictor
from server.metrics import Metrics
from server.schemas import REQUEST_OF_TASK, RESPONSE_OF_TASK, TextToImageRequest, TextToImageResponse, request_model_for
from server.settings import Settings
from server.spec import ModelSpec

# The first inference after the load pays for the warm-up (CUDA context, kernel selection, lazy
# allocations): it says nothing about the next ones' cost, so the estimate never learns from it.
WARMUP_INFERENCES = 1


@dataclass
class ModelState:
    status: str = "loading"  # loading | ready | failed
    reason: str | None = None
    predictor: Predictor | None = None
    load_seconds: float | None = None
    pending: int = 0  # requests inside predict: the one running plus those waiting
    last_seconds: float | None = None  # the last inference's duration (None before the first)
    finished: int = 0  # inferences that ended with an output


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
        self.serving: dict[str, Any] = self.spec.serving if self.spec else {}
        self.request_model: type[BaseModel] = TextToImageRequest  # an unknown task: the loader says why
        if self.task in REQUEST_OF_TASK:
            try:
                self.request_model = request_model_for(self.task, self.serving)
            except ValueError as exc:  # a policy this server's limits cannot accommodate
                self.state.status, self.state.reason = "failed", f"the manifest's {exc}"
        self.response_model: type[BaseModel] = RESPONSE_OF_TASK.get(self.task, TextToImageResponse)
        self.rate = WorkRate()  # seconds per work unit, learned from finished inferences
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")  # one model, one inference
        # Not bound to a loop until first contended: the HTTP server and the queue worker each run their own.
        self._gate = asyncio.Semaphore(1)

    def load(self) -> None:
        """Load the model (blocking; seconds to minutes). Never raises: a failure becomes the state."""
        if self.spec is None or self.state.status == "failed":
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
        units = work_units(self.task, request)
        self._refuse_if_too_long(units, timeout)  # not worth a place in the queue
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
            future = await self._start(state.predictor, request, units, timeout - waited, gone)
            try:
                output = await asyncio.wait_for(asyncio.shield(future), timeout - waited)
            except asyncio.TimeoutError:
                raise TimedOut(f"inference took longer than {timeout:g}s") from None
            except (InputError, OutOfMemory):  # the caller's to fix: the input, or the size asked for
                raise
            except Exception as exc:  # noqa: BLE001 - the model failed this request; the server lives on
                raise InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}") from exc
        finally:
            state.pending -= 1
            self._show_depth()
        return Result(output, waited)

    def _refuse_if_too_long(self, units: float | None, remaining: float) -> None:
        """Only a clear case: the fit's lower bound, not its estimate, past the time left."""
        fitted = self.rate.fit()
        low = fitted.lower_bound(units) if fitted is not None and units is not None else None
        if low is not None and low > remaining:
            timeout = self.settings.request_timeout
            raise TimedOut(f"refused before running: this request would take at least {low:.0f}s "
                           f"({units:.6g} work units at the rate of the last {fitted.samples} inferences), more than "
                           f"the {remaining:.0f}s left of the {timeout:g}s limit (BUILDER_REQUEST_TIMEOUT): "
                           "ask for less work")

    async def _start(self, predictor: Predictor, request: BaseModel, units: float | None, remaining: float,
                     gone: Callable[[], Awaitable[bool]] | None) -> asyncio.Future:
        """Holding the gate: hand it to the inference, or give it back on every other way out
        (a refusal, a cancelled caller)."""
        try:
            self._refuse_if_too_long(units, remaining)  # it could not finish in time: do not hold the model for it
            if gone is not None and await gone():
                raise TimedOut("the caller stopped waiting before its turn")
        except BaseException:
            self._gate.release()
            raise
        self.metrics.in_flight.set(1)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._worker, _run, predictor, request)

        def finished(done: asyncio.Future) -> None:
            # Free the model only when the inference really ended, even after a TimedOut; and
            # learn from it even then: a slow inference is the one the estimate most needs.
            self.metrics.in_flight.set(0)
            if not done.cancelled() and done.exception() is None:
                seconds = done.result().inference_seconds
                self.state.last_seconds = seconds
                self.state.finished += 1
                self.metrics.inference.observe(seconds)
                if units is not None and self.state.finished > WARMUP_INFERENCES:
                    self.rate.observe(units, seconds)
            loop.call_soon_threadsafe(self._gate.release)

        future.add_done_callback(finished)
        return future

    def _show_depth(self) -> None:
        self.metrics.queue_depth.set(max(self.state.pending - 1, 0))


def _run(predictor: Predictor, request: BaseModel) -> Any:
    """predictor.predict on the inference thread; a GPU out-of-memory error frees what it can
    there, before the next inference may start, and becomes OutOfMemory."""
    try:
        return predictor.predict(request)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled here; the rest goes on up
        if not _out_of_memory(exc):
            raise
    # Outside the except block: the exception's traceback holds the frames, and they the tensors
    # (https://pytorch.org/docs/stable/notes/faq.html#my-out-of-memory-exception-handler-can-t-allocate-memory).
    _free_memory()
    raise OutOfMemory("the GPU ran out of memory for this request: try a smaller size or fewer steps")


def _out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never imported here: a model that ran on torch has it loaded
    cuda_oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if cuda_oom is not None and isinstance(exc, cuda_oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
