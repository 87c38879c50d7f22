"""Export: the verified blobs laid out as one directory per image layer, with fixed metadata.

    EXPORT/small/opt/models/NAME/...             every small file, plus symlinks to the blobs
    EXPORT/sha256-HEX/opt/weights/sha256/HEX     each large file alone, named by its content

Fixed modes and mtimes make the layers byte-for-byte reproducible.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path, PurePosixPath

from builder.errors import DownloadError
from builder.fetch.cache import CHUNK, ContentCache
from builder.fetch.engine import FetchEngine
from builder.fetch.plan import FetchedFile, PlannedFile

FIXED_MTIME_NS = 0


def copy_verified(cache: ContentCache, sha256: str, target: Path, verify: bool) -> bool:
    """Copy a cache blob to target; when verify, hash while copying. False if the blob is corrupt."""
    target.parent.mkdir(parents=True, exist_ok=True)
    source = cache.blob(sha256)
    if not verify:
        shutil.copyfile(source, target)
        return True
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    if digest.hexdigest() != sha256:
        target.unlink()
        return False
    return True


def fix_metadata(root: Path) -> None:
    """Fixed modes and mtimes everywhere under root, so a layer's bytes depend on content only."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            path = Path(dirpath, name)
            if path.is_symlink():
                os.utime(path, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS), follow_symlinks=False)
                continue
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
            os.utime(path, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))
    os.chmod(root, 0o755)
    os.utime(root, ns=(FIXED_MTIME_NS, FIXED_MTIME_NS))


def _check_space(engine: FetchEngine, items: list[PlannedFile], export: Path) -> None:
    """Free space for the downloads (into the cache) and the copy out (into the export), before any byte."""
    download, copy = engine.missing_bytes(items), sum(i.size or 0 for i in items)
    if os.stat(engine.cache.root).st_dev == os.stat(export).st_dev:
        engine.check_space(download + copy, export)
    else:
        engine.check_space(download)
        engine.check_space(copy, export)


def _place(engine: FetchEngine, item: PlannedFile, result: FetchedFile, target: Path) -> FetchedFile:
    """Copy the blob to target. A blob from an earlier build is hashed while it is copied out: a
    cache entry whose bytes no longer match its name is never served, but fetched again."""
    cache = engine.cache
    for _ in range(2):
        with cache.locked(result.sha256, shared=True):
            try:
                copied = target.exists() or copy_verified(cache, result.sha256, target, verify=result.source == "cache")
            except FileNotFoundError:  # pruned between the fetch and now
                copied = False
        if copied:
            return result
        with cache.locked(result.sha256):
            cache.evict(result.sha256)
        engine.log(f"cache entry {result.sha256[:16]}… for {item.dest} was corrupt or gone: fetching again")
        result = engine.fetch_one(item)
    raise DownloadError(f"{engine.model}: {item.dest}: the cache keeps returning corrupt bytes: check the disk")


def fetch_plan(plan: dict, export: Path, engine: FetchEngine) -> list[FetchedFile]:
    """Fetch every file of the plan through the cache and lay the layers out under export."""
    model_dir = PurePosixPath(plan["model_dir"])
    blob_dir = PurePosixPath(plan["blob_dir"])
    items = [PlannedFile(**entry) for entry in plan["files"]]
    export.mkdir(parents=True, exist_ok=True)
    _check_space(engine, items, export)
    fetched = engine.fetch(items)
    placed: list[FetchedFile] = []
    for item in items:
        result = fetched[item.key]
        blob_target = export / item.layer / blob_dir.relative_to("/") / result.sha256
        in_model = export / "small" / model_dir.relative_to("/") / item.dest
        result = _place(engine, item, result, in_model if item.layer == "small" else blob_target)
        if item.layer != "small":
            in_model.parent.mkdir(parents=True, exist_ok=True)
            in_model.symlink_to(os.path.relpath(blob_dir / result.sha256, (model_dir / item.dest).parent))
        placed.append(result)
    for layer_dir in export.iterdir():
        fix_metadata(layer_dir)
    return placed
