"""A transfer: one partial file cut into segments, downloaded in parallel, hashed in order.

sha256 is computed while the bytes arrive: a writer whose bytes continue the digest hashes them
at once, and a follower thread hashes from the page cache whatever the writers could not (ranges
that finished out of order, a resumed file's existing bytes), so a 24 GB file is never read a
second time. Each segment's progress is kept beside the partial file, so a process killed at
any point resumes where it stopped.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.fetch.cache import CHUNK


@dataclass
class Segment:
    start: int
    length: int
    done: int = 0

    @property
    def complete(self) -> bool:
        return self.done >= self.length


class Digests:
    """The file's sha256 and, when the file will be an image layer of its own, the layer tar's:
    the same bytes feed both, once, as they arrive (the layer's header is fed first, its end once
    the file is whole)."""

    def __init__(self, frame: tuple[bytes, bytes] | None = None) -> None:
        self.file = hashlib.sha256()
        self.frame = frame
        self.layer = hashlib.sha256(frame[0]) if frame else None

    def update(self, data: bytes | memoryview) -> None:
        self.file.update(data)
        if self.layer is not None:
            self.layer.update(data)

    def hexdigest(self) -> str:
        return self.file.hexdigest()

    def layer_digest(self, size: int) -> tuple[str, int] | None:
        """(digest, size) of the layer tar, once every byte of the file went in."""
        if self.layer is None or self.frame is None:
            return None
        self.layer.update(self.frame[1])
        return "sha256:" + self.layer.hexdigest(), len(self.frame[0]) + size + len(self.frame[1])


@dataclass
class Transfer:
    """A partial file and its segments; `state` persists beside it for resuming."""

    part: Path
    size: int
    segments: list[Segment]
    lock: threading.Condition = field(default_factory=threading.Condition)
    failed: BaseException | None = None
    saved_at: float = 0.0
    first_open: int = 0  # segments before this index are complete
    digest: Any = field(default_factory=Digests)
    frame: tuple[bytes, bytes] | None = None  # the layer tar around the file (builder/weights/tar.py)
    hashed: int = 0  # bytes from 0 already in digest
    hash_lock: threading.Lock = field(default_factory=threading.Lock)

    def hash_in_order(self, offset: int, data: memoryview) -> None:
        """Hash data just written at offset if it continues the digest: no read back from disk.
        Skipped (the follower reads it back later) when it does not, or the follower is busy."""
        if offset != self.hashed or not self.hash_lock.acquire(blocking=False):
            return
        try:
            if offset == self.hashed:
                self.digest.update(data)
                self.hashed += len(data)
        finally:
            self.hash_lock.release()

    @property
    def state_path(self) -> Path:
        return self.part.with_suffix(".json")

    def frontier(self) -> int:
        """End of the contiguous bytes written from offset 0 (call with the lock held)."""
        while self.first_open < len(self.segments) and self.segments[self.first_open].complete:
            self.first_open += 1
        if self.first_open == len(self.segments):
            return self.size
        segment = self.segments[self.first_open]
        return segment.start + segment.done

    def save(self, force: bool = False) -> None:
        """Record each segment's progress (at most once a second unless forced). Only bytes
        already written are recorded, so a process killed at any point resumes correctly."""
        with self.lock:
            now = time.monotonic()
            if not force and now - self.saved_at < 1.0:
                return
            self.saved_at = now
            state = {"size": self.size, "segments": [[s.start, s.length, s.done] for s in self.segments]}
            tmp = self.state_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.state_path)

    @classmethod
    def resume_or_new(cls, part: Path, size: int, chunk: int) -> "Transfer":
        """The saved transfer for part if it matches size, else a fresh one cut into chunks.

        Chunks, not one range per connection: the workers take them in file order, so the bytes
        written stay nearly contiguous and the sha256 follower hashes right behind them instead
        of waiting for the first quarter of the file to finish (and then hashing the rest)."""
        state_path = part.with_suffix(".json")
        if part.exists() and state_path.exists():
            try:
                state = json.loads(state_path.read_text())
                if state["size"] == size and part.stat().st_size == size:
                    segments = [Segment(*row) for row in state["segments"]]
                    return cls(part, size, segments)
            except (ValueError, KeyError, TypeError, OSError):
                pass
        step = max(chunk, 1)
        segments = [Segment(start, min(step, size - start)) for start in range(0, size, step)] or [Segment(0, 0)]
        with part.open("wb") as fh:
            fh.truncate(size)
        transfer = cls(part, size, segments)
        transfer.save(force=True)
        return transfer

    def discard(self) -> None:
        for path in (self.part, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def write_at(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


# fetch_segment(run, segment): download the rest of one segment, handing bytes to run.receive.
SegmentFetcher = Callable[["TransferRun", Segment], None]


class TransferRun:
    """One pass over a transfer's open segments: `parts` workers take them in file order while
    a follower hashes the contiguous prefix. The first failure stops the others."""

    def __init__(self, transfer: Transfer, parts: int, fetch_segment: SegmentFetcher,
                 on_received: Callable[[int], None] = lambda n: None) -> None:
        self.transfer = transfer
        self.parts = parts
        self.fetch_segment = fetch_segment
        self.on_received = on_received
        self.fd = -1

    @property
    def stopped(self) -> bool:
        return self.transfer.failed is not None

    def run(self) -> str | None:
        """Download every open segment; the sha256 of the whole file, or None when hashing did not finish."""
        transfer = self.transfer
        self.fd = os.open(transfer.part, os.O_RDWR)
        try:
            transfer.digest, transfer.hashed = Digests(transfer.frame), 0
            hashed = threading.Event()
            pending = collections.deque(s for s in transfer.segments if not s.complete)
            hasher = threading.Thread(target=self._follow, args=(hashed,), name="sha256-follower", daemon=True)
            hasher.start()
            try:
                workers = min(self.parts, len(pending))
                if workers <= 1:
                    self._work(pending)
                else:
                    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="range") as pool:
                        futures = [pool.submit(self._work, pending) for _ in range(workers)]
                    for future in futures:
                        future.result()
            finally:
                transfer.save(force=True)
                hasher.join()
            if not hashed.is_set():
                return None
            os.fsync(self.fd)
            return transfer.digest.hexdigest()
        finally:
            os.close(self.fd)

    def receive(self, segment: Segment, chunk: memoryview) -> bool:
        """Write bytes that arrived for segment; False once the segment is complete or the run stopped."""
        transfer = self.transfer
        if transfer.failed is not None:
            return False
        chunk = chunk[: segment.length - segment.done]
        offset = segment.start + segment.done
        write_at(self.fd, chunk, offset)
        with transfer.lock:
            segment.done += len(chunk)
        transfer.hash_in_order(offset, chunk)
        with transfer.lock:
            transfer.lock.notify_all()
        self.on_received(len(chunk))
        transfer.save()
        return not segment.complete

    def _work(self, pending: collections.deque) -> None:
        transfer = self.transfer
        while True:
            with transfer.lock:
                if transfer.failed is not None or not pending:
                    return
                segment = pending.popleft()
            try:
                self.fetch_segment(self, segment)
            except BaseException as exc:
                with transfer.lock:  # stop the other ranges and the hasher at once
                    transfer.failed = transfer.failed or exc
                    transfer.lock.notify_all()
                raise

    def _follow(self, hashed: threading.Event) -> None:
        """Hash whatever the writers could not hash in order (out-of-order ranges, a resumed
        file's existing bytes), reading it back from the page cache."""
        transfer = self.transfer
        while True:
            with transfer.lock:
                while transfer.frontier() <= transfer.hashed < transfer.size and transfer.failed is None:
                    transfer.lock.wait(0.5)
                if transfer.failed is not None:
                    return
                end = transfer.frontier()
            with transfer.hash_lock:
                while transfer.hashed < end:
                    chunk = os.pread(self.fd, min(CHUNK, end - transfer.hashed), transfer.hashed)
                    transfer.digest.update(chunk)
                    transfer.hashed += len(chunk)
                if transfer.hashed >= transfer.size:
                    hashed.set()
                    return
