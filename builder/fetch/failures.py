"""How a failure is sorted: worth a retry (and after how long), or one BuilderError line that
says what to do. The internal signals the range client and the transfer raise live here too."""

from __future__ import annotations

import email.utils
import http.client
import random
import ssl
import time

from builder.errors import BuilderError, ChecksumMismatch, DownloadError
from builder.fetch.plan import Mirror, PlannedFile

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class NoRanges(Exception):
    """The server ignored a Range header: fall back to one stream from byte 0."""


class Expired(Exception):
    """A CDN refused a signed URL mid-download (it expired): resolve the file again and resume."""


class CorruptTransfer(ChecksumMismatch):
    """The downloaded bytes did not hash to the pinned sha256 (as opposed to metadata that
    already disagreed before any download). Reported as a ChecksumMismatch."""


class HttpStatus(Exception):
    def __init__(self, status: int, code: str | None, detail: str) -> None:
        super().__init__(f"HTTP {status}" + (f" {code}" if code else "") + f": {detail}")
        self.status = status


def one_line(text: object, limit: int = 240) -> str:
    return " ".join(str(text).split())[:limit]


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unreadable: back off as usual rather than fail
    return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def backoff(failures: int, hint: float | None, base: float, ceiling: float) -> float:
    """Seconds to wait: the server's hint (bounded), else exponential backoff with full jitter."""
    if hint is not None:
        return min(hint, ceiling * 4)
    return random.uniform(0, min(ceiling, base * 2 ** (failures - 1)))  # noqa: S311 - jitter, not cryptography


def classify(exc: BaseException) -> Retryable | None:
    """A transient failure worth retrying, or None."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, Retryable):
        return exc
    if isinstance(exc, HfHubHTTPError):  # before OSError: HfHubHTTPError is one
        response = exc.response
        if response is not None and response.status_code in RETRY_STATUS:
            return Retryable(f"HTTP {response.status_code}", retry_after(response.headers.get("Retry-After")))
        return None
    if isinstance(exc, ssl.SSLCertVerificationError):
        return None  # not transient: the CA bundle is wrong (see --ca-bundle)
    if isinstance(exc, (httpx2.TransportError, http.client.HTTPException, OSError)):
        name = "ReadTimeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        return Retryable(f"{name}: {one_line(exc, 120)}")
    return None


def hub_error(model: str, token: str | None, item: PlannedFile, mirror: Mirror, exc: Exception) -> BuilderError:
    """A huggingface_hub failure as one line that says what to do."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    via = f"via {mirror.name} ({mirror.display_url})"
    page = f"{mirror.display_url}/{item.repo_id}"
    if isinstance(exc, GatedRepoError):
        if token is None:
            return DownloadError(
                f"{model}: {item.repo_id} {via} is gated and no token was passed: accept its licence at "
                f"{page} and set HF_TOKEN to a token of that account"
            )
        return DownloadError(
            f"{model}: {item.repo_id} {via} is gated and the token passed has no access: accept the "
            f"licence at {page} with the account whose token you pass in HF_TOKEN"
        )
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(f"{model}: revision {item.revision} not found in {item.repo_id} {via}: check the source's revision")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(
            f"{model}: repository {item.repo_id} not found {via} (or it is private and the token has no "
            f"access): check repo_id and HF_TOKEN"
        )
    if isinstance(exc, EntryNotFoundError):
        return DownloadError(f"{model}: {item.path} not found in {item.where} {via}: check the artifact's path")
    response = getattr(exc, "response", None)
    if isinstance(exc, HfHubHTTPError) and response is not None and response.status_code in (401, 403):
        return DownloadError(
            f"{model}: {mirror.name} ({mirror.display_url}) refused the token ({response.status_code}) for "
            f"{item.repo_id}: check HF_TOKEN"
        )
    retry = classify(exc)
    detail = str(retry) if retry is not None else one_line(exc)
    return DownloadError(f"{model}: cannot fetch {item.path} from {item.where} {via}: {detail}")


def give_up(model: str, item: PlannedFile, errors: list[tuple[Mirror, BuilderError]]) -> BuilderError:
    """One error for a file every mirror failed: each mirror's last reason."""
    if len(errors) == 1:
        return errors[0][1]
    summary = "; ".join(f"{m.name}: {one_line(str(e).split(': ', 1)[-1], 200)}" for m, e in errors)
    kinds = {ChecksumMismatch if isinstance(e, ChecksumMismatch) else DownloadError for _, e in errors}
    cls = kinds.pop() if len(kinds) == 1 else DownloadError
    return cls(f"{model}: {item.dest} from {item.where}: all {len(errors)} mirrors failed: {summary}")
