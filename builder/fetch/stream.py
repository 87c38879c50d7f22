"""One file from a mirror straight into a sink (the registry), verified on the way: no disk.

For hosts with less disk than the weights (`builder build --assemble-only`). The file's bytes
are read in order, one request after another (a range from the byte reached when a connection
drops), hashed twice as they pass (the file's sha256, and the sha256 of the layer tar that frames
it), and handed to the sink, which sends them on in chunks. The sink is told to keep the blob
only when the file's sha256 is the pinned one; otherwise it drops what it holds, and the build
stops with one line. A mirror that fails hands over to the next at the same byte: the bytes
already sent stay, and the sha256 at the end still covers every byte.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from builder.errors import BuilderError, ChecksumMismatch, DownloadError
from builder.fetch.engine import FetchEngine, _Job
from builder.fetch.failures import HttpStatus, Retryable, classify, give_up, hub_error
from builder.fetch.plan import Mirror, PlannedFile
from builder.fetch.ranges import origin
from builder.fetch.transfer import Digests


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self, digest: str, size: int) -> None: ...
    def abort(self) -> None: ...


@dataclass(frozen=True)
class Streamed:
    sha256: str
    size: int
    layer_digest: str
    layer_size: int


def stream_file(engine: FetchEngine, item: PlannedFile, frame: tuple[bytes, bytes], sink: Sink) -> Streamed:
    """item from the first mirror that serves it (failing over at the byte reached) into sink."""
    if item.sha256 is None or item.size is None:
        raise DownloadError(f"{engine.model}: {item.dest} is not pinned: only pinned files stream to the registry")
    digests = Digests(frame)
    sink.write(frame[0])
    state = {"done": 0}
    errors: list[tuple[Mirror, BuilderError]] = []
    engine.progress.add(total=item.size, active=1)
    try:
        for mirror in engine.config.mirrors:
            if mirror.url.startswith("oci://"):
                continue  # the registry weights store serves files, not streams of this kind
            try:
                _from_mirror(engine, _Job(item, mirror), digests, sink, state)
                break
            except BuilderError as exc:
                errors.append((mirror, exc))
            except Exception as exc:  # noqa: BLE001 - any other failure moves on to the next mirror
                errors.append((mirror, hub_error(engine.model, engine.token, item, mirror, exc)))
        else:
            sink.abort()
            raise give_up(engine.model, item, errors) if errors else DownloadError(
                f"{engine.model}: {item.dest}: no mirror to stream it from (only oci:// ones are configured)")
    finally:
        engine.progress.add(active=-1)
    if digests.hexdigest() != item.sha256:
        sink.abort()
        raise ChecksumMismatch(f"{engine.model}: {item.dest} from {item.where}: sha256 mismatch: expected {item.sha256}, "
                               f"got {digests.hexdigest()}: nothing was kept in the registry")
    sink.write(frame[1])
    layer = digests.layer_digest(item.size)
    assert layer is not None
    sink.commit(*layer)
    return Streamed(item.sha256, item.size, *layer)


def _from_mirror(engine: FetchEngine, job: _Job, digests: Digests, sink: Sink, state: dict[str, int]) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    item, mirror = job.item, job.mirror
    url = hf_hub_url(item.repo_id, item.path, repo_type=item.repo_type, revision=item.revision, endpoint=mirror.url)
    metadata = engine._metadata(job, url)
    if metadata.size is not None and metadata.size != item.size:
        raise ChecksumMismatch(f"{engine.model}: {item.dest} from {item.where} via {mirror.name}: size mismatch: "
                               f"expected {item.size} bytes, the Hub reports {metadata.size}")
    etag = (metadata.etag or "").strip('"')
    if len(etag) == 64 and etag != item.sha256:
        raise ChecksumMismatch(f"{engine.model}: {item.dest} from {item.where} via {mirror.name}: sha256 mismatch: "
                               f"expected {item.sha256}, the Hub's LFS oid is {etag}")
    location = metadata.location or url
    same_origin = origin(location) == origin(mirror.url)
    headers = build_hf_headers(token=engine.token if same_origin and engine.token else False)
    headers["Accept-Encoding"] = "identity"
    failures = 0
    assert item.size is not None
    while state["done"] < item.size:
        before = state["done"]

        def on_bytes(chunk: memoryview) -> bool:
            data = bytes(chunk[: item.size - state["done"]])  # type: ignore[operator]
            digests.update(data)
            sink.write(data)
            state["done"] += len(data)
            job.received += len(data)
            engine.progress.add(received=len(data))
            return state["done"] < item.size  # type: ignore[operator]

        request = {**headers, "Range": f"bytes={state['done']}-"} if state["done"] else dict(headers)
        try:
            engine._client.get(location, request, on_bytes)
            if state["done"] < item.size:
                raise Retryable(f"connection closed after {state['done'] - before} bytes")
        except HttpStatus as exc:
            engine._record(job, "failed", str(exc))
            raise DownloadError(f"{engine.model}: {item.path} from {item.where} via {mirror.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - sorted into retry or raise
            retry = classify(exc)
            if retry is None:
                engine._record(job, "failed", str(exc))
                raise
            failures = 1 if state["done"] > before else failures + 1
            try:
                engine._retry(job, failures, retry, f"at byte {state['done']}")
            except Retryable as gave_up:
                engine._record(job, "failed", str(gave_up))
                raise DownloadError(f"{engine.model}: cannot fetch {item.path} from {item.where} via {mirror.name}: "
                                    f"{gave_up}") from None
    seconds = time.monotonic() - job.started
    engine._record(job, "ok")
    engine.log(f"streamed {item.dest} from {item.where} via {mirror.name} to the registry: {item.size} bytes in "
               f"{seconds:.1f}s, sha256 being checked")
