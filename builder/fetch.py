"""The fetch engine: every weight file, from an approved mirror, verified byte for byte.

Runs in the image's `weights` build stage (`python3 -m builder.fetch PLAN EXPORT --cache /cache`)
where only the standard library and huggingface_hub exist (this file, errors.py and __init__.py
are copied into the build context), and on the host for `builder lock`, the tests and bench/.

What huggingface_hub does here: URLs for a mirror (`hf_hub_url`), auth headers
(`build_hf_headers`), the HEAD that resolves a file (size, ETag, commit, the CDN redirect,
whether auth may follow it) and the Hub's error classes (`get_hf_file_metadata`,
`hf_raise_for_status`), and its HTTP client (`get_session`). What it lacks, and this module adds,
each for a reason:

- content verification: huggingface_hub checks a download's size, never its bytes. sha256 is
  computed while the bytes arrive (a follower thread hashes the contiguous prefix written so far,
  from the page cache), so a 24 GB file is not read a second time; the file is renamed into the
  cache only after size and hash both match.
- parallel byte ranges per large file and several files at once: one TCP stream rarely fills
  a pod's link to the Hub's CDN.
- resume across processes: each segment's progress is kept beside the partial file, so a build
  killed mid-file (OOM, a cancelled CI job) resumes where it stopped instead of starting over.
- retries with exponential backoff and full jitter on 5xx, 429 (Retry-After honoured), timeouts
  and dropped connections, counted per file and reset by progress.
- an ordered list of approved mirrors; a file that fails on one is tried on the next.
- a content-addressed cache (CACHE/v1/sha256/HEX), shared by every build and model: a blob is
  served only after its bytes hash to its name, and a blob that does not is removed.
- a free-space check before the first byte, and progress lines with bytes per second.

The export directory it leaves holds one directory per image layer:

    EXPORT/small/opt/models/NAME/...             every small file, plus symlinks to the blobs
    EXPORT/sha256-HEX/opt/weights/sha256/HEX     each large file alone, named by its content

with fixed modes and mtimes, so layers are byte-for-byte reproducible.

Each download attempt is reported through `on_attempt` (in a build: a `::builder-attempt::`
line that the host writes to its ledger). Failures end in one BuilderError line.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import email.utils
import errno
import fcntl
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from builder.errors import BuilderError, ChecksumMismatch, DownloadError

TOKEN_SECRET = Path("/run/secrets/hf_token")
CA_SECRET = Path("/run/secrets/ca_bundle")
CONFIG_SECRET = Path("/run/secrets/fetch_config")
ATTEMPT_PREFIX = "::builder-attempt::"
CACHE_PREFIX = "::builder-cache::"
OFFICIAL_HUB = "https://huggingface.co"
FIXED_MTIME_NS = 0
_CHUNK = 8 * 1024 * 1024
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Mirror:
    name: str
    url: str


@dataclass(frozen=True)
class FetchConfig:
    """Tuning and the ordered mirror list; reaches the build as a secret (not a cache key)."""

    mirrors: tuple[Mirror, ...] = (Mirror("hub", OFFICIAL_HUB),)
    concurrency: int = 4  # files at once
    parts: int = 4  # byte ranges in flight at once per large file
    chunk_bytes: int = 32 * 1024 * 1024  # a large file is fetched as ranges of this size, in order
    attempts: int = 6  # failures in a row without progress, per file and mirror
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    progress_seconds: float = 10.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FetchConfig":
        values = dict(data)
        values["mirrors"] = tuple(Mirror(m["name"], m["url"].rstrip("/")) for m in data.get("mirrors", []))
        if not values["mirrors"]:
            raise DownloadError("the fetch configuration lists no mirror")
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mirrors"] = [asdict(m) for m in self.mirrors]
        return data


@dataclass(frozen=True)
class PlannedFile:
    repo_id: str
    repo_type: str
    revision: str
    path: str
    dest: str
    sha256: str | None
    size: int | None
    layer: str

    @property
    def where(self) -> str:
        return f"{self.repo_id}@{self.revision[:12]}"

    @property
    def key(self) -> str:
        """Cache key while downloading: the sha256 when pinned, else one derived from the location."""
        if self.sha256:
            return self.sha256
        return "u-" + hashlib.sha1(f"{self.repo_type}/{self.repo_id}@{self.revision}/{self.path}".encode()).hexdigest()


@dataclass
class Attempt:
    """One try at one file on one mirror, for the download ledger."""

    model: str
    repo_id: str
    revision: str
    path: str
    mirror: str
    bytes: int
    seconds: float
    outcome: str  # ok | cached | retry | failed
    error: str | None = None


@dataclass(frozen=True)
class FetchedFile:
    dest: str
    sha256: str
    size: int
    seconds: float
    verified: bool
    source: str  # "cache" or the mirror's name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_token(secret: Path | None = None) -> str | None:
    """The Hub token from the BuildKit secret mount (or a file), if there is one."""
    try:
        token = (secret or TOKEN_SECRET).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def _one_line(text: object, limit: int = 240) -> str:
    return " ".join(str(text).split())[:limit]


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


# -- the content-addressed cache -------------------------------------------------------------
class ContentCache:
    """CACHE/v1/sha256/HEX holds verified blobs; partial/ holds downloads in progress with their
    resume state; locks/ holds one flock file per key, so two builds sharing the cache (a
    BuildKit cache mount with sharing=shared) never write the same file at once."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "v1"
        for sub in ("sha256", "partial", "locks", "used"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def blob(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256

    def partial(self, key: str) -> Path:
        return self.root / "partial" / f"{key}.part"

    @contextlib.contextmanager
    def locked(self, key: str, shared: bool = False, wait: bool = True) -> Iterator[bool]:
        with open(self.root / "locks" / key, "a+") as handle:
            flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
            try:
                fcntl.flock(handle, flags)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def has(self, sha256: str) -> bool:
        return self.blob(sha256).is_file()

    def insert(self, part: Path, sha256: str) -> Path:
        target = self.blob(sha256)
        os.chmod(part, 0o444)
        os.replace(part, target)
        self.touch(sha256)
        return target

    def touch(self, sha256: str) -> None:
        (self.root / "used" / sha256).touch()

    def evict(self, sha256: str) -> None:
        for path in (self.blob(sha256), self.root / "used" / sha256):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def entries(self) -> list[dict[str, Any]]:
        rows = []
        for blob in sorted((self.root / "sha256").iterdir()):
            used = self.root / "used" / blob.name
            stat = blob.stat()
            last = used.stat().st_mtime if used.exists() else stat.st_mtime
            rows.append({"sha256": blob.name, "size": stat.st_size, "last_used": last})
        return rows

    def partials(self) -> list[dict[str, Any]]:
        return [{"key": p.name[:-5], "size": p.stat().st_size} for p in sorted((self.root / "partial").glob("*.part"))]


# -- one file, one mirror ------------------------------------------------------------------
class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _NoRanges(Exception):
    """The server ignored a Range header: fall back to one stream from byte 0."""


class _CorruptTransfer(ChecksumMismatch):
    """The downloaded bytes did not hash to the pinned sha256 (as opposed to metadata that
    already disagreed before any download). Reported as a ChecksumMismatch."""


@dataclass
class _Job:
    """One file on one mirror: what attempt records need."""

    item: PlannedFile
    mirror: Mirror
    received: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class _Segment:
    start: int
    length: int
    done: int = 0

    @property
    def complete(self) -> bool:
        return self.done >= self.length


@dataclass
class _Transfer:
    """A partial file and its segments; `state` persists beside it for resuming."""

    part: Path
    size: int
    segments: list[_Segment]
    lock: threading.Condition = field(default_factory=threading.Condition)
    failed: BaseException | None = None
    saved_at: float = 0.0
    first_open: int = 0  # segments before this index are complete
    digest: Any = field(default_factory=hashlib.sha256)
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
    def resume_or_new(cls, part: Path, size: int, chunk: int) -> "_Transfer":
        """The saved transfer for part if it matches size, else a fresh one cut into chunks.

        Chunks, not one range per connection: the workers take them in file order, so the bytes
        written stay nearly contiguous and the sha256 follower hashes right behind them instead
        of waiting for the first quarter of the file to finish (and then hashing the rest)."""
        state_path = part.with_suffix(".json")
        if part.exists() and state_path.exists():
            try:
                state = json.loads(state_path.read_text())
                if state["size"] == size and part.stat().st_size == size:
                    segments = [_Segment(*row) for row in state["segments"]]
                    return cls(part, size, segments)
            except (ValueError, KeyError, TypeError, OSError):
                pass
        step = max(chunk, 1)
        segments = [_Segment(start, min(step, size - start)) for start in range(0, size, step)] or [_Segment(0, 0)]
        with part.open("wb") as fh:
            fh.truncate(size)
        transfer = cls(part, size, segments)
        transfer.save(force=True)
        return transfer

    def discard(self) -> None:
        for path in (self.part, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class _Expired(Exception):
    """A CDN refused a signed URL mid-download (it expired): resolve the file again and resume."""


class _RangeClient:
    """Byte-range GETs over the standard library's http.client, one keep-alive connection per
    origin and thread. The body is read with readinto into one reused buffer and written with
    pwrite: on these machines that costs a fraction of the CPU per byte of an httpx stream
    (bench/fetch_speed.py), and on a fast link CPU is what limits a download. huggingface_hub
    still does the HEAD, the auth decision and the error mapping; this only moves bytes.
    HTTPS_PROXY/HTTP_PROXY/NO_PROXY are honoured (CONNECT tunnel for https)."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._local = threading.local()

    def _connection(self, url: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        pool = self._local.__dict__.setdefault("pool", {})
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.hostname, port)
        conn = pool.get(key)
        if conn is not None:
            return conn
        proxy = None if urllib.request.proxy_bypass(url.hostname or "") else urllib.request.getproxies().get(url.scheme)
        target_host, target_port, tunnel_headers = url.hostname, port, {}
        if proxy:
            parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            target_host, target_port = parsed.hostname, parsed.port or 80
            if parsed.username:
                credentials = f"{urllib.parse.unquote(parsed.username)}:{urllib.parse.unquote(parsed.password or '')}"
                tunnel_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(target_host, target_port, timeout=self.connect_timeout,
                                               context=ssl.create_default_context())
            if proxy:
                conn.set_tunnel(url.hostname, port, headers=tunnel_headers)
        else:
            conn = http.client.HTTPConnection(target_host, target_port, timeout=self.connect_timeout)
        conn.connect()
        conn.sock.settimeout(self.read_timeout)
        conn._builder_absolute = bool(proxy) and url.scheme == "http"  # plain http through a proxy: absolute URI
        pool[key] = conn
        return conn

    def _drop(self, url: urllib.parse.SplitResult) -> None:
        pool = self._local.__dict__.get("pool", {})
        key = (url.scheme, url.hostname, url.port or (443 if url.scheme == "https" else 80))
        conn = pool.pop(key, None)
        if conn is not None:
            conn.close()

    def get(self, url: str, headers: dict[str, str], on_bytes: Callable[[memoryview], bool]) -> None:
        """GET url and hand the body to on_bytes chunk by chunk (it returns False to stop)."""
        parsed = urllib.parse.urlsplit(url)
        path = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
        conn = self._connection(parsed)
        keep = False
        try:
            conn.request("GET", url if getattr(conn, "_builder_absolute", False) else path, headers=headers)
            response = conn.getresponse()
            status = response.status
            if status >= 300:
                detail = response.headers.get("X-Error-Message") or response.reason
                code = response.headers.get("X-Error-Code")
                response.read()
                keep = not response.will_close
                if status in _RETRY_STATUS:
                    raise _Retryable(f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
                raise _HttpStatus(status, code, detail)
            if status == 200 and "Range" in headers and not headers["Range"].startswith("bytes=0-"):
                raise _NoRanges()
            if status == 206:
                asked = headers.get("Range", "bytes=0-").removeprefix("bytes=").split("-")[0]
                got = (response.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0]
                if got != asked:  # bytes from elsewhere in the file would be written at the wrong offset
                    raise _Retryable(f"asked for bytes from {asked}, the server sent from {got or '?'}")
            buffer = memoryview(bytearray(1024 * 1024))
            while True:
                n = response.readinto(buffer)
                if not n:
                    break
                if not on_bytes(buffer[:n]):
                    # Stopped: reusable only when that was the body's last byte.
                    keep = response.length == 0 and not response.will_close
                    return
            keep = not response.will_close
        finally:
            if not keep:
                self._drop(parsed)


class _HttpStatus(Exception):
    def __init__(self, status: int, code: str | None, detail: str) -> None:
        super().__init__(f"HTTP {status}" + (f" {code}" if code else "") + f": {detail}")
        self.status = status


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port): two URLs share credentials only when all three match."""
    import httpx2

    parsed = httpx2.URL(url)
    return parsed.scheme, parsed.host, parsed.port or {"http": 80, "https": 443}.get(parsed.scheme, 0)


def _retry_after(value: str | None) -> float | None:
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
    ) -> None:
        self.config = config
        self.token = token
        self.cache = cache
        self.model = model
        self.log = log
        self.on_attempt = on_attempt
        self.sleep = sleep
        self._progress = {"bytes": 0, "total": 0, "active": 0}
        self._progress_lock = threading.Lock()
        self._client = _RangeClient(config.connect_timeout, config.read_timeout)

    # -- errors ------------------------------------------------------------------------------
    def _hub_error(self, job: _Job, exc: Exception) -> BuilderError:
        """A huggingface_hub failure as one line that says what to do."""
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        item, mirror = job.item, job.mirror
        via = f"via {mirror.name} ({mirror.url})"
        page = f"{mirror.url}/{item.repo_id}"
        if isinstance(exc, GatedRepoError):
            if self.token is None:
                return DownloadError(
                    f"{self.model}: {item.repo_id} {via} is gated and no token was passed: accept its licence at "
                    f"{page} and set HF_TOKEN to a token of that account"
                )
            return DownloadError(
                f"{self.model}: {item.repo_id} {via} is gated and the token passed has no access: accept the "
                f"licence at {page} with the account whose token you pass in HF_TOKEN"
            )
        if isinstance(exc, RevisionNotFoundError):
            return DownloadError(f"{self.model}: revision {item.revision} not found in {item.repo_id} {via}: check the source's revision")
        if isinstance(exc, RepositoryNotFoundError):
            return DownloadError(
                f"{self.model}: repository {item.repo_id} not found {via} (or it is private and the token has no "
                f"access): check repo_id and HF_TOKEN"
            )
        if isinstance(exc, EntryNotFoundError):
            return DownloadError(f"{self.model}: {item.path} not found in {item.where} {via}: check the artifact's path")
        response = getattr(exc, "response", None)
        if isinstance(exc, HfHubHTTPError) and response is not None and response.status_code in (401, 403):
            return DownloadError(
                f"{self.model}: {mirror.name} ({mirror.url}) refused the token ({response.status_code}) for "
                f"{item.repo_id}: check HF_TOKEN"
            )
        retry = self._classify(exc)
        detail = str(retry) if retry is not None else _one_line(exc)
        return DownloadError(f"{self.model}: cannot fetch {item.path} from {item.where} {via}: {detail}")

    def _classify(self, exc: BaseException) -> _Retryable | None:
        """A transient failure worth retrying, or None."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        if isinstance(exc, _Retryable):
            return exc
        if isinstance(exc, HfHubHTTPError):  # before OSError: HfHubHTTPError is one
            response = exc.response
            if response is not None and response.status_code in _RETRY_STATUS:
                return _Retryable(f"HTTP {response.status_code}", _retry_after(response.headers.get("Retry-After")))
            return None
        if isinstance(exc, ssl.SSLCertVerificationError):
            return None  # not transient: the CA bundle is wrong (see --ca-bundle)
        if isinstance(exc, (httpx2.TransportError, http.client.HTTPException, OSError)):
            name = "ReadTimeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return _Retryable(f"{name}: {_one_line(exc, 120)}")
        return None

    def _backoff(self, failures: int, hint: float | None) -> float:
        if hint is not None:
            return min(hint, self.config.backoff_max * 4)
        ceiling = min(self.config.backoff_max, self.config.backoff_base * 2 ** (failures - 1))
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not cryptography

    def _retry(self, job: _Job, failures: int, retry: _Retryable, where: str) -> None:
        """Record a failed try and wait before the next; give up after too many in a row."""
        self._record(job, "retry", str(retry))
        if failures >= self.config.attempts:
            raise _Retryable(f"gave up after {failures} failures in a row: {retry}") from None
        delay = self._backoff(failures, retry.retry_after)
        self.log(f"retrying {job.item.dest} via {job.mirror.name} {where} in {delay:.1f}s: {retry}")
        job.started, job.received = time.monotonic(), 0
        self.sleep(delay)

    def _record(self, job: _Job, outcome: str, error: str | None = None) -> None:
        self.on_attempt(Attempt(self.model, job.item.repo_id, job.item.revision, job.item.path, job.mirror.name,
                                job.received, round(time.monotonic() - job.started, 3), outcome, error))

    # -- progress ----------------------------------------------------------------------------
    def _advance(self, job: _Job, n: int) -> None:
        with self._progress_lock:  # several range threads add to one job
            job.received += n
            self._progress["bytes"] += n

    def _reporter(self, stop: threading.Event) -> None:
        started = last_time = time.monotonic()
        last_bytes = 0
        while not stop.wait(self.config.progress_seconds):
            with self._progress_lock:
                done, total, active = self._progress["bytes"], self._progress["total"], self._progress["active"]
            now = time.monotonic()
            rate = (done - last_bytes) / max(now - last_time, 1e-6)
            last_bytes, last_time = done, now
            share = f" of {_human(total)} ({100 * done / total:.0f}%)" if total else ""
            self.log(f"progress: {_human(done)}{share}, {_human(rate)}/s now, "
                     f"{_human(done / max(now - started, 1e-6))}/s average, {active} file(s) active")

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
                retry = self._classify(exc)
                if retry is None:
                    raise
                failures += 1
                self._retry(job, failures, retry, "(metadata)")

    def _download(self, job: _Job) -> tuple[Path, str, int]:
        """Fetch job.item from job.mirror into the cache's partial dir; (path, sha256, size) once verified."""
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
        same_origin = _origin(location) == _origin(mirror.url)
        # Auth goes to the mirror, never to the CDN a large file redirects to (a signed URL).
        headers = build_hf_headers(token=self.token if same_origin and self.token else False)
        headers["Accept-Encoding"] = "identity"
        if item.size is None:
            self.check_space(size)
        transfer = _Transfer.resume_or_new(self.cache.partial(item.key), size, self.config.chunk_bytes)
        resumed = sum(s.done for s in transfer.segments)
        if resumed:
            self.log(f"resuming {item.dest}: {_human(resumed)} of {_human(size)} already on disk")
        with self._progress_lock:
            self._progress["total"] += size - resumed
        for refresh in range(4):
            try:
                digest = self._run_transfer(job, transfer, location, headers, same_origin)
                break
            except _NoRanges:
                self.log(f"{mirror.name} ignores byte ranges for {item.dest}: one stream from the start")
                transfer.discard()
                transfer = _Transfer.resume_or_new(transfer.part, size, size + 1)
            except _Expired as exc:
                if refresh == 3:
                    raise DownloadError(f"{self.model}: {item.dest} via {mirror.name}: the CDN keeps refusing: {exc}") from None
                self.log(f"{item.dest}: the CDN refused the download URL ({exc}); resolving it again")
                location = self._metadata(job, url).location or url
            transfer.failed = None
        else:  # pragma: no cover - every path through the loop breaks or raises
            raise DownloadError(f"{self.model}: {item.dest}: the download did not finish")
        if item.sha256 is not None and digest != item.sha256:
            transfer.discard()
            raise _CorruptTransfer(
                f"{self.model}: {item.dest} from {item.where} via {mirror.name}: sha256 mismatch: expected "
                f"{item.sha256}, got {digest}"
            )
        transfer.state_path.unlink(missing_ok=True)
        return transfer.part, digest, size

    def _run_transfer(self, job: _Job, transfer: _Transfer, url: str, headers: dict[str, str], same_origin: bool) -> str:
        """Download every segment (in parallel) while a follower hashes the contiguous prefix."""
        fd = os.open(transfer.part, os.O_RDWR)
        try:
            transfer.digest, transfer.hashed = hashlib.sha256(), 0
            hashed = threading.Event()

            def follow() -> None:
                """Hash whatever the writers could not hash in order (out-of-order ranges, a
                resumed file's existing bytes), reading it back from the page cache."""
                while True:
                    with transfer.lock:
                        while transfer.frontier() <= transfer.hashed < transfer.size and transfer.failed is None:
                            transfer.lock.wait(0.5)
                        if transfer.failed is not None:
                            return
                        end = transfer.frontier()
                    with transfer.hash_lock:
                        while transfer.hashed < end:
                            chunk = os.pread(fd, min(_CHUNK, end - transfer.hashed), transfer.hashed)
                            transfer.digest.update(chunk)
                            transfer.hashed += len(chunk)
                        if transfer.hashed >= transfer.size:
                            hashed.set()
                            return

            pending = collections.deque(s for s in transfer.segments if not s.complete)

            def worker() -> None:
                while True:
                    with transfer.lock:
                        if transfer.failed is not None or not pending:
                            return
                        segment = pending.popleft()
                    try:
                        self._run_segment(job, transfer, segment, fd, url, headers, same_origin)
                    except BaseException as exc:
                        with transfer.lock:  # stop the other ranges and the hasher at once
                            transfer.failed = transfer.failed or exc
                            transfer.lock.notify_all()
                        raise

            hasher = threading.Thread(target=follow, name="sha256-follower", daemon=True)
            hasher.start()
            try:
                workers = min(self.config.parts, len(pending))
                if workers <= 1:
                    worker()
                else:
                    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="range") as pool:
                        futures = [pool.submit(worker) for _ in range(workers)]
                    for future in futures:
                        future.result()
            finally:
                transfer.save(force=True)
                hasher.join()
            if not hashed.is_set():
                raise DownloadError(f"{self.model}: hashing {job.item.dest} did not finish")
            os.fsync(fd)
            return transfer.digest.hexdigest()
        finally:
            os.close(fd)

    def _run_segment(self, job: _Job, transfer: _Transfer, segment: _Segment, fd: int, url: str,
                     headers: dict[str, str], same_origin: bool) -> None:
        failures = 0
        while not segment.complete and transfer.failed is None:
            before = segment.done
            request_headers = {**headers, "Range": f"bytes={segment.start + segment.done}-{segment.start + segment.length - 1}"}
            if len(transfer.segments) == 1 and segment.done == 0:
                request_headers.pop("Range")  # one whole-file stream: plain GET, any server can answer it

            def on_bytes(chunk: memoryview) -> bool:
                if transfer.failed is not None:
                    return False
                chunk = chunk[: segment.length - segment.done]
                offset = segment.start + segment.done
                self._write(fd, chunk, offset)
                with transfer.lock:
                    segment.done += len(chunk)
                transfer.hash_in_order(offset, chunk)
                with transfer.lock:
                    transfer.lock.notify_all()
                self._advance(job, len(chunk))
                transfer.save()
                return not segment.complete

            try:
                self._client.get(url, request_headers, on_bytes)
                if transfer.failed is not None:
                    return
                if not segment.complete:
                    raise _Retryable(f"connection closed after {segment.done - before} bytes")
            except _HttpStatus as exc:
                if not same_origin and exc.status in (401, 403, 404, 410):
                    raise _Expired(str(exc)) from None  # a signed CDN URL that lapsed
                raise DownloadError(
                    f"{self.model}: {job.item.path} from {job.item.where} via {job.mirror.name}: {exc}"
                ) from None
            except Exception as exc:  # noqa: BLE001 - sorted into retry or raise just below
                retry = self._classify(exc)
                if retry is None:
                    raise
                failures = 1 if segment.done > before else failures + 1  # progress resets the count
                self._retry(job, failures, retry, f"at byte {segment.start + segment.done}")

    def _write(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.pwrite(fd, view, offset)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DownloadError(
                        f"{self.model}: disk full while downloading into {self.cache.root}: free space where Docker "
                        "keeps its build data (or run `builder cache prune`) and build again"
                    ) from None
                raise
            view = view[written:]
            offset += written

    def check_space(self, needed: int, where: Path | None = None) -> None:
        path = where or self.cache.root
        stat = os.statvfs(path)
        free = stat.f_bavail * stat.f_frsize
        if needed > free:
            raise DownloadError(
                f"{self.model}: not enough disk space in {path}: need {_human(needed)}, {_human(free)} free: "
                "free space (docker builder prune, or `builder cache prune`) and build again"
            )

    # -- one file, every mirror ----------------------------------------------------------------
    def _cached(self, item: PlannedFile) -> FetchedFile | None:
        if item.sha256 is None or not self.cache.has(item.sha256):
            return None
        self.cache.touch(item.sha256)
        self.on_attempt(Attempt(self.model, item.repo_id, item.revision, item.path, "cache", 0, 0.0, "cached"))
        return FetchedFile(item.dest, item.sha256, self.cache.blob(item.sha256).stat().st_size, 0.0, False, "cache")

    def fetch_one(self, item: PlannedFile) -> FetchedFile:
        """Get item into the cache from the first mirror that serves it correctly."""
        with self.cache.locked(item.key, shared=True):
            hit = self._cached(item)
        if hit is not None:
            return hit
        errors: list[tuple[Mirror, BuilderError]] = []
        with self.cache.locked(item.key):
            hit = self._cached(item)  # another build may have fetched it while we waited
            if hit is not None:
                return hit
            for mirror in self.config.mirrors:
                for last_try in (False, True):
                    job = _Job(item, mirror)
                    with self._progress_lock:
                        self._progress["active"] += 1
                    try:
                        part, digest, size = self._download(job)
                    except _CorruptTransfer as exc:
                        self._record(job, "failed", str(exc))
                        if not last_try:
                            self.log(f"{item.dest}: the bytes from {mirror.name} did not match; downloading once more")
                            continue  # a corrupted transfer: once more from scratch before blaming the mirror
                        errors.append((mirror, exc))
                        break
                    except BuilderError as exc:
                        self._record(job, "failed", str(exc))
                        errors.append((mirror, exc))
                        break
                    except Exception as exc:  # noqa: BLE001 - any other failure moves on to the next mirror
                        error = self._hub_error(job, exc)
                        self._record(job, "failed", str(error))
                        errors.append((mirror, error))
                        break
                    finally:
                        with self._progress_lock:
                            self._progress["active"] -= 1
                    seconds = time.monotonic() - job.started
                    self._record(job, "ok")
                    self.cache.insert(part, digest)
                    rate = f"{_human(size / seconds)}/s" if seconds > 0 else "instant"
                    state = "verified" if item.sha256 else f"{digest} (nothing pinned to check it against)"
                    self.log(f"fetched {item.dest} from {item.where} via {mirror.name}: {_human(size)} in {seconds:.1f}s "
                             f"({rate}), sha256 {state}")
                    return FetchedFile(item.dest, digest, size, seconds, item.sha256 is not None, mirror.name)
        raise self._give_up(item, errors)

    def _give_up(self, item: PlannedFile, errors: list[tuple[Mirror, BuilderError]]) -> BuilderError:
        if len(errors) == 1:
            return errors[0][1]
        summary = "; ".join(f"{m.name}: {_one_line(str(e).split(': ', 1)[-1], 200)}" for m, e in errors)
        kinds = {ChecksumMismatch if isinstance(e, ChecksumMismatch) else DownloadError for _, e in errors}
        cls = kinds.pop() if len(kinds) == 1 else DownloadError
        return cls(f"{self.model}: {item.dest} from {item.where}: all {len(errors)} mirrors failed: {summary}")

    # -- many files ----------------------------------------------------------------------------
    def missing_bytes(self, items: list[PlannedFile]) -> int:
        unique = {item.key: item for item in items}
        return sum(i.size or 0 for i in unique.values() if not (i.sha256 and self.cache.has(i.sha256)))

    def fetch(self, items: list[PlannedFile]) -> dict[str, FetchedFile]:
        """Every item verified into the cache, keyed by item.key. Raises the first failure."""
        unique = {item.key: item for item in items}
        stop = threading.Event()
        threading.Thread(target=self._reporter, args=(stop,), daemon=True).start()
        try:
            with ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="file") as pool:
                futures = {key: pool.submit(self.fetch_one, item) for key, item in unique.items()}
            return {key: future.result() for key, future in futures.items()}
        finally:
            stop.set()


# -- export ---------------------------------------------------------------------------------
def _copy_verified(cache: ContentCache, sha256: str, target: Path, verify: bool) -> bool:
    """Copy a cache blob to target; when verify, hash while copying. False if the blob is corrupt."""
    target.parent.mkdir(parents=True, exist_ok=True)
    source = cache.blob(sha256)
    if not verify:
        shutil.copyfile(source, target)
        return True
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != sha256:
        target.unlink()
        return False
    return True


def _fix_metadata(root: Path) -> None:
    """Fixed modes and mtimes everywhere under root, so a layer's bytes depend on content only."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            path = Path(dirpath, name)
            if path.is_symlink():
                os.utime(path, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS), follow_symlinks=False)
                continue
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
            os.utime(path, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))
    os.chmod(root, 0o755)
    os.utime(root, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))


def fetch_plan(plan: dict, export: Path, engine: FetchEngine) -> list[FetchedFile]:
    """Fetch every file of the plan through the cache and lay the layers out under export."""
    model_dir = PurePosixPath(plan["model_dir"])
    blob_dir = PurePosixPath(plan["blob_dir"])
    items = [PlannedFile(**entry) for entry in plan["files"]]
    export.mkdir(parents=True, exist_ok=True)
    # Free space for the downloads (into the cache) and the copy out (into the export), before any byte.
    download, copy = engine.missing_bytes(items), sum(i.size or 0 for i in items)
    if os.stat(engine.cache.root).st_dev == os.stat(export).st_dev:
        engine.check_space(download + copy, export)
    else:
        engine.check_space(download)
        engine.check_space(copy, export)
    fetched = engine.fetch(items)
    placed: list[FetchedFile] = []
    cache = engine.cache
    for item in items:
        result = fetched[item.key]
        blob_target = export / item.layer / blob_dir.relative_to("/") / result.sha256
        in_model = export / "small" / model_dir.relative_to("/") / item.dest
        target = in_model if item.layer == "small" else blob_target
        for _ in range(2):
            # A blob from an earlier build is hashed while it is copied out: a cache entry whose
            # bytes no longer match its name is never served.
            with cache.locked(result.sha256, shared=True):
                try:
                    copied = target.exists() or _copy_verified(cache, result.sha256, target,
                                                               verify=result.source == "cache")
                except FileNotFoundError:  # pruned between the fetch and now
                    copied = False
            if copied:
                break
            with cache.locked(result.sha256):
                cache.evict(result.sha256)
            engine.log(f"cache entry {result.sha256[:16]}… for {item.dest} was corrupt or gone: fetching again")
            result = engine.fetch_one(item)
        else:
            raise DownloadError(f"{engine.model}: {item.dest}: the cache keeps returning corrupt bytes: check the disk")
        if item.layer != "small":
            in_model.parent.mkdir(parents=True, exist_ok=True)
            in_model.symlink_to(os.path.relpath(blob_dir / result.sha256, (model_dir / item.dest).parent))
        placed.append(result)
    for layer_dir in export.iterdir():
        _fix_metadata(layer_dir)
    return placed


# -- command line (the build stage, the host, the cache tool) ---------------------------------
def _load_config(path: Path | None) -> FetchConfig:
    source = path if path is not None else (CONFIG_SECRET if CONFIG_SECRET.exists() else None)
    if source is None:
        endpoint = os.environ.get("HF_ENDPOINT", OFFICIAL_HUB).rstrip("/")
        return FetchConfig(mirrors=(Mirror("hub" if endpoint == OFFICIAL_HUB else "endpoint", endpoint),))
    return FetchConfig.from_json(json.loads(source.read_text(encoding="utf-8")))


_OUTPUT = threading.Lock()


def _line(text: str) -> None:
    """One whole line per write, under a lock: lines from the download threads never splice, so
    every `::builder-attempt::` line reaches the host's ledger intact."""
    with _OUTPUT:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def _emit_attempt(attempt: Attempt) -> None:
    _line(ATTEMPT_PREFIX + json.dumps(asdict(attempt), sort_keys=True))


_BUILDKIT_PREFIX = re.compile(r"^(?:#\d+\s+\d+(?:\.\d+)?\s+)?")


def parse_marker(line: str, prefix: str) -> dict[str, Any] | None:
    """The JSON a `prefix` line carries out of a build step (after BuildKit's "#N 1.234 "), if any."""
    rest = line[_BUILDKIT_PREFIX.match(line).end():]
    if not rest.startswith(prefix):
        return None
    try:
        return json.loads(rest[len(prefix):])
    except ValueError:
        return None


def parse_attempt(line: str) -> Attempt | None:
    data = parse_marker(line, ATTEMPT_PREFIX)
    try:
        return Attempt(**data) if data is not None else None
    except TypeError:
        return None


def _cache_command(args: argparse.Namespace) -> int:
    cache = ContentCache(args.cache)
    if args.cache_command == "ls":
        for row in cache.entries():
            print(CACHE_PREFIX + json.dumps({"kind": "blob", **row}), flush=True)
        for row in cache.partials():
            print(CACHE_PREFIX + json.dumps({"kind": "partial", **row}), flush=True)
        return 0
    if args.cache_command == "verify":
        bad = 0
        for row in cache.entries():
            with cache.locked(row["sha256"]):
                ok = sha256_of(cache.blob(row["sha256"])) == row["sha256"]
                if not ok:
                    cache.evict(row["sha256"])
                    bad += 1
            print(CACHE_PREFIX + json.dumps({"kind": "verified", "sha256": row["sha256"], "ok": ok}), flush=True)
        print(f"verified {len(cache.entries()) + bad} blobs, removed {bad} corrupt", flush=True)
        return 0
    keep = set(args.keep or ())
    if args.keep_file is not None:
        keep |= set(args.keep_file.read_text(encoding="utf-8").split())
    now = time.time()
    rows = sorted(cache.entries(), key=lambda r: r["last_used"])
    total = sum(r["size"] for r in rows)
    for row in rows:
        if row["sha256"] in keep:
            continue
        old = args.older_than is not None and now - row["last_used"] > args.older_than * 86400
        over = args.max_bytes is not None and total > args.max_bytes
        if not (args.all or old or over or args.unreferenced):
            continue
        with cache.locked(row["sha256"], wait=False) as got:
            if not got:
                continue  # a build is using it right now
            if not args.dry_run:
                cache.evict(row["sha256"])
            total -= row["size"]
        print(CACHE_PREFIX + json.dumps({"kind": "removed", "dry_run": args.dry_run, **row}), flush=True)
    if args.partials and not args.dry_run:
        for part in (cache.root / "partial").glob("*.part"):
            key = part.name[: -len(".part")]
            with cache.locked(key, wait=False) as got:
                if not got:
                    continue  # a build is downloading it right now
                for path in (part, part.with_suffix(".json")):
                    path.unlink(missing_ok=True)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m builder.fetch")
    if argv[:1] == ["cache"]:
        sub = parser.add_subparsers(dest="cache_command", required=True)
        for name in ("ls", "verify", "prune"):
            cmd = sub.add_parser(name)
            cmd.add_argument("cache", type=Path)
            if name == "prune":
                cmd.add_argument("--all", action="store_true")
                cmd.add_argument("--unreferenced", action="store_true")
                cmd.add_argument("--keep", nargs="*")
                cmd.add_argument("--keep-file", type=Path)
                cmd.add_argument("--older-than", type=float)
                cmd.add_argument("--max-bytes", type=int)
                cmd.add_argument("--partials", action="store_true")
                cmd.add_argument("--dry-run", action="store_true")
        return _cache_command(parser.parse_args(argv[1:]))
    parser.add_argument("plan", type=Path)
    parser.add_argument("export", type=Path)
    parser.add_argument("--cache", type=Path, required=True, help="content-addressed cache directory")
    parser.add_argument("--config", type=Path, help="fetch configuration JSON (default: the fetch_config secret)")
    parser.add_argument("--token-file", type=Path, help="Hub token file (default: the hf_token secret)")
    args = parser.parse_args(argv)
    if CA_SECRET.exists():  # a corporate CA, handed in as a secret, never baked in
        for var in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            os.environ[var] = str(CA_SECRET)
    plan = json.loads(args.plan.read_text(encoding="utf-8"))
    try:
        engine = FetchEngine(_load_config(args.config), read_token(args.token_file), ContentCache(args.cache),
                             plan["model"], log=_line, on_attempt=_emit_attempt)
        files = fetch_plan(plan, args.export, engine)
    except BuilderError as exc:
        print(exc.marker(), file=sys.stderr, flush=True)
        return 1
    downloaded = sum(f.size for f in files if f.source != "cache")
    print(f"fetched {len(files)} files, {sum(f.size for f in files)} bytes, for {plan['model']} "
          f"({downloaded} bytes downloaded, the rest from the cache)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
