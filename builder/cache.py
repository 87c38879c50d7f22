"""`builder cache ls|prune|verify`: the host's content-addressed weights cache.

The cache is a directory of the builder's own (BuilderConfig.weights_cache_dir), outside Docker:
`docker builder prune` and `docker system prune` leave it alone, and several builds on the host
share it (a lock per file: two builds that want one file download it once). Blobs a running
build holds (its lock) are never removed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from builder.errors import InputError, ManifestError
from builder.fetch import ContentCache, sha256_of
from builder.project import Project


@dataclass(frozen=True)
class PruneRequest:
    """What `builder cache prune` was asked to remove; a dry run unless `really`."""

    everything: bool = False
    unreferenced: bool = False
    older_than_days: float | None = None
    max_bytes: int | None = None
    partials: bool = False
    really: bool = False

    def check(self) -> "PruneRequest":
        if not (self.everything or self.unreferenced or self.older_than_days is not None
                or self.max_bytes is not None or self.partials):
            raise InputError("say what to prune: --all, --unreferenced, --older-than DAYS, --max-bytes N or --partials")
        return self


def blob_users(project: Project) -> dict[str, set[str]]:
    """sha256 -> the names of the project's manifests that pin a file with it (invalid manifests skipped)."""
    from builder.manifest import load_manifest

    users: dict[str, set[str]] = {}
    for path in project.all_manifests():
        try:
            manifest = load_manifest(path)
        except ManifestError:
            continue
        for source in manifest.sources:
            for artifact in source.artifacts:
                if artifact.sha256:
                    users.setdefault(artifact.sha256, set()).add(manifest.name)
    return users


def listing(cache: ContentCache) -> list[dict[str, Any]]:
    return ([{"kind": "blob", **row} for row in cache.entries()]
            + [{"kind": "partial", **row} for row in cache.partials()])


def verify(cache: ContentCache) -> list[dict[str, Any]]:
    """Hash every blob; remove those whose bytes do not match their name."""
    rows = []
    for row in cache.entries():
        with cache.locked(row["sha256"]):
            ok = sha256_of(cache.blob(row["sha256"])) == row["sha256"]
            if not ok:
                cache.evict(row["sha256"])
        rows.append({"kind": "verified", "sha256": row["sha256"], "ok": ok})
    return rows


def prune(cache: ContentCache, request: PruneRequest, keep: set[str] = frozenset()) -> list[dict[str, Any]]:
    """Remove what the request names, least recently used first; the rows removed (or that would be)."""
    request.check()
    now = time.time()
    rows = sorted(cache.entries(), key=lambda r: r["last_used"])
    total = sum(r["size"] for r in rows)
    removed = []
    for row in rows:
        if row["sha256"] in keep:
            continue
        old = request.older_than_days is not None and now - row["last_used"] > request.older_than_days * 86400
        over = request.max_bytes is not None and total > request.max_bytes
        if not (request.everything or old or over or request.unreferenced):
            continue
        with cache.locked(row["sha256"], wait=False) as got:
            if not got:
                continue  # a build is using it right now
            if request.really:
                cache.evict(row["sha256"])
            total -= row["size"]
        removed.append({"kind": "removed", "dry_run": not request.really, **row})
    if request.partials and request.really:
        for part in (cache.root / "partial").glob("*.part"):
            key = part.name[: -len(".part")]
            with cache.locked(key, wait=False) as got:
                if got:  # else a build is downloading it right now
                    for path in (part, part.with_suffix(".json")):
                        path.unlink(missing_ok=True)
    return removed
