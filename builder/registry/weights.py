"""The registry as the weights store: each verified file once, content-addressed, for every host.

After a build whose smoke passed, each weights file is published in the repository an
`oci://HOST[:PORT]/REPOSITORY` mirror names, as an OCI artifact tagged `sha256-<file sha256>`:

- a large file: its one layer is the very layer the image uses (the builder's own tar of
  `opt/weights/sha256/<sha>`, the same bytes for every model that holds the file), mounted from
  the image's repository or already there: no new byte is uploaded;
- a small file (configs, tokenizers; they share one layer in the image): the file's own bytes,
  read from the host's weights cache, as a blob whose digest is the file's sha256.

Annotations say where it came from (Hub repository, revision, path, licence, gated). A later
build, on any host, reads the artifact back by that tag (builder/fetch/oci.py), streams the file
out of its layer and checks the same sha256 as any download. Gated and non-commercial files are
reused only within the registry that holds them: keep that repository private.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from builder.errors import RegistryError
from builder.registry.client import OCI_EMPTY, OCI_MANIFEST, EMPTY_BLOB, MountRefused, RegistryClient, RegistryRef, sha256
from builder.registry.push import LAYER_TAR, Pusher

if TYPE_CHECKING:
    from builder.fetch import ContentCache, FetchedFile
    from builder.manifest import Manifest
    from builder.weights import WeightsLayer, WeightsPlan

WEIGHTS_ARTIFACT = "application/vnd.builder.weights.v1"
RAW_FILE = "application/vnd.builder.weights.file.v1"
MEMBER = "io.builder.weights.member"  # the file's path inside a tar layer


@dataclass(frozen=True)
class WeightsStore:
    """Where weights files live in a registry: `oci://HOST[:PORT]/REPOSITORY`."""

    ref: RegistryRef
    repository: str

    @classmethod
    def parse(cls, url: str) -> "WeightsStore":
        rest = url.removeprefix("oci://").strip("/")
        host, _, repository = rest.partition("/")
        if not repository:
            raise RegistryError(f"{url}: expected oci://HOST[:PORT]/REPOSITORY, e.g. oci://ghcr.io/acme/weights")
        return cls(RegistryRef.parse(host), repository)

    @staticmethod
    def tag(sha: str) -> str:
        return f"sha256-{sha}"


@dataclass
class Published:
    new: int = 0  # artifacts written now
    present: int = 0  # already in the store
    uploaded_bytes: int = 0  # bytes uploaded (large files are mounted where the registry allows)
    skipped: list[str] | None = None


def publish(store: WeightsStore, image_client: RegistryClient, manifest: Manifest, plan: WeightsPlan,
            fetched: dict[str, FetchedFile], layers: list[WeightsLayer], cache: ContentCache) -> Published:
    """Publish every pinned file of the image `manifest` names, pushed to `image_client`'s registry."""
    client = RegistryClient(store.ref)  # its own: the image client's namespace is not the store's
    pusher = Pusher(client, None)
    sent = 0
    done = Published(skipped=[])
    by_name = {layer.name: layer for layer in layers}
    image_path = image_client.ref.path(manifest.name)
    empty = client.put_blob(store.repository, EMPTY_BLOB)
    seen: set[str] = set()
    for source in manifest.sources:
        for artifact in source.artifacts:
            item = {"sha256": artifact.sha256, "size": artifact.size, "repo_id": source.repo_id,
                    "revision": source.revision, "path": artifact.path, "licence": manifest.license.spdx,
                    "gated": source.gated}
            if not artifact.locked or artifact.sha256 in seen:
                continue
            seen.add(artifact.sha256)  # type: ignore[arg-type]
            if client.manifest(store.repository, store.tag(artifact.sha256)) is not None:  # type: ignore[arg-type]
                done.present += 1
                continue
            layer = by_name.get(f"sha256-{artifact.sha256}")
            if layer is not None:
                if not _layer_into(pusher, client, store, layer, image_client, image_path):
                    done.skipped.append(artifact.path)  # neither mountable nor on this host: the Hub stays its source
                    continue
                member = str(plan.blob_path(artifact.sha256)).lstrip("/")  # type: ignore[arg-type]
                _put(client, store, item, empty, {"mediaType": LAYER_TAR, "digest": layer.diff_id, "size": layer.size,
                                                  "annotations": {MEMBER: member}})
                done.uploaded_bytes += pusher.stats.sent_bytes - sent
                sent = pusher.stats.sent_bytes
            else:
                data = cache.blob(artifact.sha256).read_bytes()  # type: ignore[arg-type]
                if sha256(data) != f"sha256:{artifact.sha256}":
                    done.skipped.append(artifact.path)
                    continue
                digest = client.put_blob(store.repository, data)
                done.uploaded_bytes += len(data)
                _put(client, store, item, empty, {"mediaType": RAW_FILE, "digest": digest, "size": len(data)})
            done.new += 1
    return done


def _layer_into(pusher: Pusher, client: RegistryClient, store: WeightsStore, layer: WeightsLayer,
                image_client: RegistryClient, image_path: str) -> bool:
    """Whether the store holds the file's layer now: already, mounted from where these
    credentials pushed it (the image's repository), or uploaded from this host's weights cache
    (a registry that does not mount, or another registry)."""
    if client.blob_size(store.repository, layer.diff_id) is not None:
        return True
    if layer.blob.pieces:  # on this host: the push's own rules (HEAD, mount, the 202's session, upload)
        pusher.send(store.repository, pusher.weights_blob(layer.blob))
        return True
    if client.ref.host != image_client.ref.host:
        return False  # streamed to the image's registry, never on this host: nothing to mount or send
    try:
        location, _ = client.start_upload(store.repository, mount=(layer.diff_id, image_path))
    except MountRefused:
        return False
    if location is not None:  # a session instead of a mount (ECR): no bytes here to fill it
        client.request("DELETE", location, client._scopes(store.repository, True), retry=False)
        return False
    return True


def _put(client: RegistryClient, store: WeightsStore, item: dict, empty: str, layer: dict) -> None:
    annotations = {
        "org.opencontainers.image.source": f"https://huggingface.co/{item['repo_id']}",
        "io.builder.weights.repo_id": item["repo_id"],
        "io.builder.weights.revision": item["revision"],
        "io.builder.weights.path": item["path"],
        "io.builder.weights.sha256": item["sha256"],
        "io.builder.weights.size": str(item["size"]),
        "io.builder.weights.license": item.get("licence") or "unknown",
        "io.builder.weights.gated": "true" if item.get("gated") else "false",
    }
    body = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": WEIGHTS_ARTIFACT,
            "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": len(EMPTY_BLOB)},
            "layers": [layer], "annotations": annotations}
    client.put_manifest(store.repository, store.tag(item["sha256"]), json.dumps(body, separators=(",", ":")).encode(),
                        OCI_MANIFEST)
