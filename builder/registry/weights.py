"""The registry as the weights store: each verified file once, content-addressed, for every host.

After a build whose smoke passed, each weights file is published in the repository an
`oci://HOST[:PORT]/REPOSITORY` mirror names, as an OCI artifact tagged `sha256-<file sha256>`:

- a large file: its one layer is the very layer the image uses (`opt/weights/sha256/<sha>` in a
  tar, the same bytes for every model that holds the file), mounted from the image's repository
  or already there: no new byte is uploaded;
- a small file (configs, tokenizers; they share one layer in the image): the file's own bytes as
  a blob, whose digest is the file's sha256.

Annotations say where it came from (Hub repository, revision, path, licence, gated). The weights
stage of a later build, on any host, reads the artifact back by that tag, streams the file out of
its layer and checks the same sha256 as any download (builder/fetch). Gated and non-commercial
files are reused only within the registry that holds them: keep that repository private.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from builder.errors import RegistryError
from builder.registry.client import OCI_EMPTY, OCI_MANIFEST, EMPTY_BLOB, RegistryClient, RegistryRef, sha256
from builder.registry.layers import EngineLayers, LayerTar
from builder.registry.push import is_weights_layer

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
    uploaded_bytes: int = 0  # small files' bytes (large files are mounted)
    skipped: list[str] | None = None


def _small_files(layer: LayerTar, wanted: dict[str, str]) -> Iterator[tuple[str, bytes]]:
    """(sha256, bytes) of each file of `wanted` (path in layer -> sha256) in a tar layer."""
    stream = _Reader(layer.read())
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            sha = wanted.get(member.name)
            if sha and member.isfile():
                handle = archive.extractfile(member)
                if handle is not None:
                    yield sha, handle.read()


class _Reader:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buffer = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.buffer += chunk
        if size < 0:
            out, self.buffer = self.buffer, b""
        else:
            out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out


def publish(store: WeightsStore, image_client: RegistryClient, image_name: str, manifest_digest: str,
            files: list[dict], layers: EngineLayers | None, image_id: str,
            say: Callable[[str], None] = lambda line: None) -> Published:
    """Publish each file of `files` ({sha256, size, repo_id, revision, path, licence, gated,
    large, member}) from the pushed image `image_name@manifest_digest`."""
    client = RegistryClient(store.ref)  # its own: the image client's namespace is not the store's
    done = Published(skipped=[])
    image_manifest = json.loads(image_client.manifest(image_name, manifest_digest)[0])
    config = json.loads(image_client.blob(image_name, image_manifest["config"]["digest"]))
    made = [h.get("created_by", "") for h in config.get("history", []) if not h.get("empty_layer")]
    by_member: dict[str, dict] = {}
    for created, layer in zip(made, image_manifest["layers"]):
        if is_weights_layer(created):
            by_member[f"opt/weights/sha256/{created.split('sha256-', 1)[1].split('/', 1)[0]}"] = layer
    small_wanted = {}
    empty = client.put_blob(store.repository, EMPTY_BLOB)
    for item in files:
        tag = store.tag(item["sha256"])
        if client.manifest(store.repository, tag) is not None:
            done.present += 1
            continue
        if item["large"]:
            layer = by_member.get(item["member"])
            if layer is None:
                done.skipped.append(item["path"])
                continue
            if client.blob_size(store.repository, layer["digest"]) is None:
                if client.ref.host != image_client.ref.host:
                    done.skipped.append(item["path"])  # another registry: no mount; the Hub stays its source
                    continue
                location, _ = client.start_upload(store.repository, mount=(layer["digest"], image_client.ref.path(image_name)))
                if location is not None:
                    raise RegistryError(f"{store.ref.host} did not mount {layer['digest'][:19]} from {image_name}")
            _put(client, store, item, empty, {"mediaType": layer["mediaType"], "digest": layer["digest"],
                                              "size": layer["size"], "annotations": {MEMBER: item["member"]}})
            done.new += 1
        else:
            small_wanted[item["member"]] = item
    if small_wanted:
        if layers is None:
            done.skipped.extend(i["path"] for i in small_wanted.values())
        else:
            found = _find_small(layers, image_id, {m: i["sha256"] for m, i in small_wanted.items()})
            for item in small_wanted.values():
                data = found.get(item["sha256"])
                if data is None or sha256(data) != f"sha256:{item['sha256']}":
                    done.skipped.append(item["path"])
                    continue
                digest = client.put_blob(store.repository, data)
                done.uploaded_bytes += len(data)
                _put(client, store, item, empty, {"mediaType": RAW_FILE, "digest": digest, "size": len(data)})
                done.new += 1
    return done


def _find_small(layers: EngineLayers, image_id: str, wanted: dict[str, str]) -> dict[str, bytes]:
    config = layers.config(image_id)
    history = [h for h in json.loads(config).get("history", []) if not h.get("empty_layer")]
    found: dict[str, bytes] = {}
    for made, layer in zip(history, layers.layers(config)):
        if re.match(r"^COPY (?:--from=weights )?/export/small/ ", made.get("created_by", "")):
            found.update(dict(_small_files(layer, wanted)))
    return found


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
