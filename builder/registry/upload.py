"""How a blob's bytes reach the registry, whatever registry it is and wherever the bytes come from.

A blob comes from a `BlobSource` (builder/registry/blobs.py): the engine's layer store replayed
(builder/registry/layers.py) or any other holder of a layer's bytes, with its size, its diff id
and its bytes from any offset.
`Uploader` moves them, by the registry's profile (builder/registry/profiles.py):

- a small blob: one PUT;
- a large uncompressed one (its digest known before a byte is read): PATCH chunks with
  Content-Range, each acknowledged and its session saved on disk, so a stopped push goes on
  where it stopped; or, where the profile says (GHCR, Artifact Registry), one streamed PATCH
  without Content-Range, as `docker push` sends a layer;
- a layer gzipped as it streams: pieces of at most the chunk size held in memory, or one streamed
  PATCH; its uncompressed stream is hashed and checked against its diff id before the closing PUT.

A refusal that names a body limit (a 413, or GHCR's 416 "exceeds the maximum permissible limit
of 4.00MiB") shrinks the chunks for this blob and the rest. A dropped connection, a 5xx or a
reset mid-chunk resumes that blob from the Range the registry says it holds, in the same
session; only when the session is gone (or the registry's Range cannot be trusted, ECR) does the
blob start over. Either way the other blobs go on.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from builder.errors import RegistryError
from builder.registry.blobs import MIB, Blob, BlobMismatch, Limits, PushStopped, Tally
from builder.registry.client import RegistryClient, Refused, transient


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


def checked(chunks: Iterator[bytes], diff_id: str) -> Iterator[bytes]:
    """The stream as it is, hashed; at its end, BlobMismatch unless its sha256 is `diff_id`, so a
    blob made from it is never committed (the closing PUT comes after the stream's end)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if "sha256:" + digest.hexdigest() != diff_id:
        raise BlobMismatch(f"layer {diff_id[:19]} read back as sha256:{digest.hexdigest()[:12]}: where it was read "
                           "from no longer holds that layer; nothing of it was committed: build again")


@dataclass
class _Session:
    location: str
    offset: int = 0
    minimum: int = 0  # OCI-Chunk-Min-Length, from the POST that opened it


class Uploader:
    """Sends one blob at a time (several Uploader calls run at once, one per blob)."""

    def __init__(self, client: RegistryClient, state: Any, tally: Tally, limits: Limits, stop: threading.Event,
                 gzip_level: int = 3, gzip_threads: int = 1) -> None:
        self.client = client
        self.profile = client.profile
        self.state = state
        self.tally = tally
        self.limits = limits
        self.stop = stop
        self.gzip_level = gzip_level
        self.gzip_threads = gzip_threads

    def send(self, path: str, blob: Blob, opened: tuple[str, dict[str, str]] | None = None) -> None:
        """Upload `blob` to repository `path`. `opened`: the session a registry answered a mount
        with (202): the blob goes up in it, no second session is opened."""
        if blob.data is not None:
            session = self._open(path, opened)
            self.client.finish(path, session.location, blob.digest, blob.data, len(blob.data))  # type: ignore[arg-type]
            self.tally.advance(blob, len(blob.data))
        elif blob.gzip:
            self._send_gzip(path, blob, opened)
        else:
            self._send_known(path, blob, opened)

    # -- sessions ----------------------------------------------------------------------------------
    def _open(self, path: str, opened: tuple[str, dict[str, str]] | None = None) -> _Session:
        location, headers = opened or self.client.start_upload(path)
        assert location is not None
        self.tally.count(sessions=1)
        return _Session(location, 0, int(headers.get("OCI-Chunk-Min-Length") or 0))

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise PushStopped("stopped")

    def _recover(self, path: str, blob: Blob, session: _Session, exc: RegistryError, tried: int,
                 failures: int) -> _Session:
        """After a failed request: the session and offset to go on from, or the error."""
        if self.limits.learn(exc, tried):
            return session  # a body limit: the refused request changed nothing; smaller chunks now
        retryable = transient(exc) or (isinstance(exc, Refused) and exc.status == 416)
        if not retryable or failures >= self.client.attempts:
            raise exc
        self.client._sleep(failures, None)
        held = self.client.upload_offset(path, session.location)  # the registry's Range
        if held is not None and held <= blob.expected:
            self.tally.count(resumes=1)
            self.tally.set_done(blob, held)
            return _Session(session.location, held, session.minimum)
        self.tally.count(restarts=1)  # the session is gone, or its Range cannot be trusted
        self.tally.set_done(blob, 0)
        if blob.digest:
            self.state.drop_session(path, blob.digest)
        return self._open(path)

    # -- a blob whose digest is known: the layer as it is ------------------------------------------
    def _send_known(self, path: str, blob: Blob, opened: tuple[str, dict[str, str]] | None) -> None:
        assert blob.source is not None and blob.digest is not None and blob.size is not None
        session = self._resume(path, blob) if opened is None else None
        session = session or self._open(path, opened)
        if session.offset == 0 and blob.size <= self.limits.chunk_for(session.minimum):
            body = _Body(blob.source.read(), blob.size, lambda n: self.tally.advance(blob, n))
            try:
                self.client.finish(path, session.location, blob.digest, body, blob.size)
                return
            except RegistryError as exc:  # a body limit, or a dropped PUT: on in chunks from what is held
                self.tally.set_done(blob, 0)
                session = self._recover(path, blob, session, exc, blob.size, 1)
        if self.profile.streamed:
            session = self._stream(path, blob, session)
        else:
            session = self._chunks(path, blob, session)
        if session.offset < blob.size:  # the last part went with the closing PUT
            return
        self.client.finish(path, session.location, blob.digest)
        self.state.drop_session(path, blob.digest)

    def _resume(self, path: str, blob: Blob) -> _Session | None:
        """The session an earlier, stopped push left, if the registry still holds what it saved."""
        assert blob.digest is not None
        saved = self.state.session(path, blob.digest)
        if saved is None:
            return None
        location, offset = saved
        if self.client.upload_offset(path, location) != offset:  # gone, moved on, or not to be trusted
            self.state.drop_session(path, blob.digest)
            return None
        self.tally.set_done(blob, offset)
        self.tally.count(resumed_bytes=offset)
        return _Session(location, offset)

    def _chunks(self, path: str, blob: Blob, session: _Session) -> _Session:
        """PATCH chunks with Content-Range, each one acknowledged and saved; returns the session at
        the blob's end, or short of it when the profile's closing PUT took the last part."""
        assert blob.source is not None and blob.digest is not None and blob.size is not None
        failures = 0
        while session.offset < blob.size:
            self._check_stop()
            start = session.offset
            length = min(self.limits.chunk_for(session.minimum), blob.size - start)
            body = _Body(blob.source.read(start, start + length), length, lambda n: self.tally.advance(blob, n))
            last = start + length == blob.size
            try:
                if last and self.profile.last_part_in_put and start > 0:
                    self.client.finish(path, session.location, blob.digest, body, length, start=start)
                    self.state.drop_session(path, blob.digest)
                    return session
                location = self.client.patch(path, session.location, body, start, length)
            except RegistryError as exc:
                self.tally.advance(blob, -body.sent, sent=False)
                failures += 1
                session = self._recover(path, blob, session, exc, length, failures)
                continue
            failures = 0
            session = _Session(location, start + length, session.minimum)
            self.state.save_session(path, blob.digest, location, session.offset)
        return session

    def _stream(self, path: str, blob: Blob, session: _Session) -> _Session:
        """What is left of the blob in one PATCH without Content-Range (`docker push`'s way, which
        GHCR takes whatever its size); after a failure, on from the registry's Range."""
        assert blob.source is not None and blob.size is not None
        failures = 0
        while session.offset < blob.size:
            self._check_stop()
            start = session.offset
            body = _Body(blob.source.read(start), blob.size - start, lambda n: self.tally.advance(blob, n))
            try:
                location = self.client.patch(path, session.location, body, start, blob.size - start, ranged=False)
            except RegistryError as exc:
                self.tally.advance(blob, -body.sent, sent=False)
                if self.limits.learn(exc, blob.size - start):  # a body limit after all: the rest in chunks
                    return self._chunks(path, blob, session)
                failures += 1
                session = self._recover(path, blob, session, exc, blob.size - start, failures)
                continue
            session = _Session(location, blob.size, session.minimum)
        return session

    # -- a layer gzipped as it goes up ---------------------------------------------------------------
    def _send_gzip(self, path: str, blob: Blob, opened: tuple[str, dict[str, str]] | None) -> None:
        """Compress while uploading: the digest is known only at the end (unless remembered from an
        earlier push). The packed bytes go up in pieces of at most the chunk size, held in memory
        so a failed one can be sent again; on a streamed profile, in one PATCH as they come. A
        blob whose session is lost starts over, compressing again (the same bytes)."""
        assert blob.source is not None
        session = self._open(path, opened)
        for failures in range(1, self.client.attempts + 1):
            try:
                digest, size = self._gzip_once(path, blob, session)
                break
            except _StartOver as again:
                if failures >= self.client.attempts:
                    raise again.cause from None
                self.tally.count(restarts=1)
                self.tally.set_done(blob, 0)
                session = self._open(path)
        assert blob.source is not None
        self.state.remember_gzip(blob.source.diff_id, self.gzip_level, digest, size)
        with self.tally.lock:  # progress counted raw bytes; from here on the blob counts as its packed size
            blob.digest, blob.size, blob.done = digest, size, size
            self.tally.stats.total_bytes += size - blob.source.size
        self.tally.report()

    def _raw(self, blob: Blob) -> Iterator[bytes]:
        assert blob.source is not None
        for chunk in checked(blob.source.read(), blob.source.diff_id):
            self.tally.advance(blob, len(chunk), sent=False)
            yield chunk

    def _gzip_once(self, path: str, blob: Blob, session: _Session) -> tuple[str, int]:
        digest = hashlib.sha256()
        size = [0]

        def packed() -> Iterator[bytes]:
            for out in gzip_stream(self._raw(blob), self.gzip_level, self.gzip_threads):
                self._check_stop()
                digest.update(out)
                size[0] += len(out)
                with self.tally.lock:
                    self.tally.stats.sent_bytes += len(out)
                yield out

        stream = packed()
        if not self.profile.streamed:
            return self._gzip_pieces(path, session, stream, digest)
        head = bytearray()  # a layer that packs into one chunk goes with the closing PUT
        for out in stream:
            head += out
            if len(head) > self.limits.chunk_for(session.minimum):
                break
        else:
            blob_digest = "sha256:" + digest.hexdigest()
            return blob_digest, self._close(path, session, bytes(head), blob_digest)

        def rest() -> Iterator[bytes]:
            yield bytes(head)
            yield from stream

        try:  # one PATCH of unknown length (chunked transfer encoding), as `docker push` sends it
            location = self.client.patch(path, session.location, rest(), 0, None, ranged=False)
        except RegistryError as exc:
            if not transient(exc):
                raise
            raise _StartOver(exc) from None
        blob_digest = "sha256:" + digest.hexdigest()
        self._with_retries(path, session, lambda: self.client.finish(path, location, blob_digest))
        return blob_digest, size[0]

    def _gzip_pieces(self, path: str, session: _Session, packed: Iterator[bytes], digest: Any) -> tuple[str, int]:
        chunk = self.limits.chunk_for(session.minimum)
        keep = 1 if self.profile.last_part_in_put else 0  # something must be left for the closing PUT
        pending = bytearray()
        for out in packed:
            pending += out
            while len(pending) >= chunk + keep:
                session = self._put_piece(path, session, bytes(pending[:chunk]))
                del pending[:chunk]
                chunk = self.limits.chunk_for(session.minimum)
        blob_digest = "sha256:" + digest.hexdigest()
        return blob_digest, self._close(path, session, bytes(pending), blob_digest)

    def _close(self, path: str, session: _Session, pending: bytes, digest: str) -> int:
        """Send what is left and close the session as `digest`; return the blob's size. What is
        left goes with the closing PUT when the blob is that small, or where the profile wants
        the last part there (ECR); else in a last PATCH, then an empty PUT."""
        while True:
            chunk = self.limits.chunk_for(session.minimum)
            while len(pending) > chunk:
                session = self._put_piece(path, session, pending[:chunk])
                pending = pending[chunk:]
            in_put = bool(pending) and (session.offset == 0 or self.profile.last_part_in_put)
            if pending and not in_put:
                session = self._put_piece(path, session, pending)
                pending = b""
            try:
                self.client.finish(path, session.location, digest, pending if in_put else None, len(pending),
                                   start=session.offset if in_put and session.offset else None)
                return session.offset + len(pending)
            except RegistryError as exc:
                if in_put and self.limits.learn(exc, len(pending)):
                    continue  # a body limit: the part goes in smaller pieces
                if transient(exc):
                    raise _StartOver(exc) from None
                raise

    def _put_piece(self, path: str, session: _Session, piece: bytes) -> _Session:
        """One piece held in memory: sent again after a transient failure if the registry's Range
        says it did not arrive, split when it is over a body limit."""
        failures = 0
        while True:
            chunk = self.limits.chunk_for(session.minimum)
            if len(piece) > chunk:
                for at in range(0, len(piece), chunk):
                    session = self._put_piece(path, session, piece[at:at + chunk])
                return session
            try:
                location = self.client.patch(path, session.location, piece, session.offset, len(piece))
                return _Session(location, session.offset + len(piece), session.minimum)
            except RegistryError as exc:
                if self.limits.learn(exc, len(piece)):
                    continue
                failures += 1
                if not (transient(exc) or (isinstance(exc, Refused) and exc.status == 416)) \
                        or failures >= self.client.attempts:
                    raise
                self.client._sleep(failures, None)
                held = self.client.upload_offset(path, session.location)
                if held == session.offset:
                    self.tally.count(resumes=1)
                    continue  # it did not arrive: send it again
                if held == session.offset + len(piece):
                    self.tally.count(resumes=1)
                    return _Session(session.location, held, session.minimum)  # it did; the answer was lost
                raise _StartOver(exc) from None

    def _with_retries(self, path: str, session: _Session, call: Callable[[], None]) -> None:
        try:
            call()
        except RegistryError as exc:
            if transient(exc):
                raise _StartOver(exc) from None
            raise


class StreamUpload:
    """A blob written in order as its bytes arrive from elsewhere (a mirror, builder/fetch/stream.py),
    into one upload session: pieces of the registry's chunk size (the last kept for the closing PUT
    where the profile wants it there: ECR), closed only by `commit` with the digest, or cancelled.
    Its bytes cannot be read again, so a piece that cannot be resumed ends the blob (one line)."""

    def __init__(self, uploader: Uploader, path: str, weights: bool = True) -> None:
        self.uploader = uploader
        self.path = path
        self.weights = weights
        self.session: _Session | None = None
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        if self.session is None:
            self.session = self.uploader._open(self.path)
        self.pending += data
        keep = 1 if self.uploader.profile.last_part_in_put else 0
        chunk = self.uploader.limits.chunk_for(self.session.minimum)
        while len(self.pending) >= chunk + keep:
            self.session = self._piece(bytes(self.pending[:chunk]))
            del self.pending[:chunk]
            chunk = self.uploader.limits.chunk_for(self.session.minimum)

    def _piece(self, piece: bytes) -> _Session:
        assert self.session is not None
        try:
            session = self.uploader._put_piece(self.path, self.session, piece)
        except _StartOver as exc:
            raise exc.cause from None
        self._count(len(piece))
        return session

    def _count(self, sent: int) -> None:
        with self.uploader.tally.lock:
            self.uploader.tally.stats.sent_bytes += sent
            if self.weights:
                self.uploader.tally.stats.weight_bytes_sent += sent
        self.uploader.tally.report()

    def commit(self, digest: str, size: int) -> None:
        if self.session is None:
            self.session = self.uploader._open(self.path)
        before = self.session.offset
        try:
            total = self.uploader._close(self.path, self.session, bytes(self.pending), digest)
        except _StartOver as exc:
            raise exc.cause from None
        self._count(total - before)
        self.pending.clear()
        if total != size:
            raise RegistryError(f"sent {total} bytes of a {size}-byte layer: the stream broke off")

    def abort(self) -> None:
        """Cancel the session (the distribution spec's DELETE); a registry that cannot forgets it in time."""
        self.pending.clear()
        if self.session is not None:
            try:
                self.uploader.client.request("DELETE", self.session.location,
                                             self.uploader.client._scopes(self.path, True), retry=False)
            except RegistryError:
                pass
            self.session = None


class _StartOver(Exception):
    """A gzip blob whose session cannot go on: compress and send it again in a new one."""

    def __init__(self, cause: RegistryError) -> None:
        super().__init__(str(cause))
        self.cause = cause
