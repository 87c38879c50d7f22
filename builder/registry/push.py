"""The builder's own push: weights as uncompressed layers, several blobs at once, nothing sent twice.

The Docker engine gzips every layer on one core before it uploads it; weights do not compress,
so for them that is pure cost. Here each weights layer (a `COPY /export/sha256-<file>/` from the
weights stage) goes to the registry as an uncompressed OCI layer, whose blob digest is its diff id:
known before a byte is read, so a registry that has it already (HEAD) or holds it in another
repository (a cross-repository mount) costs one request. The other layers are gzipped
(deterministically, so the same layer gives the same blob; the pairing is remembered in the cache
beside the ledger so a later push can skip them unread). The config blob is the engine's own,
byte for byte, so the image id the smoke ran on is the image the registry holds.

Large blobs go up in chunks (PATCH, honouring OCI-Chunk-Min-Length), each chunk's upload session
saved on disk, so a stopped push goes on where it stopped: finished blobs are found by HEAD, a
blob in flight resumes at the last chunk the registry acknowledged. Smaller blobs go in one
streamed PUT. The manifest goes last, and is read back by digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import RegistryError
from builder.registry.client import OCI_MANIFEST, RegistryClient, sha256
from builder.registry.layers import BLOCK, EngineLayers, LayersUnavailable, LayerTar
from builder.registry.upload import MIB, BlobUploads, gzip_stream

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# How BuildKit records `COPY --from=weights /export/sha256-<file>/ /` in the image history (the
# stage name appears in some versions, not in the engine's own BuildKit of Docker 20.10).
_WEIGHTS_LAYER = re.compile(r"^COPY (?:--from=weights )?/export/sha256-[0-9a-f]{64}/ / ")


@dataclass(frozen=True)
class PushSettings:
    parallel: int = 4  # blobs in flight at once
    chunk_bytes: int = 64 * MIB  # blobs larger than this go up in chunks of this size (resumable)
    gzip_level: int = 3
    gzip_threads: int = max(1, min(4, os.cpu_count() or 1))
    max_layer_bytes: int | None = None  # the registry's largest layer (GHCR: 10 GB)


class PushStopped(RegistryError):
    """The push was asked to stop; what the registry acknowledged is kept for the next run."""

    exit_code = 130


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


@dataclass
class _Blob:
    media_type: str
    layer: LayerTar | None = None
    data: bytes | None = None
    digest: str | None = None
    size: int | None = None
    weights: bool = False
    done: int = 0


@dataclass(frozen=True)
class PushProgress:
    """What the push has done so far, for a progress bar or a log line."""

    done: int
    total: int
    blobs_done: int
    blobs: int
    stats: PushStats = field(repr=False)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "builder" / "push"


class _State:
    """What earlier pushes learnt, on disk: gzip digests of layers, where blobs live, open uploads."""

    def __init__(self, root: Path, host: str) -> None:
        self.root = root
        self.host = host
        self.lock = threading.Lock()
        self.index_file = root / "blobs.json"
        try:
            self.index: dict[str, Any] = json.loads(self.index_file.read_text())
        except (OSError, ValueError):
            self.index = {}
        self.index.setdefault("gzip", {})
        self.index.setdefault("where", {})

    def _save_index(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.index_file.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(self.index, sort_keys=True))
        os.replace(tmp, self.index_file)

    def gzip_of(self, diff_id: str, level: int) -> tuple[str, int] | None:
        found = self.index["gzip"].get(f"{diff_id} {level} m16 {zlib.ZLIB_RUNTIME_VERSION}")
        return (found[0], found[1]) if found else None

    def remember_gzip(self, diff_id: str, level: int, digest: str, size: int) -> None:
        with self.lock:
            self.index["gzip"][f"{diff_id} {level} m16 {zlib.ZLIB_RUNTIME_VERSION}"] = [digest, size]
            self._save_index()

    def holders(self, digest: str) -> list[str]:
        return list(self.index["where"].get(self.host, {}).get(digest, []))

    def remember_holder(self, digest: str, path: str) -> None:
        with self.lock:
            repos = self.index["where"].setdefault(self.host, {}).setdefault(digest, [])
            if path in repos:
                return
            repos.insert(0, path)
            del repos[8:]
            self._save_index()

    def _session_file(self, path: str, digest: str) -> Path:
        key = hashlib.sha256(f"{self.host}/{path}@{digest}".encode()).hexdigest()[:32]
        return self.root / "uploads" / f"{key}.json"

    def session(self, path: str, digest: str) -> tuple[str, int] | None:
        try:
            saved = json.loads(self._session_file(path, digest).read_text())
            return saved["location"], int(saved["offset"])
        except (OSError, ValueError, KeyError):
            return None

    def save_session(self, path: str, digest: str, location: str, offset: int) -> None:
        target = self._session_file(path, digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"location": location, "offset": offset}))
        os.replace(tmp, target)

    def drop_session(self, path: str, digest: str) -> None:
        self._session_file(path, digest).unlink(missing_ok=True)


def is_weights_layer(created_by: str) -> bool:
    return bool(_WEIGHTS_LAYER.match(created_by))


class Pusher(BlobUploads):
    def __init__(self, client: RegistryClient, store: EngineLayers | None, settings: PushSettings = PushSettings(),
                 on_progress: Callable[[PushProgress], None] = lambda progress: None,
                 stop: threading.Event | None = None, state_dir: Path | None = None) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.on_progress = on_progress
        self.stop = stop or threading.Event()
        self.state = _State(state_dir or cache_dir(), client.ref.host)
        self.stats = PushStats()
        self._lock = threading.Lock()
        self._blobs: list[_Blob] = []
        self._pool: ThreadPoolExecutor | None = None
        self._early: list[Future] = []
        self._path = ""
        self._started = time.perf_counter()
        self._body_limit: int | None = None  # learnt from a 413: the largest request body that gets through

    # -- planning ----------------------------------------------------------------------------------
    def code_blob(self, layer: LayerTar) -> _Blob:
        """A layer of the code image, replayed from the engine's store: gzipped on the way (its
        digest is known up front only when an earlier push remembered it)."""
        known = self.state.gzip_of(layer.diff_id, self.settings.gzip_level)
        return _Blob(LAYER_GZIP, layer, digest=known[0] if known else None, size=known[1] if known else None)

    def present_blob(self, media_type: str, digest: str, size: int) -> _Blob:
        """A blob the repository already holds (the engine pushed it): a HEAD confirms it."""
        return _Blob(media_type, digest=digest, size=size)

    def weights_blob(self, layer: Any) -> _Blob:
        """A weights layer the builder made: uncompressed, its digest (= diff id) known up front."""
        self.check_layer_size(layer.diff_id, layer.size)
        return _Blob(LAYER_TAR, layer, digest=layer.diff_id, size=layer.size, weights=True)

    def check_layer_size(self, diff_id: str, size: int) -> None:
        if self.settings.max_layer_bytes and size > self.settings.max_layer_bytes:
            raise RegistryError(
                f"layer {diff_id[:19]} is {size / 1e9:.1f} GB, over the registry's largest layer "
                f"({self.settings.max_layer_bytes / 1e9:.1f} GB): split the file or use another registry"
            )

    def plan(self, image_id: str) -> tuple[bytes, list[_Blob]]:
        """Every layer of an image in the engine's store (weights layers of the old layout too)."""
        assert self.store is not None
        config = self.store.config(image_id)
        layers = self.store.layers(config)
        history = [h for h in json.loads(config).get("history") or [] if not h.get("empty_layer")]
        created = [h.get("created_by", "") for h in history] if len(history) == len(layers) else [""] * len(layers)
        blobs = []
        for layer, made_by in zip(layers, created):
            if self.settings.max_layer_bytes and layer.size > self.settings.max_layer_bytes:
                raise RegistryError(
                    f"layer {layer.diff_id[:19]} is {layer.size / 1e9:.1f} GB, over the registry's largest layer "
                    f"({self.settings.max_layer_bytes / 1e9:.1f} GB): split the file or use another registry"
                )
            if is_weights_layer(made_by):
                blobs.append(_Blob(LAYER_TAR, layer, digest=layer.diff_id, size=layer.size, weights=True))
            else:
                known = self.state.gzip_of(layer.diff_id, self.settings.gzip_level)
                blobs.append(_Blob(LAYER_GZIP, layer, digest=known[0] if known else None,
                                   size=known[1] if known else None))
        return config, blobs

    # -- the push ----------------------------------------------------------------------------------
    def push(self, name: str, tag: str, image_id: str) -> str:
        """Push image `image_id` from the engine's layer store as name:tag; return the manifest digest."""
        config, layers = self.plan(image_id)
        return self.push_blobs(name, tag, config, layers)

    def begin(self, name: str) -> None:
        """Open the upload pool now, so blobs can go up (`send_early`) while the rest of the image
        is still being made: weights layers while other files download."""
        if self._pool is None:
            self._started = time.perf_counter()
            self._path = self.client.ref.path(name)
            self._pool = ThreadPoolExecutor(max_workers=self.settings.parallel, thread_name_prefix="push")

    def send_early(self, blob: _Blob) -> None:
        assert self._pool is not None, "begin() first"
        with self._lock:
            self._blobs.append(blob)
            self.stats.blobs += 1
            self.stats.total_bytes += blob.size or (blob.layer.size if blob.layer else 0)
        self._early.append(self._pool.submit(self._send, self._path, blob))

    def push_blobs(self, name: str, reference: str | None, config: bytes, layers: list[_Blob]) -> str:
        """Push the image made of `config` and `layers` (in order) as name:reference, or by its
        digest alone (no tag) when `reference` is None; return the manifest digest. Blobs already
        sent early are not sent again."""
        self.begin(name)
        assert self._pool is not None
        path = self.client.ref.path(name)
        config_blob = _Blob(OCI_CONFIG, data=config, digest=sha256(config), size=len(config))
        early = {id(b) for b in self._blobs}
        fresh = [b for b in [config_blob, *layers] if id(b) not in early]
        with self._lock:
            self._blobs.extend(fresh)
            self.stats.blobs = len(self._blobs)
            self.stats.total_bytes = sum(b.size or (b.layer.size if b.layer else 0) for b in self._blobs)
        order = sorted(fresh, key=lambda b: -(b.size or (b.layer.size if b.layer else 0)))
        try:
            futures = self._early + [self._pool.submit(self._send, path, blob) for blob in order]
            try:
                finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
            except KeyboardInterrupt:
                self.stop.set()
                wait(futures)
                raise self._stopped() from None
            failed = [f.exception() for f in finished if f.exception() is not None]
            if failed:
                self.stop.set()  # the others finish their chunk and keep their sessions
                wait(pending)
                real = [e for e in failed if not isinstance(e, PushStopped)]
                raise real[0] if real else self._stopped()
        finally:
            self._pool.shutdown(wait=True)
            self._pool = None
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_blob.digest, "size": config_blob.size},
            "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in layers],
        }
        body = json.dumps(manifest, separators=(",", ":")).encode()
        digest = self.client.put_manifest(name, reference or sha256(body), body, OCI_MANIFEST)
        found = self.client.manifest(name, digest)
        if found is None or sha256(found[0]) != digest:
            raise RegistryError(f"{self.client.ref.repository(name)}@{digest} is not in the registry after the push: check its logs")
        self.stats.seconds = round(time.perf_counter() - self._started, 2)
        self._report()
        return digest

    def _advance_stream(self, count: int) -> None:
        """Bytes of a weights layer streamed from a mirror (builder/assemble.BlobStream)."""
        with self._lock:
            self.stats.sent_bytes += count
            self.stats.weight_bytes_sent += count

    def _stopped(self) -> PushStopped:
        left = self.stats.total_bytes - sum(b.done for b in self._blobs)
        return PushStopped(
            f"push stopped with {left / 1e9:.2f} GB left to send; what the registry acknowledged is kept: "
            "run the same command again to go on"
        )

    def _report(self) -> None:
        with self._lock:
            done = sum(b.done for b in self._blobs)
            blobs_done = sum(1 for b in self._blobs if b.size is not None and b.done >= b.size)
        self.on_progress(PushProgress(done, self.stats.total_bytes, blobs_done, len(self._blobs), self.stats))

    def _advance(self, blob: _Blob, count: int, sent: bool = True) -> None:
        with self._lock:
            blob.done += count
            if sent:
                self.stats.sent_bytes += count
                if blob.weights:
                    self.stats.weight_bytes_sent += count
        self._report()

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise PushStopped("stopped")

    # -- one blob ----------------------------------------------------------------------------------
    def _send(self, path: str, blob: _Blob) -> None:
        self._check_stop()
        if blob.digest is not None and self._skip(path, blob):
            return
        if blob.data is not None:
            location, _ = self.client.start_upload(path)
            self.client.finish(path, location, blob.digest, blob.data, len(blob.data))  # type: ignore[arg-type]
            self._advance(blob, len(blob.data))
        elif blob.media_type == LAYER_GZIP:
            self._send_gzip(path, blob)
        else:
            self._send_tar(path, blob)
        self.state.remember_holder(blob.digest, path)  # type: ignore[arg-type]

    def _skip(self, path: str, blob: _Blob) -> bool:
        """Whether the repository has the blob, or got it by a mount, without a byte sent."""
        assert blob.digest is not None
        size = self.client.blob_size(path, blob.digest)
        if size is not None:
            blob.size = blob.size or size
            with self._lock:
                self.stats.present += 1
        else:
            for holder in self.state.holders(blob.digest):
                if holder == path:
                    continue
                location, _ = self.client.start_upload(path, mount=(blob.digest, holder))
                if location is None:
                    with self._lock:
                        self.stats.mounted += 1
                    break
            else:
                return False
        self.state.remember_holder(blob.digest, path)
        self._advance(blob, blob.size or 0, sent=False)
        return True


__all__ = ["BLOCK", "MIB", "LayersUnavailable", "PushProgress", "PushSettings", "PushStats", "PushStopped", "Pusher",
           "gzip_stream"]
