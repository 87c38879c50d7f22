"""The content-addressed cache: CACHE/v1/sha256/HEX, shared by every build and model."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 8 * 1024 * 1024


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ContentCache:
    """CACHE/v1/sha256/HEX holds verified blobs; partial/ holds downloads in progress with their
    resume state; locks/ holds one flock file per key, so two builds sharing the cache (two
    processes on one host) never write the same file at once; layers/FORMAT/HEX records the
    digest and size of the file's own image layer (builder/weights/tar.py), computed once, while
    the file was downloaded."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "v1"
        for sub in ("sha256", "partial", "locks", "used", "layers", "stamps"):
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
        self.stamp(sha256)
        self.touch(sha256)
        return target

    # A blob is hashed when it enters the cache. What proves it unchanged since, without reading
    # it again (a version bump must read no weight byte): its size, mtime and inode, recorded then.
    # A write to it, a copy over it or a restore changes them, and the blob is hashed again.
    @staticmethod
    def _fingerprint(path: Path) -> str:
        stat = path.stat()
        return f"{stat.st_size} {stat.st_mtime_ns} {stat.st_ino}"

    def stamp(self, sha256: str) -> None:
        record = self.root / "stamps" / sha256
        tmp = record.with_name(f".{sha256}.{os.getpid()}.tmp")
        tmp.write_text(self._fingerprint(self.blob(sha256)), encoding="ascii")
        os.replace(tmp, record)

    def unchanged(self, sha256: str) -> bool:
        """Whether the blob is as it was when it was verified (by its recorded fingerprint)."""
        try:
            return (self.root / "stamps" / sha256).read_text(encoding="ascii") == self._fingerprint(self.blob(sha256))
        except OSError:
            return False

    def check(self, sha256: str) -> bool:
        """True if the blob's bytes are its name's: at once when unchanged since verified, else by
        hashing it again (and stamping it anew). A blob that fails is evicted."""
        if self.unchanged(sha256):
            return True
        try:
            ok = sha256_of(self.blob(sha256)) == sha256
        except OSError:
            ok = False
        if ok:
            self.stamp(sha256)
        else:
            self.evict(sha256)
        return ok

    def touch(self, sha256: str) -> None:
        (self.root / "used" / sha256).touch()

    def _layer_record(self, sha256: str, version: str) -> Path:
        return self.root / "layers" / version / sha256

    def layer(self, sha256: str, version: str) -> tuple[str, int] | None:
        """(digest, size) of the blob's own layer in tar format `version`, if recorded."""
        try:
            digest, size = self._layer_record(sha256, version).read_text(encoding="ascii").split()
            return digest, int(size)
        except (OSError, ValueError):
            return None

    def record_layer(self, sha256: str, version: str, digest: str, size: int) -> None:
        record = self._layer_record(sha256, version)
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        tmp.write_text(f"{digest} {size}\n", encoding="ascii")
        os.replace(tmp, record)

    def evict(self, sha256: str) -> None:
        records = list((self.root / "layers").glob(f"*/{sha256}"))
        for path in (self.blob(sha256), self.root / "used" / sha256, self.root / "stamps" / sha256, *records):
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
