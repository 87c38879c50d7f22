"""The builder's own push: weights as uncompressed layers, several blobs at once, nothing sent twice.

The Docker engine gzips every layer on one core before it uploads it; weights do not compress,
so for them that is pure cost. Here each weights layer (a `COPY /export/sha256-<file>/` from the
weights stage) goes to the registry as an uncompressed OCI layer, whose blob digest is its diff id:
known before a byte is read, so a registry that has it already (HEAD) or holds it in another
repository (a cross-repository mount) costs one request. The other layers are gzipped
(deterministically, so the same layer gives the same blob; the pairing is remembered in the cache
beside the ledger so a later push can skip them unread). The config blob is the engine's own,
byte for byte, so the image id the smoke ran on is the image the registry holds.

How the bytes go up (chunks, streamed PATCHes, resumes, body limits, each registry's rules) is
builder/registry/upload.py's business; here: what goes up, what can be skipped (HEAD) or mounted
(only from repositories these same credentials pushed to, as moby does; a registry that answers
a mount with an upload session gets the blob in that session), in which order, and the manifest
last, checked by digest with a HEAD (a GET counts as a pull on Docker Hub).
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
from builder.registry.blobs import MIB, Blob, BlobMismatch, BlobSource, Limits, PushStats, PushStopped, Tally
from builder.registry.client import OCI_MANIFEST, MountRefused, RegistryClient, sha256
from builder.registry.layers import BLOCK, EngineLayers, LayersUnavailable
from builder.registry.profiles import Profile
from builder.registry.upload import Uploader, gzip_stream

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
    max_layer_bytes: int | None = None  # the registry's largest layer (default: its profile's; GHCR: 10 GB)
    profile: Profile | None = None  # how the registry behaves (default: by its host, builder/registry/profiles.py)


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

    def __init__(self, root: Path, host: str, who: str = "anonymous") -> None:
        self.root = root
        self.host = host
        self.where = f"{host} {who}"  # mount sources are remembered per registry and per credentials
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
        return list(self.index["where"].get(self.where, {}).get(digest, []))

    def remember_holder(self, digest: str, path: str) -> None:
        with self.lock:
            repos = self.index["where"].setdefault(self.where, {}).setdefault(digest, [])
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


class Pusher:
    def __init__(self, client: RegistryClient, store: EngineLayers | None, settings: PushSettings = PushSettings(),
                 on_progress: Callable[[PushProgress], None] = lambda progress: None,
                 stop: threading.Event | None = None, state_dir: Path | None = None) -> None:
        if settings.profile is not None:
            client.profile = settings.profile
        self.client = client
        self.store = store
        self.settings = settings
        self.on_progress = on_progress
        self._stop = stop or threading.Event()
        credentials = client.auth.credentials
        self.state = _State(state_dir or cache_dir(), client.ref.host,
                            credentials.fingerprint() if credentials else "anonymous")
        self.stats = PushStats()
        self._blobs: list[Blob] = []
        self.tally = Tally(self.stats, self._blobs, self._report)
        self.uploader = Uploader(client, self.state, self.tally, Limits(client.profile, settings.chunk_bytes), self._stop,
                                 settings.gzip_level, settings.gzip_threads)
        self._pool: ThreadPoolExecutor | None = None  # open from begin() to the end of push_blobs()
        self._early: list[Future] = []
        self._path = ""
        self._started = time.perf_counter()

    @property
    def stop(self) -> threading.Event:
        return self._stop

    @stop.setter
    def stop(self, event: threading.Event) -> None:
        self._stop = self.uploader.stop = event

    @property
    def max_layer_bytes(self) -> int | None:
        return self.settings.max_layer_bytes or self.client.profile.max_layer_bytes

    # -- planning ----------------------------------------------------------------------------------
    def check_layer_size(self, diff_id: str, size: int) -> None:
        if self.max_layer_bytes and size > self.max_layer_bytes:
            raise RegistryError(
                f"layer {diff_id[:19]} is {size / 1e9:.1f} GB, over the registry's largest layer "
                f"({self.max_layer_bytes / 1e9:.1f} GB): split the file or use another registry"
            )

    def code_blob(self, layer: BlobSource) -> Blob:
        """A layer of the code image, replayed from the engine's store: gzipped on the way (its
        digest is known up front only when an earlier push remembered it)."""
        self.check_layer_size(layer.diff_id, layer.size)
        known = self.state.gzip_of(layer.diff_id, self.settings.gzip_level)
        return Blob(LAYER_GZIP, layer, digest=known[0] if known else None, size=known[1] if known else None)

    def present_blob(self, media_type: str, digest: str, size: int) -> Blob:
        """A blob the repository already holds (the engine pushed it): a HEAD confirms it."""
        return Blob(media_type, digest=digest, size=size)

    def weights_blob(self, layer: BlobSource) -> Blob:
        """A weights layer the builder made: uncompressed, its digest (= diff id) known up front."""
        self.check_layer_size(layer.diff_id, layer.size)
        return Blob(LAYER_TAR, layer, digest=layer.diff_id, size=layer.size, weights=True)

    def plan(self, image_id: str) -> tuple[bytes, list[Blob]]:
        """Every layer of an image in the engine's store, as blobs (for an image the engine holds
        whole: the benches' and the registry tests' images)."""
        assert self.store is not None
        config = self.store.config(image_id)
        layers = self.store.layers(config)
        history = [h for h in json.loads(config).get("history") or [] if not h.get("empty_layer")]
        created = [h.get("created_by", "") for h in history] if len(history) == len(layers) else [""] * len(layers)
        return config, [self.weights_blob(layer) if is_weights_layer(made_by) else self.code_blob(layer)
                        for layer, made_by in zip(layers, created)]

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

    def send_early(self, blob: Blob) -> None:
        assert self._pool is not None, "begin() first"
        with self.tally.lock:
            self._blobs.append(blob)
            self.stats.blobs += 1
            self.stats.total_bytes += blob.expected
        self._early.append(self._pool.submit(self._send, self._path, blob))

    def push_blobs(self, name: str, reference: str | None, config: bytes, layers: list[Blob]) -> str:
        """Push the image made of `config` and `layers` (in order) as name:reference, or by its
        digest alone (no tag) when `reference` is None; return the manifest digest. Blobs already
        sent early are not sent again."""
        self.begin(name)
        path = self.client.ref.path(name)
        config_blob = Blob(OCI_CONFIG, data=config, digest=sha256(config), size=len(config))
        early = {id(b) for b in self._blobs}
        fresh = [b for b in [config_blob, *layers] if id(b) not in early]
        with self.tally.lock:
            self._blobs.extend(fresh)
            self.stats.blobs = len(self._blobs)
            self.stats.total_bytes = sum(b.expected for b in self._blobs)
        self._send_all(path, sorted(fresh, key=lambda b: -b.expected))
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_blob.digest, "size": config_blob.size},
            "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in layers],
        }
        body = json.dumps(manifest, separators=(",", ":")).encode()
        digest = self.client.put_manifest(name, reference or sha256(body), body, OCI_MANIFEST)
        if self.client.manifest_digest(name, digest) != digest:  # a HEAD: not counted as a pull
            raise RegistryError(f"{self.client.ref.repository(name)}@{digest} is not in the registry after the push: check its logs")
        self.stats.seconds = round(time.perf_counter() - self._started, 2)
        self._report()
        return digest

    def _send_all(self, path: str, order: list[Blob]) -> None:
        """Every blob, `settings.parallel` at a time. The first real failure stops the others at
        their next chunk (their sessions kept); a blob that met a dropped connection or a 5xx has
        gone on by itself (upload.py), so what stops the push is what cannot be resumed."""
        pool = self._pool or ThreadPoolExecutor(max_workers=self.settings.parallel, thread_name_prefix="push")
        try:
            futures = self._early + [pool.submit(self._send, path, blob) for blob in order]
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
            pool.shutdown(wait=True)
            self._pool, self._early = None, []

    def _stopped(self) -> PushStopped:
        left = self.stats.total_bytes - sum(b.done for b in self._blobs)
        return PushStopped(
            f"push stopped with {left / 1e9:.2f} GB left to send; what the registry acknowledged is kept: "
            "run the same command again to go on"
        )

    def _report(self) -> None:
        with self.tally.lock:
            done = sum(b.done for b in self._blobs)
            blobs_done = sum(1 for b in self._blobs if b.size is not None and b.done >= b.size)
        self.on_progress(PushProgress(done, self.stats.total_bytes, blobs_done, len(self._blobs), self.stats))

    # -- one blob ----------------------------------------------------------------------------------
    def send(self, path: str, blob: Blob) -> None:
        """One blob into repository `path` (API path), outside an image's push: skipped when there,
        mounted where it can be, else uploaded."""
        with self.tally.lock:
            self._blobs.append(blob)
        self._send(path, blob)

    def _send(self, path: str, blob: Blob) -> None:
        if self.stop.is_set():
            raise PushStopped("stopped")
        opened = None
        if blob.digest is not None:
            found = self._skip(path, blob)
            if found is True:
                return
            opened = found or None
        self.uploader.send(path, blob, opened)
        self.state.remember_holder(blob.digest, path)  # type: ignore[arg-type]

    def _skip(self, path: str, blob: Blob) -> bool | tuple[str, dict[str, str]]:
        """True when the repository has the blob or mounted it, without a byte sent; else False, or
        the upload session a registry that would not mount answered with (202): to be used."""
        assert blob.digest is not None
        size = self.client.blob_size(path, blob.digest)
        if size is not None:
            blob.size = blob.size or size
            self.tally.count(present=1)
        else:
            opened = self._mount(path, blob.digest)
            if opened is not None:
                return opened or False
            self.tally.count(mounted=1)
        self.state.remember_holder(blob.digest, path)
        self.tally.advance(blob, blob.expected, sent=False)
        return True

    def _mount(self, path: str, digest: str) -> tuple[str, dict[str, str]] | tuple[()] | None:
        """None when the blob was mounted from a repository these credentials pushed it to; else
        the upload session the registry opened instead (202), or () when there was none."""
        for holder in self.state.holders(digest):
            if holder == path:
                continue
            try:
                location, headers = self.client.start_upload(path, mount=(digest, holder))
            except MountRefused:
                continue  # these credentials may not read that repository (any more): try the next
            if location is None:
                return None
            return location, headers
        return ()


__all__ = ["BLOCK", "MIB", "BlobMismatch", "LayersUnavailable", "PushProgress", "PushSettings", "PushStats",
           "PushStopped", "Pusher", "gzip_stream"]
