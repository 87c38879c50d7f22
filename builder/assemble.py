"""Into the registry: each of the image's blobs from where it already is, then its manifest.

- weights layers: straight from the host's weights cache (uncompressed: the blob digest is the
  diff id, known before a byte is read), in parallel, the first ones while other files are still
  downloading (`Pusher.send_early`); a registry that holds one already is asked once (HEAD);
- code layers (base, packages, server): replayed from the engine's layer store and gzipped here,
  where that store can be read (a local overlay2 engine, as root); anywhere else the engine
  pushes the code image itself, under a scratch tag, and the image's manifest names the blobs it
  pushed (deleted again where the registry allows);
- the config the builder wrote (builder/compose.py), then the manifest: under the version's tag
  only after the smoke passed, or by digest alone, with no tag, for `--assemble-only`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from builder.compose import CodeImage
from builder.config import PushConfig
from builder.docker import Docker
from builder.errors import RegistryError
from builder.registry import RegistryClient, RegistryRef
from builder.registry.layers import EngineLayers, LayersUnavailable
from builder.registry.blobs import Blob
from builder.registry.push import LAYER_GZIP, LAYER_TAR, MIB, Pusher, PushSettings
from builder.registry.upload import StreamUpload
from builder.weights import WeightsLayer

Say = Callable[[str], None]
# The engine may name a layer by Docker's media types; the image's manifest is OCI.
_OCI_LAYER = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar": LAYER_TAR,
    "application/vnd.oci.image.layer.v1.tar+zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


@dataclass
class Upload:
    """One push of one image into REGISTRY/NAME."""

    client: RegistryClient
    pusher: Pusher
    name: str

    @property
    def repository(self) -> str:
        return self.client.ref.repository(self.name)


def open_upload(ref: RegistryRef, name: str, settings: PushConfig, on_event: Callable[[Any], None],
                store: EngineLayers | None = None) -> Upload:
    client = RegistryClient(ref)
    pusher = Pusher(client, store, PushSettings(parallel=settings.parallel, chunk_bytes=settings.chunk_mb * MIB,
                                                gzip_level=settings.gzip_level, profile=settings.profile(ref.host),
                                                max_layer_bytes=settings.max_layer_bytes(ref.host)), on_event)
    return Upload(client, pusher, name)


def engine_store(docker: Docker, settings: PushConfig, say: Say) -> EngineLayers | None:
    """The engine's layer store where the builder may replay code layers from it, else None (the
    engine pushes them), with one line saying why."""
    if settings.engine == "docker":
        return None
    try:
        return EngineLayers.open(docker.client)
    except LayersUnavailable as exc:
        if settings.engine == "builder":
            raise RegistryError(f"push.engine is builder, but {exc}: run where the engine's data root is readable, "
                                "or set push.engine to auto") from None
        say(f"code layers go up through the Docker engine's own push: {exc}")
        return None


@dataclass
class CodeBlobs:
    blobs: list[Blob]
    scratch: tuple[str, str] | None = None  # (tag, manifest digest) of the engine's push, to delete


def code_blobs(docker: Docker, upload: Upload, code: CodeImage, store: EngineLayers | None,
               on_event: Callable[[Any], None]) -> CodeBlobs:
    """The code image's layers as blobs of the image, in order."""
    if store is not None:
        config = store.config(code.image_id)
        layers = store.layers(config)
        return CodeBlobs([upload.pusher.code_blob(layer) for layer in layers])
    tag = f"{code.image_id.replace(':', '-')}.code"
    docker.tag(code.image_id, upload.repository, tag)
    credentials = upload.client.auth.credentials  # BUILDER_REGISTRY_*: the engine would not find them
    try:
        docker.push(upload.repository, tag, on_event, credentials.engine_auth() if credentials else None)
    finally:
        docker.untag(f"{upload.repository}:{tag}")
    found = upload.client.manifest(upload.name, tag)
    if found is None:
        raise RegistryError(f"{upload.repository}:{tag} is not in the registry after the engine pushed it: check its logs")
    layers = json.loads(found[0]).get("layers") or []
    if len(layers) != len(code.diff_ids):
        raise RegistryError(f"the engine pushed {len(layers)} layers of the code image, which has {len(code.diff_ids)}")
    blobs = [upload.pusher.present_blob(_OCI_LAYER.get(layer["mediaType"], layer["mediaType"]), layer["digest"],
                                        int(layer["size"])) for layer in layers]
    return CodeBlobs(blobs, (tag, found[2]))


def weights_blobs(upload: Upload, weights: list[WeightsLayer], early: dict[str, Blob]) -> list[Blob]:
    """The weights layers as blobs, reusing those already sent early (by diff id)."""
    return [early.get(layer.diff_id) or upload.pusher.weights_blob(layer.blob) for layer in weights]


def push_image(upload: Upload, reference: str | None, config: bytes, code: CodeImage, code_part: CodeBlobs,
               weights: list[Blob], say: Say) -> str:
    """Every blob, then the manifest (tagged `reference`, or by digest when None); its digest."""
    layers = [*code_part.blobs[: code.split], *weights, *code_part.blobs[code.split:]]
    digest = upload.pusher.push_blobs(upload.name, reference, config, layers)
    if code_part.scratch is not None:
        try:
            upload.client.delete(upload.name, code_part.scratch[1])
        except RegistryError as exc:
            say(f"the engine's scratch tag {code_part.scratch[0]} stays in {upload.repository} ({exc}); "
                "it holds the code image only, without weights: delete it in the registry's interface")
    say(summary(upload.pusher))
    return digest


def summary(pusher: Pusher) -> str:
    stats = pusher.stats
    return (f"pushed in {stats.seconds:.1f}s: {stats.blobs} blobs, {stats.sent_bytes / 1e9:.2f} GB sent "
            f"({stats.weight_bytes_sent / 1e9:.2f} GB of it weights, uncompressed), {stats.present} already there, "
            f"{stats.mounted} mounted from other repositories"
            + (f", {stats.resumed_bytes / 1e9:.2f} GB not sent again (resumed)" if stats.resumed_bytes else ""))


def blob_stream(upload: Upload) -> StreamUpload:
    """A weights layer streamed into the image's repository as its bytes arrive (--assemble-only)."""
    return StreamUpload(upload.pusher.uploader, upload.client.ref.path(upload.name))


def push_engine_image(docker: Docker, client: RegistryClient, name: str, tag: str, image_id: str,
                      settings: PushConfig, say: Say, on_event: Callable[[Any], None]) -> str:
    """Push an image the engine holds whole (a base image, the benches' and the registry tests'
    images; a build's image is composed instead, `push_image`): the builder's own push where the
    engine's layer store can be read, else the engine's push, with one line saying why."""
    store = None
    if settings.engine != "docker":
        try:
            store = EngineLayers.open(docker.client)
        except LayersUnavailable as exc:
            if settings.engine == "builder":
                raise RegistryError(f"push.engine is builder, but {exc}: run where the engine's data root is "
                                    "readable, or set push.engine to auto") from None
            say(f"pushing through the Docker engine (gzip, one layer at a time): {exc}")
    if store is not None:
        pusher = Pusher(client, store, PushSettings(parallel=settings.parallel, chunk_bytes=settings.chunk_mb * MIB,
                                                    gzip_level=settings.gzip_level, profile=settings.profile(client.ref.host),
                                                    max_layer_bytes=settings.max_layer_bytes(client.ref.host)), on_event)
        try:
            digest = pusher.push(name, tag, image_id)
            say(summary(pusher))
            return digest
        except LayersUnavailable as exc:  # a file the push may not read (a rootless engine's, say)
            if settings.engine == "builder":
                raise RegistryError(f"push.engine is builder, but {exc}: set push.engine to auto") from None
            say(f"pushing through the Docker engine (gzip, one layer at a time): {exc}")
    credentials = client.auth.credentials
    digest = docker.push(client.ref.repository(name), tag, on_event, credentials.engine_auth() if credentials else None)
    digest = digest or client.manifest_digest(name, tag)
    if not digest:
        raise RegistryError(f"{client.ref.repository(name)}:{tag} is not in the registry after the engine pushed it: "
                            "check its logs")
    return digest
