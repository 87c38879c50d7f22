"""The engine: every planned file into the cache, several at once, each from the first mirror
of the ordered list that serves it correctly, with retries per file and mirror."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import BuilderError, ChecksumMismatch, DownloadError
from builder.fetch import tls
from builder.fetch.cache import ContentCache
from builder.fetch.failures import (
    CorruptTransfer,
    Expired,
    HttpStatus,
    NoRanges,
    Retryable,
    backoff,
    classify,
    give_up,
    hub_error,
)
from builder.fetch.oci import NotInStore, OciStore, StoreError
from builder.fetch.plan import Attempt, FetchConfig, FetchedFile, Mirror, PlannedFile
from builder.fetch.progress import Progress, human
from builder.fetch.ranges import RangeClient, origin
from builder.fetch.transfer import Digests, Segment, Transfer, TransferRun

# What a file looks like as an image layer of its own: (tar format version, the bytes before its
# contents, the bytes after); None for a file that shares a layer. builder/weights/ supplies it.
Frames = Callable[[PlannedFile], "tuple[str, bytes, bytes] | None"]


@dataclass
class _Job:
    """One file on one mirror: what attempt records need."""

    item: PlannedFile
    mirror: Mirror
    received: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Source:
    """Where a transfer's bytes come from, and whether the mirror's auth may go there."""

    url: str
    headers: dict[str, str]
    same_origin: bool


class FetchEngine:
    def __init__(
        self,
        config: FetchConfig,
        token: str | None,
        cache: ContentCache,
        model: str,
        log: Callable[[str], None] = print,
        on_attempt: Callable[[Attempt], None] = lambda attempt: None,
        sleep: Callable[[float], None] = time.sleep,
        frames: Frames = lambda item: None,
        store_credentials: tuple[str, str] | None = None,
    ) -> None:
        self.config = config
        self.token = token
        self.cache = cache
        self.model = model
        self.log = log
        self.on_attempt = on_attempt
        self.sleep = sleep
        self.frames = frames
        self.store_credentials = store_credentials  # for an oci:// weights store: pull access only
        self.progress = Progress()
        self._client = RangeClient(config.connect_timeout, config.read_timeout)
        self._store: tuple[str, OciStore] | None = None

    # -- attempts and retries ----------------------------------------------------------------
    def _record(self, job: _Job, outcome: str, error: str | None = None) -> None:
        self.on_attempt(Attempt(self.model, job.item.repo_id, job.item.revision, job.item.path, job.mirror.name,
                                job.received, round(time.monotonic() - job.started, 3), outcome, error))

    def _retry(self, job: _Job, failures: int, retry: Retryable, where: str) -> None:
        """Record a failed try and wait before the next; give up after too many in a row."""
        self._record(job, "retry", str(retry))
        if failures >= self.config.attempts:
            raise Retryable(f"gave up after {failures} failures in a row: {retry}") from None
        delay = backoff(failures, retry.retry_after, self.config.backoff_base, self.config.backoff_max)
        self.log(f"retrying {job.item.dest} via {job.mirror.name} {where} in {delay:.1f}s: {retry}")
        job.started, job.received = time.monotonic(), 0
        self.sleep(delay)

    def _advance(self, job: _Job, n: int) -> None:
        with self.progress.lock:  # several range threads add to one job
            job.received += n
            self.progress.bytes += n

    # -- one file, one mirror ------------------------------------------------------------------
    def _metadata(self, job: _Job, url: str):
        """HEAD the file through huggingface_hub (size, ETag, CDN location), with our retries."""
        from huggingface_hub import get_hf_file_metadata

        failures = 0
        while True:
            try:
                return get_hf_file_metadata(url, token=self.token or False, endpoint=job.mirror.url,
                                            timeout=self.config.connect_timeout + self.config.read_timeout)
            except Exception as exc:  # noqa: BLE001 - sorted into retry or raise
                retry = classify(exc)
                if retry is None:
                    raise
                failures += 1
                self._retry(job, failures, retry, "(metadata)")

    def _frame(self, item: PlannedFile) -> tuple[str, tuple[bytes, bytes]] | None:
        framed = self.frames(item) if item.sha256 and item.size is not None else None
        return (framed[0], (framed[1], framed[2])) if framed else None

    def _download_oci(self, job: _Job) -> tuple[Path, str, int, tuple[str, int] | None]:
        """A pinned file from the registry weights store (builder/fetch/oci.py), checked like any download."""
        item, mirror = job.item, job.mirror
        if item.sha256 is None:
            raise NotInStore(f"{item.dest} is not pinned: the weights store serves files by sha256 only")
        if self._store is None or self._store[0] != mirror.url:
            self._store = (mirror.url, OciStore(mirror.url, self.store_credentials, self.config.read_timeout, tls.context()))
        try:
            chunks, size = self._store[1].open(item.sha256)
        except StoreError as exc:
            raise DownloadError(f"{self.model}: {item.dest} via {mirror.name}: {exc}") from None
        if item.size is not None and size not in (-1, item.size):
            raise ChecksumMismatch(f"{self.model}: {item.dest} via {mirror.name}: the store says {size} bytes, "
                                   f"the manifest {item.size}")
        part = self.cache.partial(item.key)
        framed = self._frame(item)
        digest, written = Digests(framed[1] if framed else None), 0
        self.progress.add(total=item.size or 0)
        try:
            with open(part, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    self._advance(job, len(chunk))
        except (OSError, StoreError) as exc:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{self.model}: {item.dest} via {mirror.name}: the transfer failed: {exc}") from None
        if written != (item.size if item.size is not None else written) or digest.hexdigest() != item.sha256:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"{self.model}: {item.dest} via {mirror.name}: sha256 mismatch: expected {item.sha256}, got "
                f"{digest.hexdigest()} ({written} bytes): the store's copy is refused"
            )
        return part, item.sha256, written, digest.layer_digest(written)

    def _download(self, job: _Job) -> tuple[Path, str, int, tuple[str, int] | None]:
        """Fetch job.item from job.mirror into the cache's partial dir; (path, sha256, size) once verified."""
        if job.mirror.url.startswith("oci://"):
            return self._download_oci(job)
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        item, mirror = job.item, job.mirror
        url = hf_hub_url(item.repo_id, item.path, repo_type=item.repo_type, revision=item.revision, endpoint=mirror.url)
        metadata = self._metadata(job, url)
        size = metadata.size if metadata.size is not None else item.size
        if size is None:
            raise DownloadError(f"{self.model}: {mirror.name} gave no size for {item.path} in {item.where}")
        if item.size is not None and size != item.size:
            raise ChecksumMismatch(
                f"{self.model}: {item.dest} from {item.where} via {mirror.name}: size mismatch: expected "
                f"{item.size} bytes, the Hub reports {size}"
            )
        etag = (metadata.etag or "").strip('"')
        if item.sha256 and len(etag) == 64 and etag != item.sha256:
            raise ChecksumMismatch(
                f"{self.model}: {item.dest} from {item.where} via {mirror.name}: sha256 mismatch: expected "
                f"{item.sha256}, the Hub's LFS oid is {etag}"
            )
        location = metadata.location or url
        same_origin = origin(location) == origin(mirror.url)
        # Auth goes to the mirror, never to the CDN a large file redirects to (a signed URL).
        headers = build_hf_headers(token=self.token if same_origin and self.token else False)
        headers["Accept-Encoding"] = "identity"
        if item.size is None:
            self.check_space(size)
        framed = self._frame(item)
        transfer = Transfer.resume_or_new(self.cache.partial(item.key), size, self.config.chunk_bytes)
        transfer.frame = framed[1] if framed else None
        resumed = sum(s.done for s in transfer.segments)
        if resumed:
            self.log(f"resuming {item.dest}: {human(resumed)} of {human(size)} already on disk")
        self.progress.add(total=size - resumed)
        for refresh in range(4):
            try:
                digest = self._run_transfer(job, transfer, _Source(location, headers, same_origin))
                break
            except NoRanges:
                self.log(f"{mirror.name} ignores byte ranges for {item.dest}: one stream from the start")
                transfer.discard()
                transfer = Transfer.resume_or_new(transfer.part, size, size + 1)
                transfer.frame = framed[1] if framed else None
            except Expired as exc:
                if refresh == 3:
                    raise DownloadError(f"{self.model}: {item.dest} via {mirror.name}: the CDN keeps refusing: {exc}") from None
                self.log(f"{item.dest}: the CDN refused the download URL ({exc}); resolving it again")
                location = self._metadata(job, url).location or url
            transfer.failed = None
        else:  # pragma: no cover - every path through the loop breaks or raises
            raise DownloadError(f"{self.model}: {item.dest}: the download did not finish")
        if item.sha256 is not None and digest != item.sha256:
            transfer.discard()
            raise CorruptTransfer(
                f"{self.model}: {item.dest} from {item.where} via {mirror.name}: sha256 mismatch: expected "
                f"{item.sha256}, got {digest}"
            )
        transfer.state_path.unlink(missing_ok=True)
        return transfer.part, digest, size, transfer.digest.layer_digest(size)

    def _run_transfer(self, job: _Job, transfer: Transfer, source: _Source) -> str:
        """Download every segment (in parallel) while a follower hashes the contiguous prefix."""
        run = TransferRun(transfer, self.config.parts,
                          lambda run, segment: self._fetch_segment(job, run, segment, source),
                          on_received=lambda n: self._advance(job, n))
        digest = run.run()
        if digest is None:
            raise DownloadError(f"{self.model}: hashing {job.item.dest} did not finish")
        return digest

    def _fetch_segment(self, job: _Job, run: TransferRun, segment: Segment, source: _Source) -> None:
        """One segment's bytes, retried from the byte reached; progress resets the failure count."""
        transfer = run.transfer
        failures = 0
        while not segment.complete and not run.stopped:
            before = segment.done
            request_headers = {**source.headers,
                               "Range": f"bytes={segment.start + segment.done}-{segment.start + segment.length - 1}"}
            if len(transfer.segments) == 1 and segment.done == 0:
                request_headers.pop("Range")  # one whole-file stream: plain GET, any server can answer it
            try:
                self._client.get(source.url, request_headers, lambda chunk: run.receive(segment, chunk))
                if run.stopped:
                    return
                if not segment.complete:
                    raise Retryable(f"connection closed after {segment.done - before} bytes")
            except HttpStatus as exc:
                if not source.same_origin and exc.status in (401, 403, 404, 410):
                    raise Expired(str(exc)) from None  # a signed CDN URL that lapsed
                raise DownloadError(
                    f"{self.model}: {job.item.path} from {job.item.where} via {job.mirror.name}: {exc}"
                ) from None
            except Exception as exc:  # noqa: BLE001 - sorted into retry or raise just below
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    raise DownloadError(
                        f"{self.model}: disk full while downloading into {self.cache.root}: free space there "
                        "(`builder cache prune`, or BUILDER_WEIGHTS_CACHE on a larger disk) and build again"
                    ) from None
                retry = classify(exc)
                if retry is None:
                    raise
                failures = 1 if segment.done > before else failures + 1  # progress resets the count
                self._retry(job, failures, retry, f"at byte {segment.start + segment.done}")

    def check_space(self, needed: int, where: Path | None = None) -> None:
        path = where or self.cache.root
        stat = os.statvfs(path)
        free = stat.f_bavail * stat.f_frsize
        if needed > free:
            raise DownloadError(
                f"{self.model}: not enough disk space in {path}: need {human(needed)}, {human(free)} free: "
                "free space (`builder cache prune`, or BUILDER_WEIGHTS_CACHE on a larger disk) and build again"
            )

    # -- one file, every mirror ----------------------------------------------------------------
    def _cached(self, item: PlannedFile) -> FetchedFile | None:
        if item.sha256 is None or not self.cache.has(item.sha256):
            return None
        if not self.cache.check(item.sha256):
            self.log(f"cache entry {item.sha256[:16]}… for {item.dest} was corrupt: fetching again")
            return None
        self.cache.touch(item.sha256)
        self.on_attempt(Attempt(self.model, item.repo_id, item.revision, item.path, "cache", 0, 0.0, "cached"))
        return FetchedFile(item.dest, item.sha256, self.cache.blob(item.sha256).stat().st_size, 0.0, False, "cache")

    def fetch_one(self, item: PlannedFile) -> FetchedFile:
        """Get item into the cache from the first mirror that serves it correctly."""
        with self.cache.locked(item.key, shared=True):
            hit = self._cached(item) if item.sha256 is None or self.cache.unchanged(item.sha256) else None
        if hit is not None:
            return hit
        errors: list[tuple[Mirror, BuilderError]] = []
        with self.cache.locked(item.key):
            hit = self._cached(item)  # another build may have fetched it while we waited
            if hit is not None:
                return hit
            for mirror in self.config.mirrors:
                fetched = self._from_mirror(item, mirror, errors)
                if fetched is not None:
                    return fetched
        raise give_up(self.model, item, errors)

    def _from_mirror(self, item: PlannedFile, mirror: Mirror, errors: list[tuple[Mirror, BuilderError]]) -> FetchedFile | None:
        """item from one mirror, or None with the mirror's error appended to errors."""
        for last_try in (False, True):
            job = _Job(item, mirror)
            self.progress.add(active=1)
            try:
                part, digest, size, layer = self._download(job)
            except NotInStore as exc:  # a miss, not a failure: no attempt recorded, the next mirror serves
                errors.append((mirror, DownloadError(f"{self.model}: {item.dest}: not in {mirror.name}'s weights store")))
                self.log(f"{item.dest}: not in {mirror.name}'s weights store ({exc}); trying the next mirror")
                return None
            except CorruptTransfer as exc:
                self._record(job, "failed", str(exc))
                if not last_try:
                    self.log(f"{item.dest}: the bytes from {mirror.name} did not match; downloading once more")
                    continue  # a corrupted transfer: once more from scratch before blaming the mirror
                errors.append((mirror, exc))
                return None
            except BuilderError as exc:
                self._record(job, "failed", str(exc))
                errors.append((mirror, exc))
                return None
            except Exception as exc:  # noqa: BLE001 - any other failure moves on to the next mirror
                error = hub_error(self.model, self.token, item, mirror, exc)
                self._record(job, "failed", str(error))
                errors.append((mirror, error))
                return None
            finally:
                self.progress.add(active=-1)
            seconds = time.monotonic() - job.started
            self._record(job, "ok")
            self.cache.insert(part, digest)
            framed = self._frame(item)
            if layer is not None and framed is not None:
                self.cache.record_layer(digest, framed[0], *layer)
            rate = f"{human(size / seconds)}/s" if seconds > 0 else "instant"
            state = "verified" if item.sha256 else f"{digest} (nothing pinned to check it against)"
            self.log(f"fetched {item.dest} from {item.where} via {mirror.name}: {human(size)} in {seconds:.1f}s "
                     f"({rate}), sha256 {state}")
            return FetchedFile(item.dest, digest, size, seconds, item.sha256 is not None, mirror.name)
        return None  # pragma: no cover - the second try returns

    # -- many files ----------------------------------------------------------------------------
    def missing_bytes(self, items: list[PlannedFile]) -> int:
        unique = {item.key: item for item in items}
        return sum(i.size or 0 for i in unique.values() if not (i.sha256 and self.cache.has(i.sha256)))

    def fetch(self, items: list[PlannedFile],
              on_fetched: Callable[[PlannedFile, FetchedFile], None] = lambda item, got: None) -> dict[str, FetchedFile]:
        """Every item verified into the cache, keyed by item.key. Raises the first failure.
        `on_fetched` hears of each file as soon as it is in the cache (its layer can go up then)."""
        unique = {item.key: item for item in items}

        def one(item: PlannedFile) -> FetchedFile:
            got = self.fetch_one(item)
            on_fetched(item, got)
            return got

        stop = threading.Event()
        threading.Thread(target=self.progress.report_every, args=(self.config.progress_seconds, self.log, stop),
                         daemon=True).start()
        try:
            with ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="file") as pool:
                futures = {key: pool.submit(one, item) for key, item in unique.items()}
            return {key: future.result() for key, future in futures.items()}
        finally:
            stop.set()
