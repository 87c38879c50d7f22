"""How a request can fail short of an output: the model cannot load, a request's input is
unusable, or the inference path turns it away. Each front door (the HTTP route, the queue
handler) maps these to its own answer: status codes, or RunPod error results."""

from __future__ import annotations


class LoadError(Exception):
    """The model cannot be loaded; the message says why (shown by /ready and the smoke)."""


class InputError(ValueError):
    """A request's input cannot be used (an unreadable file, no face in the image...): a 422
    with this message, raised before or while the model runs."""


class Refused(Exception):
    """The inference path did not produce an output; `detail` is one sentence for the caller."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotReady(Refused):
    """The model is still loading, or failed to load (HTTP 503)."""


class Busy(Refused):
    """More requests wait already than the queue holds (HTTP 429 with Retry-After)."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class TimedOut(Refused):
    """The request could not finish within BUILDER_REQUEST_TIMEOUT, or would not by its estimated
    time, and was refused before it ran (HTTP 504)."""


class OutOfMemory(Refused):
    """The GPU ran out of memory for this request; what could be freed was freed and the next
    request is served (HTTP 503)."""


class InferenceFailed(Refused):
    """The model raised while running this request; the server lives on (HTTP 500)."""
