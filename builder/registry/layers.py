"""An image's config and layers, read where the Docker engine keeps them.

The engine stores each layer unpacked (overlay2: `<data-root>/overlay2/<cache-id>/diff`) beside a
tar-split record (`image/overlay2/layerdb/sha256/<chain-id>/tar-split.json.gz`): every tar header
and padding byte of the original layer tar, and for each file its name and size. Replaying the
record, with file contents read from the diff directory, gives back the layer tar byte for byte,
so its sha256 is the layer's diff id and no copy of the image is ever written. Any byte offset can
be started from, which is what lets a killed upload go on where it stopped.

The replay trusts nothing it reads from the diff directory. Every file is opened beneath that
directory without following a link (openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS, or a
walk one component at a time with O_NOFOLLOW where the kernel has no openat2), must be a regular
file of the recorded size, and must match the record's CRC-64 (tar-split keeps, in each file
entry's `payload`, the file's hash/crc64 sum with the ISO table: vbatts/tar-split
tar/storage/entry.go and getter.go). A layer whose record names `a/shadow` beside a link
`a -> /etc` sends no byte of the host's file; a byte changed in a diff file stops the push
before its blob is committed. Either is `LayerMismatch`: one line, nothing tagged.

Only a local engine with the overlay2 driver, a readable data root and files this user may read
qualifies (CI and these machines run as root; a rootless engine's files belong to another user
namespace); `EngineLayers.open` says why not otherwise, as does a read that is refused during
the push, and the push then goes through the engine itself.
"""

from __future__ import annotations

import base64
import bisect
import ctypes
import errno
import gzip
import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastcrc

from builder.errors import RegistryError

BLOCK = 4 * 1024 * 1024


class LayersUnavailable(Exception):
    """The engine's layer store cannot be read from here; the message says why."""


class LayerMismatch(RegistryError):
    """A layer's files are not what its tar-split record says: the push stops, nothing is committed."""


@dataclass(frozen=True)
class _Piece:
    offset: int  # where it starts in the layer tar
    size: int
    data: bytes | None = None  # a tar header or padding, kept in the record
    path: str | None = None  # a file's contents, read from the diff directory
    crc: int | None = None  # the file's CRC-64 (Go's hash/crc64, ISO table) from the record


# -- opening a file beneath a directory, never through a link ---------------------------------------
_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
_RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x02, 0x04, 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """openat2(2) through libc's syscall(), where the kernel has it (Linux 5.6 and later)."""

    def __init__(self) -> None:
        self.usable: bool | None = None
        try:
            self.syscall = ctypes.CDLL(None, use_errno=True).syscall
        except (OSError, AttributeError):
            self.usable = False

    def open(self, dir_fd: int, name: str, flags: int) -> int | None:
        """The fd, or None where openat2 is not there (the caller walks instead)."""
        if self.usable is False:
            return None
        how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
        fd = self.syscall(ctypes.c_long(_OPENAT2), ctypes.c_int(dir_fd), ctypes.c_char_p(os.fsencode(name)),
                          ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            self.usable = True
            return fd
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EPERM) and self.usable is None:  # no openat2, or a seccomp filter
            self.usable = False
            return None
        raise OSError(code, os.strerror(code), name)


_openat2 = _Openat2()
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_beneath(dir_fd: int, name: str) -> int:
    """A read-only fd for `name` (relative) inside directory `dir_fd`: no component may be a
    symbolic link, and nothing may lead out of the directory. OSError otherwise (ELOOP, EXDEV)."""
    fd = _openat2.open(dir_fd, name, _FLAGS)
    if fd is not None:
        return fd
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise OSError(errno.EXDEV, "a path that leaves the directory", name)
    current = dir_fd
    try:
        for part in parts[:-1]:  # each directory on the way, opened from the last, links refused
            following = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current)
            if current != dir_fd:
                os.close(current)
            current = following
        return os.open(parts[-1], _FLAGS, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)


class LayerTar:
    """One layer as a tar stream, replayed from its tar-split record, every file checked."""

    def __init__(self, diff_id: str, diff_dir: Path, pieces: list[_Piece]) -> None:
        self.diff_id = diff_id
        self.diff_dir = diff_dir
        self.pieces = pieces
        self.size = pieces[-1].offset + pieces[-1].size if pieces else 0
        self._offsets = [piece.offset for piece in pieces]
        self._files = any(piece.path for piece in pieces)
        self._crc_at: dict[int, tuple[int, int]] = {}  # piece offset -> (bytes of it hashed, CRC so far)
        self._lock = threading.Lock()

    def read(self, start: int = 0, end: int | None = None, block: int = BLOCK) -> Iterator[bytes]:
        """The bytes [start, end) of the layer tar, in blocks of at most `block` bytes. A file's
        CRC is checked when its last byte is read (reads that go on where the last one stopped,
        as an upload's chunks do, carry the sum along)."""
        end = self.size if end is None else min(end, self.size)
        first = max(bisect.bisect_right(self._offsets, start) - 1, 0)
        dir_fd = self._open_dir() if self._files else -1
        try:
            for piece in self.pieces[first:]:
                if piece.offset + piece.size <= start or piece.size == 0:
                    continue
                if piece.offset >= end:
                    return
                lo = max(start, piece.offset) - piece.offset
                hi = min(end, piece.offset + piece.size) - piece.offset
                if piece.data is not None:
                    yield piece.data[lo:hi]
                else:
                    yield from self._file(dir_fd, piece, lo, hi, block)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)

    def _open_dir(self) -> int:
        try:
            return os.open(self.diff_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except PermissionError:
            raise LayersUnavailable(f"{self.diff_dir} is not readable by this user") from None
        except OSError as exc:
            raise LayerMismatch(f"layer {self.diff_id[:19]}: {self.diff_dir}: {exc.strerror}: the engine's layer "
                                "store changed under the push; nothing of it was committed: build again") from None

    def _file(self, dir_fd: int, piece: _Piece, lo: int, hi: int, block: int) -> Iterator[bytes]:
        fd = self._open_file(dir_fd, piece)
        try:
            with self._lock:
                at, crc = self._crc_at.pop(piece.offset, (0, 0))
            if at != lo:  # started elsewhere: sum the part before this read (not sent)
                at, crc = 0, 0
                for chunk in self._chunks(fd, piece, 0, lo, block):
                    crc = fastcrc.crc64.go_iso(chunk, crc) if at else fastcrc.crc64.go_iso(chunk)
                    at += len(chunk)
            for chunk in self._chunks(fd, piece, lo, hi, block):
                crc = fastcrc.crc64.go_iso(chunk, crc) if at else fastcrc.crc64.go_iso(chunk)
                at += len(chunk)
                if at == piece.size:
                    self._check_crc(piece, crc)
                yield chunk
            if at < piece.size:
                with self._lock:
                    self._crc_at[piece.offset] = (at, crc)
        finally:
            os.close(fd)

    def _open_file(self, dir_fd: int, piece: _Piece) -> int:
        name = piece.path or ""
        try:
            fd = open_beneath(dir_fd, name)
        except PermissionError:
            raise LayersUnavailable(f"{name} in layer {self.diff_id[:19]} is not readable by this user") from None
        except OSError as exc:
            why = "leads through a symbolic link or out of the layer's directory" \
                if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR) else exc.strerror
            raise LayerMismatch(f"{name} in layer {self.diff_id[:19]} {why}: refused, nothing of it was sent; "
                                "the engine's layer store is not what its record says: build again") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != piece.size:
            os.close(fd)
            raise LayerMismatch(f"{name} in layer {self.diff_id[:19]} is not the {piece.size}-byte file its record "
                                "says: refused, nothing of it was sent; build again")
        return fd

    def _chunks(self, fd: int, piece: _Piece, lo: int, hi: int, block: int) -> Iterator[bytes]:
        while lo < hi:
            chunk = os.pread(fd, min(block, hi - lo), lo)
            if not chunk:
                raise LayerMismatch(f"{piece.path} in layer {self.diff_id[:19]} is shorter than its tar record: "
                                    "the engine's layer store changed under the push; build again")
            lo += len(chunk)
            yield chunk

    def _check_crc(self, piece: _Piece, crc: int) -> None:
        if piece.crc is not None and crc != piece.crc:
            raise LayerMismatch(f"{piece.path} in layer {self.diff_id[:19]} does not match its tar record (CRC-64): "
                                "the engine's layer store changed or was tampered with; nothing of it was committed: "
                                "build again")

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
        if any("name=rootless" in str(option) for option in info.get("SecurityOptions") or []):
            raise LayersUnavailable("the engine runs rootless: its layer store belongs to another user namespace")
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
                payload = base64.b64decode(item.get("payload") or "")
                crc = int.from_bytes(payload, "big") if len(payload) == 8 else None
                pieces.append(_Piece(offset, int(item["size"]), path=name, crc=crc))
                offset += int(item["size"])
        return LayerTar(diff_id, diff_dir, pieces)
