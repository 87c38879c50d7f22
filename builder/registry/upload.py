"""How a blob's bytes reach the registry: one streamed PUT, resumable chunks, or gzip pieces.

`BlobUploads` is the part of the push (builder/registry/push.py) that moves bytes: an
uncompressed layer in one PUT up to the chunk size, else in acknowledged PATCH chunks whose
upload session is saved for a later run; a layer gzipped as it streams, in PATCHes of at most the
chunk size; and the largest request body a proxy lets through, learnt from a 413 and honoured
from then on. `Pusher` decides what goes up and in which order.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from builder.errors import RegistryError

if TYPE_CHECKING:
    from builder.registry.push import _Blob

MIB = 1024 * 1024


class _Body:
    """A request body of known length, streamed from an iterator (requests sends Content-Length)."""

    def __init__(self, chunks: Iterator[bytes], length: int, on_bytes: Callable[[int], None]) -> None:
        self.chunks = chunks
        self.length = length
        self.on_bytes = on_bytes
        self.sent = 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sent += len(chunk)
            self.on_bytes(len(chunk))
            yield chunk


def _reblock(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def gzip_stream(chunks: Iterator[bytes], level: int, threads: int = 1, block: int = 16 * MIB) -> Iterator[bytes]:
    """Deterministic gzip of a byte stream: one gzip member per `block` input bytes (no name, no
    time), compressed `threads` at a time. Concatenated members are one gzip stream (RFC 1952
    section 2.2), which every layer reader takes: the same input always gives the same blob."""
    if threads <= 1:
        for data in _reblock(chunks, block):
            yield gzip.compress(data, level, mtime=0)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gzip") as pool:
        queue: list = []
        for data in _reblock(chunks, block):
            queue.append(pool.submit(gzip.compress, data, level, mtime=0))
            if len(queue) > threads:
                yield queue.pop(0).result()
        for future in queue:
            yield future.result()


class BlobUploads:
    """Mixed into Pusher: uses its client, settings, state, lock, stats and progress."""

    def _send_gzip(self, path: str, blob: _Blob) -> None:
        """Compress while uploading: the digest is known only at the end. The packed bytes go up in
        PATCHes of at most the chunk size (held in memory one at a time), so a registry behind a
        body limit takes them too."""
        assert blob.layer is not None
        location, headers = self.client.start_upload(path)
        assert location is not None
        chunk = max(self._chunk_limit(), int(headers.get("OCI-Chunk-Min-Length") or 0))
        digest, offset, pending = hashlib.sha256(), 0, bytearray()

        def flush(data: bytes) -> None:
            nonlocal location, offset
            while data:
                piece = data[:self._chunk_limit(chunk)]
                location = self._patch_piece(path, location, piece, offset)
                offset += len(piece)
                data = data[len(piece):]

        packed = gzip_stream(self._raw_progress(blob, blob.layer.read()), self.settings.gzip_level,
                             self.settings.gzip_threads)
        for out in packed:
            self._check_stop()
            digest.update(out)
            pending += out
            if len(pending) >= chunk:
                flush(bytes(pending))
                pending.clear()
        flush(bytes(pending))
        blob.digest, blob.size = "sha256:" + digest.hexdigest(), offset
        self.client.finish(path, location, blob.digest)
        self.state.remember_gzip(blob.layer.diff_id, self.settings.gzip_level, blob.digest, offset)
        with self._lock:  # progress counted raw bytes; from here on the blob counts as its packed size
            blob.done = offset
            self.stats.total_bytes += offset - blob.layer.size
            self.stats.sent_bytes += offset
        self._report()

    def _patch_piece(self, path: str, location: str, piece: bytes, offset: int) -> str:
        """One PATCH of bytes held in memory; a 413 (a proxy's body limit) halves the limit and
        sends them again in smaller pieces."""
        try:
            return self.client.patch(path, location, piece, offset, len(piece))
        except RegistryError as exc:
            if " 413 " not in str(exc) or len(piece) <= MIB:
                raise
            self._learn_body_limit(len(piece) // 2)
            half = len(piece) // 2
            location = self._patch_piece(path, location, piece[:half], offset)
            return self._patch_piece(path, location, piece[half:], offset + half)

    def _chunk_limit(self, wanted: int | None = None) -> int:
        with self._lock:
            limit = self._body_limit
        return min(wanted or self.settings.chunk_bytes, limit) if limit else (wanted or self.settings.chunk_bytes)

    def _learn_body_limit(self, limit: int) -> None:
        with self._lock:
            if self._body_limit is None or limit < self._body_limit:
                self._body_limit = max(limit, MIB)

    def _raw_progress(self, blob: _Blob, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self._advance(blob, len(chunk), sent=False)
            yield chunk

    def _send_tar(self, path: str, blob: _Blob) -> None:
        """An uncompressed layer: its digest is known, so one streamed PUT, or chunks that resume."""
        assert blob.layer is not None and blob.digest is not None and blob.size is not None
        layer, size = blob.layer, blob.size
        if size <= self._chunk_limit():
            location, _ = self.client.start_upload(path)
            assert location is not None
            body = _Body(layer.read(), size, lambda n: self._advance(blob, n))
            try:
                self.client.finish(path, location, blob.digest, body, size)
                return
            except RegistryError as exc:
                if " 413 " not in str(exc) or size <= MIB:
                    raise
                with self._lock:
                    blob.done -= body.sent
                self._learn_body_limit(size // 2)  # a proxy's body limit: this blob, and the rest, in chunks
        location, offset = self._resume(path, blob)
        if location is None:
            location, headers = self.client.start_upload(path)
            assert location is not None
            offset = 0
        else:
            headers = {}
        minimum = int(headers.get("OCI-Chunk-Min-Length") or 0)
        failures = 0
        while offset < size:
            self._check_stop()
            length = min(max(self._chunk_limit(), minimum), size - offset)
            body = _Body(layer.read(offset, offset + length), length, lambda n: self._advance(blob, n))
            try:
                location = self.client.patch(path, location, body, offset, length)
            except RegistryError as exc:
                # A dropped chunk: go on from what the registry holds. Distribution refuses a
                # session whose last chunk was cut short, so then the blob starts over. A 413 is
                # a proxy's body limit: smaller chunks from here on.
                if " 413 " in str(exc) and length > MIB:
                    self._learn_body_limit(length // 2)
                failures += 1
                if failures >= self.client.attempts:
                    raise
                with self._lock:
                    blob.done -= body.sent
                held = self.client.upload_offset(path, location)
                if held != offset:
                    location, headers = self.client.start_upload(path)
                    with self._lock:
                        blob.done -= offset
                    offset = 0
                continue
            offset += length
            self.state.save_session(path, blob.digest, location, offset)
        self.client.finish(path, location, blob.digest)
        self.state.drop_session(path, blob.digest)

    def _resume(self, path: str, blob: _Blob) -> tuple[str | None, int]:
        assert blob.digest is not None
        saved = self.state.session(path, blob.digest)
        if saved is None:
            return None, 0
        location, offset = saved
        if self.client.upload_offset(path, location) != offset:  # the session is gone or moved on
            self.state.drop_session(path, blob.digest)
            return None, 0
        with self._lock:
            blob.done += offset
            self.stats.resumed_bytes += offset
        return location, offset
