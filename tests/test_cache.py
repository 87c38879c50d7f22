"""The host's weights cache as `builder cache` sees it, without an engine: what to prune, in which
order, what a running build holds, what verify finds. (In real builds: test_docker_cache.py.)"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from builder.cache import PruneRequest, blob_users, listing, prune, verify
from builder.errors import InputError
from builder.fetch import ContentCache
from builder.project import Project
from tests.conftest import make_project


def _cache(tmp_path: Path, **blobs: bytes) -> tuple[ContentCache, dict[str, str]]:
    cache = ContentCache(tmp_path / "cache")
    shas = {}
    for name, data in blobs.items():
        sha = hashlib.sha256(data).hexdigest()
        part = cache.partial(sha)
        part.write_bytes(data)
        cache.insert(part, sha)
        shas[name] = sha
    return cache, shas


def test_a_prune_must_say_what_to_remove() -> None:
    with pytest.raises(InputError, match="say what to prune"):
        PruneRequest().check()
    assert PruneRequest(partials=True).check().partials


def test_prune_is_a_dry_run_unless_asked_and_goes_least_recently_used_first(tmp_path: Path) -> None:
    cache, shas = _cache(tmp_path, old=b"o" * 100, new=b"n" * 100)
    old_used = cache.root / "used" / shas["old"]
    os.utime(old_used, (time.time() - 10 * 86400,) * 2)
    dry = prune(cache, PruneRequest(older_than_days=5))
    assert [r["sha256"] for r in dry] == [shas["old"]] and dry[0]["dry_run"] and cache.has(shas["old"])
    gone = prune(cache, PruneRequest(max_bytes=150, really=True))
    assert [r["sha256"] for r in gone] == [shas["old"]] and not cache.has(shas["old"]) and cache.has(shas["new"])


def test_prune_keeps_what_it_is_told_and_what_a_running_build_holds(tmp_path: Path) -> None:
    cache, shas = _cache(tmp_path, a=b"a", b=b"b", c=b"c")
    with cache.locked(shas["b"]):  # a build fetching or reading it
        removed = prune(cache, PruneRequest(everything=True, really=True), keep={shas["a"]})
    assert [r["sha256"] for r in removed] == [shas["c"]]
    assert cache.has(shas["a"]) and cache.has(shas["b"]) and not cache.has(shas["c"])


def test_listing_shows_blobs_and_partial_downloads(tmp_path: Path) -> None:
    cache, shas = _cache(tmp_path, a=b"aaaa")
    cache.partial("f" * 64).write_bytes(b"half")
    rows = listing(cache)
    assert {(r["kind"], r.get("sha256") or r.get("key"), r["size"]) for r in rows} == {
        ("blob", shas["a"], 4), ("partial", "f" * 64, 4)}


def test_verify_hashes_every_blob_and_removes_a_corrupt_one(tmp_path: Path) -> None:
    cache, shas = _cache(tmp_path, good=b"good", bad=b"bad!")
    blob = cache.blob(shas["bad"])
    blob.chmod(0o644)
    blob.write_bytes(b"BAD!")
    rows = {r["sha256"]: r["ok"] for r in verify(cache)}
    assert rows == {shas["good"]: True, shas["bad"]: False}
    assert cache.has(shas["good"]) and not cache.has(shas["bad"])


def test_blob_users_maps_each_pinned_sha256_to_its_manifests(tmp_path: Path, demo_manifest_data) -> None:
    project = make_project(tmp_path, demo_manifest_data, copy_server=False)
    (project.manifests_dir / "other.yaml").write_text(Path(project.manifests_dir / "demo.yaml").read_text()
                                                      .replace("name: demo", "name: other", 1))
    (project.manifests_dir / "broken.yaml").write_text("name: [")
    users = blob_users(Project(project.root))
    pinned = {a["sha256"] for a in demo_manifest_data["sources"][0]["artifacts"] if a.get("sha256")}
    assert set(users) == pinned
    assert all(names == {"demo", "other"} for names in users.values())
