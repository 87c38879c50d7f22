"""The cache tool's decisions, made on the host without an engine: what to ask the tool, in
which image, and which blobs the project's manifests still pin. (Running it: test_docker_cache.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.cache import PruneRequest, blob_users, cache_image
from builder.errors import InputError, ManifestError
from builder.project import Project
from tests.conftest import make_project


def test_a_prune_says_what_to_remove_and_is_a_dry_run_unless_asked() -> None:
    with pytest.raises(InputError, match="say what to prune"):
        PruneRequest().args()
    assert PruneRequest(older_than_days=7.5, partials=True).args() == [
        "prune", "--older-than", "7.5", "--partials", "--dry-run"]
    assert PruneRequest(everything=True, unreferenced=True, max_bytes=10, really=True).args() == [
        "prune", "--all", "--unreferenced", "--max-bytes", "10"]


def test_the_cache_image_is_the_one_asked_for_then_the_environment_then_the_first_manifests(
        tmp_path: Path, demo_manifest_data, monkeypatch) -> None:
    project = make_project(tmp_path, demo_manifest_data, copy_server=False)
    monkeypatch.delenv("BUILDER_CACHE_IMAGE", raising=False)
    assert cache_image(project) == demo_manifest_data["runtime"]["base_image"]
    monkeypatch.setenv("BUILDER_CACHE_IMAGE", "python:3.12-slim")
    assert cache_image(project) == "python:3.12-slim"
    assert cache_image(project, "busybox-with-python") == "busybox-with-python"
    monkeypatch.delenv("BUILDER_CACHE_IMAGE")
    (project.manifests_dir / "demo.yaml").unlink()
    with pytest.raises(ManifestError, match="pass --image"):
        cache_image(project)


def test_blob_users_maps_each_pinned_sha256_to_its_manifests(tmp_path: Path, demo_manifest_data) -> None:
    project = make_project(tmp_path, demo_manifest_data, copy_server=False)
    (project.manifests_dir / "other.yaml").write_text(Path(project.manifests_dir / "demo.yaml").read_text()
                                                      .replace("name: demo", "name: other", 1))
    (project.manifests_dir / "broken.yaml").write_text("name: [")
    users = blob_users(Project(project.root))
    pinned = {a["sha256"] for a in demo_manifest_data["sources"][0]["artifacts"] if a.get("sha256")}
    assert set(users) == pinned
    assert all(names == {"demo", "other"} for names in users.values())
