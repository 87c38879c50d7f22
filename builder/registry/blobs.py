"""What a push is made of, shared by the part that plans it (push.py) and the part that moves
the bytes (upload.py): the blob source interface, the blobs, the counters, the chunk limits.

A blob source is anything with a size, a diff id and `read(start, end)`: the engine's layer store
replayed (builder/registry/layers.py) or a layer the builder wrote itself. Nothing here knows
which.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from builder.errors import RegistryError
from builder.registry.client import Refused
from builder.registry.profiles import Profile, body_limit

MIB = 1024 * 1024
_SMALLEST_CHUNK = 64 * 1024  # what halving after a bare 413 stops at


class BlobSource(Protocol):
    """Where a layer's bytes come from. `read` yields bytes [start, end) of the layer tar."""

    size: int
    diff_id: str

    def read(self, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...


@dataclass
class Blob:
    """One blob of a push: a layer (its source, gzipped here or sent as it is) or a small
    document held in memory (the config). `digest` is known up front for everything but a gzip
    layer pushed for the first time."""

    media_type: str
    source: BlobSource | None = None
    data: bytes | None = None
    digest: str | None = None
    size: int | None = None
    weights: bool = False
    done: int = 0

    @property
    def gzip(self) -> bool:
        return self.media_type.endswith("+gzip")

    @property
    def expected(self) -> int:
        """Bytes this blob will take (its source's size until a gzip layer's own is known)."""
        if self.size is not None:
            return self.size
        return self.source.size if self.source is not None else len(self.data or b"")


@dataclass
class PushStats:
    blobs: int = 0
    sent_bytes: int = 0
    weight_bytes_sent: int = 0
    present: int = 0  # blobs the repository had
    mounted: int = 0  # blobs taken from another repository of the registry
    resumed_bytes: int = 0  # bytes an earlier, stopped push had sent that were not sent again
    total_bytes: int = 0
    seconds: float = 0.0
    sessions: int = 0  # upload sessions opened (one per blob sent, unless one had to start over)
    restarts: int = 0  # blobs that had to start over in a new session
    resumes: int = 0  # failed requests a blob went on from, in its session


class PushStopped(RegistryError):
    """The push was asked to stop; what the registry acknowledged is kept for the next run."""

    exit_code = 130


class BlobMismatch(RegistryError):
    """A layer's bytes are not the layer its diff id names: nothing of it is committed."""


class Tally:
    """Progress and counters, shared by the threads that send blobs."""

    def __init__(self, stats: PushStats, blobs: list[Blob], report: Callable[[], None]) -> None:
        self.lock = threading.Lock()
        self.stats = stats
        self.blobs = blobs
        self.report = report

    def advance(self, blob: Blob, count: int, sent: bool = True) -> None:
        with self.lock:
            blob.done += count
            if sent:
                self.stats.sent_bytes += count
                if blob.weights:
                    self.stats.weight_bytes_sent += count
        self.report()

    def set_done(self, blob: Blob, done: int) -> None:
        with self.lock:
            blob.done = done
        self.report()

    def count(self, **counters: int) -> None:
        with self.lock:
            for name, value in counters.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)


class Limits:
    """The chunk size for this push: the configured one within the profile's, shrunk by what the
    registry (or a proxy in front of it) refuses."""

    def __init__(self, profile: Profile, chunk_bytes: int) -> None:
        self.profile = profile
        self.chunk = min(chunk_bytes, profile.max_chunk) if profile.max_chunk else chunk_bytes
        self.body: int | None = None  # the largest body that got through, learnt from refusals
        self.lock = threading.Lock()

    def chunk_for(self, minimum: int = 0) -> int:
        with self.lock:
            chunk = min(self.chunk, self.body) if self.body else self.chunk
        return max(chunk, minimum, self.profile.min_chunk, 1)

    def learn(self, exc: BaseException, tried: int) -> bool:
        """Whether a refusal was a body limit; if so, chunks shrink to fit it from now on. A 413
        (a proxy's or CDN's limit) or a 416 whose body names the limit (GHCR's answer to a chunk
        over 4 MiB: a 416 here is not an offset the registry disagrees with)."""
        if not isinstance(exc, Refused):
            return False
        named = body_limit(exc.body)
        if exc.status == 413:
            limit = named if named and named < tried else tried // 2
        elif exc.status == 416 and named:
            limit = named
        else:
            return False
        if tried <= _SMALLEST_CHUNK or limit >= tried:
            return False
        with self.lock:
            self.body = max(min(self.body or limit, limit), _SMALLEST_CHUNK)
        return True
