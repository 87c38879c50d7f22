"""Deterministic, uncompressed layer tars made by the builder itself, never by an engine.

A layer is a list of pieces: tar headers and padding (bytes the builder writes) and file
contents (read from the weights cache at the moment they are sent). Every header has mtime 0,
uid and gid 0, no user or group names, fixed modes; entries are sorted; the archive ends with two
zero blocks and no record padding (as Go's archive/tar writes it, which every engine reads). So
the same file gives the same layer, byte for byte, in every build, every model and on every host,
and the blob digest of an uncompressed layer is its diff id, known before any byte is sent.

PAX headers carry what ustar cannot (sizes of 8 GiB and over, long names): FLUX.1-dev's
transformer is 23.8 GB.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK = 512
END = bytes(2 * BLOCK)
READ = 4 * 1024 * 1024
DIR_MODE, FILE_MODE, LINK_MODE = 0o755, 0o644, 0o777
FORMAT_VERSION = "v1"  # bump when the bytes of a layer change: the cached layer digests are keyed by it


def _header(name: str, kind: bytes, size: int = 0, mode: int = FILE_MODE, target: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.linkname = kind, size, mode, target
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def parents(path: str) -> list[str]:
    """`a/b/c` -> [`a/`, `a/b/`]: the directory entries a file's path needs."""
    parts = path.strip("/").split("/")[:-1]
    return ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


@dataclass(frozen=True)
class Piece:
    """Bytes kept in memory (headers, padding, small documents), or a file's contents on disk."""

    size: int
    data: bytes | None = None
    path: Path | None = None


@dataclass(frozen=True)
class Entry:
    """One member of a layer: a directory, a regular file (from `source`, or `data`) or a symlink."""

    name: str  # relative, with `/` separators; directories end with `/`
    kind: str = "file"  # file | dir | link
    size: int = 0
    source: Path | None = None
    data: bytes | None = None
    target: str = ""  # a symlink's target


def entries_with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """The entries plus every directory their paths need, sorted by name, each once."""
    by_name: dict[str, Entry] = {}
    for entry in entries:
        for directory in parents(entry.name):
            by_name.setdefault(directory, Entry(directory, "dir"))
        by_name[entry.name] = entry
    return [by_name[name] for name in sorted(by_name)]


def _mem(data: bytes) -> Piece:
    return Piece(len(data), data)


def pieces_of(entries: Iterable[Entry]) -> list[Piece]:
    """The tar of `entries` (parent directories added, sorted) as pieces."""
    pieces: list[Piece] = []
    for entry in entries_with_parents(entries):
        if entry.kind == "dir":
            pieces.append(_mem(_header(entry.name, tarfile.DIRTYPE, mode=DIR_MODE)))
        elif entry.kind == "link":
            pieces.append(_mem(_header(entry.name, tarfile.SYMTYPE, mode=LINK_MODE, target=entry.target)))
        else:
            pieces.append(_mem(_header(entry.name, tarfile.REGTYPE, entry.size)))
            pieces.append(_mem(entry.data) if entry.data is not None else Piece(entry.size, path=entry.source))
            if padding(entry.size):
                pieces.append(_mem(padding(entry.size)))
    pieces.append(_mem(END))
    return pieces


class TarBlob:
    """A layer tar assembled on the fly from its pieces: `read(start, end)` streams any byte range,
    so an upload can resume at any offset, and nothing is written to disk."""

    def __init__(self, pieces: list[Piece], diff_id: str | None = None) -> None:
        self.pieces = pieces
        self.size = sum(p.size for p in pieces)
        self._diff_id = diff_id

    @classmethod
    def elsewhere(cls, diff_id: str, size: int) -> "TarBlob":
        """A layer known by its digest and size whose bytes are not on this host (the registry
        holds them: a file streamed there without touching the disk)."""
        blob = cls([], diff_id)
        blob.size = size
        return blob

    @property
    def diff_id(self) -> str:
        """sha256 of the tar (= the blob digest, uncompressed): given, or computed by reading it once."""
        if self._diff_id is None:
            digest = hashlib.sha256()
            for chunk in self.read():
                digest.update(chunk)
            self._diff_id = "sha256:" + digest.hexdigest()
        return self._diff_id

    def read(self, start: int = 0, end: int | None = None, block: int = READ) -> Iterator[bytes]:
        if not self.pieces and self.size:
            raise OSError(f"layer {self._diff_id} is not on this host: its bytes went straight to the registry")
        end = self.size if end is None else min(end, self.size)
        offset = 0
        for piece in self.pieces:
            lo, hi = max(start, offset) - offset, min(end, offset + piece.size) - offset
            offset += piece.size
            if hi <= lo:
                if offset >= end:
                    return
                continue
            if piece.data is not None:
                yield piece.data[lo:hi]
                continue
            assert piece.path is not None
            with open(piece.path, "rb") as handle:
                handle.seek(lo)
                left = hi - lo
                while left > 0:
                    chunk = handle.read(min(block, left))
                    if not chunk:
                        raise OSError(f"{piece.path} is shorter than its layer says: the weights cache changed under the build")
                    left -= len(chunk)
                    yield chunk


def file_layer_frame(name: str, size: int) -> tuple[bytes, bytes]:
    """(what comes before, what comes after) a large file's bytes in its own layer: everything but
    the contents, so the layer's digest can be computed while the file itself is downloaded."""
    pieces = pieces_of([Entry(name, size=size, source=Path("/dev/null"))])
    cut = next(i for i, p in enumerate(pieces) if p.path is not None)
    return b"".join(p.data or b"" for p in pieces[:cut]), b"".join(p.data or b"" for p in pieces[cut + 1:])


def stream_archive(members: list[tuple[str, int, Callable[[], Iterator[bytes]]]]) -> Iterator[bytes]:
    """A tar archive of (name, size, contents) members, streamed: nothing is held or written."""
    for name, size, contents in members:
        yield _header(name, tarfile.REGTYPE, size)
        sent = 0
        for chunk in contents():
            sent += len(chunk)
            yield chunk
        if sent != size:
            raise OSError(f"{name}: {sent} bytes where {size} were announced")
        yield padding(size)
    yield END
