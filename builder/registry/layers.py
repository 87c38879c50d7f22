"""An image's config and layers, read where the Docker engine keeps them.

The engine stores each layer unpacked (overlay2: `<data-root>/overlay2/<cache-id>/diff`) beside a
tar-split record (`image/overlay2/layerdb/sha256/<chain-id>/tar-split.json.gz`): every tar header
and padding byte of the original layer tar, and for each file its name and size. Replaying the
record, with file contents read from the diff directory, gives back the layer tar byte for byte,
so its sha256 is the layer's diff id and no copy of the image is ever written. Any byte offset can
be started from, which is what lets a killed upload go on where it stopped.

Only a local engine with the overlay2 driver and a readable data root qualifies (CI and these
machines run as root); `EngineLayers.open` says why not otherwise, and the push then goes through
the engine itself.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK = 4 * 1024 * 1024


class LayersUnavailable(Exception):
    """The engine's layer store cannot be read from here; the message says why."""


@dataclass(frozen=True)
class _Piece:
    offset: int  # where it starts in the layer tar
    size: int
    data: bytes | None = None  # a tar header or padding, kept in the record
    path: str | None = None  # a file's contents, read from the diff directory


class LayerTar:
    """One layer as a tar stream, replayed from its tar-split record."""

    def __init__(self, diff_id: str, diff_dir: Path, pieces: list[_Piece]) -> None:
        self.diff_id = diff_id
        self.diff_dir = diff_dir
        self.pieces = pieces
        self.size = pieces[-1].offset + pieces[-1].size if pieces else 0

    def read(self, start: int = 0, end: int | None = None, block: int = BLOCK) -> Iterator[bytes]:
        """The bytes [start, end) of the layer tar, in blocks of at most `block` bytes."""
        end = self.size if end is None else min(end, self.size)
        for piece in self.pieces:
            if piece.offset + piece.size <= start or piece.size == 0:
                continue
            if piece.offset >= end:
                return
            lo = max(start, piece.offset) - piece.offset
            hi = min(end, piece.offset + piece.size) - piece.offset
            if piece.data is not None:
                yield piece.data[lo:hi]
                continue
            with open(self.diff_dir / piece.path, "rb") as handle:  # type: ignore[operator]
                handle.seek(lo)
                left = hi - lo
                while left > 0:
                    chunk = handle.read(min(block, left))
                    if not chunk:
                        raise LayersUnavailable(
                            f"{piece.path} in layer {self.diff_id[:19]} is shorter than its tar record: "
                            "the engine's layer store changed under the push"
                        )
                    left -= len(chunk)
                    yield chunk

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.read():
            digest.update(chunk)
        return "sha256:" + digest.hexdigest()


def _chain_ids(diff_ids: list[str]) -> list[str]:
    """The layer store's keys: the chain id of layer n covers layers 0..n (image-spec)."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else
                     "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


class EngineLayers:
    """Read access to a local engine's image and layer store (overlay2)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images = root / "image" / "overlay2" / "imagedb" / "content" / "sha256"
        self.layerdb = root / "image" / "overlay2" / "layerdb" / "sha256"

    @classmethod
    def open(cls, client: Any) -> "EngineLayers":
        """The store of the engine `client` talks to, or LayersUnavailable with the reason."""
        host = getattr(getattr(client, "api", None), "base_url", "")
        if host and host != "http+docker://localhost":  # the unix socket; tcp and ssh engines are elsewhere
            raise LayersUnavailable(f"the engine at {host} is not on this machine")
        info = client.info()
        if info.get("Driver") != "overlay2":
            raise LayersUnavailable(f"the engine's storage driver is {info.get('Driver')!r}, not overlay2")
        if any(pair and pair[0] == "driver-type" for pair in info.get("DriverStatus") or []):
            raise LayersUnavailable("the engine keeps images in containerd's store")
        store = cls(Path(info.get("DockerRootDir") or "/var/lib/docker"))
        if not os.access(store.layerdb, os.R_OK | os.X_OK) or not os.access(store.images, os.R_OK | os.X_OK):
            raise LayersUnavailable(f"{store.root} is not readable by this user")
        return store

    def config(self, image_id: str) -> bytes:
        """The image config, byte for byte: its sha256 is the image id."""
        path = self.images / image_id.split(":", 1)[-1]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LayersUnavailable(f"cannot read the config of {image_id[:19]}: {exc.strerror}") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != image_id:
            raise LayersUnavailable(f"the config of {image_id[:19]} in {self.images} does not match its id")
        return data

    def layers(self, config: bytes) -> list[LayerTar]:
        diff_ids = list(json.loads(config)["rootfs"]["diff_ids"])
        return [self._layer(diff_id, chain) for diff_id, chain in zip(diff_ids, _chain_ids(diff_ids))]

    def _layer(self, diff_id: str, chain_id: str) -> LayerTar:
        entry = self.layerdb / chain_id.split(":", 1)[1]
        try:
            if (entry / "diff").read_text().strip() != diff_id:
                raise LayersUnavailable(f"the layer store's entry {chain_id[:19]} is not layer {diff_id[:19]}")
            cache_id = (entry / "cache-id").read_text().strip()
            record = gzip.decompress((entry / "tar-split.json.gz").read_bytes())
        except OSError as exc:
            raise LayersUnavailable(f"cannot read layer {diff_id[:19]} from {entry}: {exc.strerror}") from None
        diff_dir = self.root / "overlay2" / cache_id / "diff"
        pieces: list[_Piece] = []
        offset = 0
        for line in record.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("type") == 2:  # a segment: header, padding, end of archive
                data = base64.b64decode(item.get("payload") or "")
                if data:
                    pieces.append(_Piece(offset, len(data), data=data))
                    offset += len(data)
            elif item.get("type") == 1 and item.get("size"):
                raw = item.get("name_raw")
                name = base64.b64decode(raw).decode("utf-8", "surrogateescape") if raw else item["name"]
                name = os.path.normpath("/" + name).lstrip("/")
                pieces.append(_Piece(offset, int(item["size"]), path=name))
                offset += int(item["size"])
        return LayerTar(diff_id, diff_dir, pieces)
