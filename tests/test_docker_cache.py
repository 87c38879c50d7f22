"""The host's weights cache inside real builds: shared by builds and models, outside Docker."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_project, run_builder
from tests.localhub import LocalHub
from tests.test_docker_build import DOCKER, build, demo_variant, result_of, with_unique_repo

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]


def resolve_gets(hub: LocalHub) -> list[str]:
    return [r.path.rsplit("/", 1)[1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]


def test_shared_files_are_downloaded_once_across_builds_and_models(
    tmp_path: Path, hub: LocalHub, tiny_sd: Path, isolated_env: dict, demo_manifest_data: dict
) -> None:
    env = {**isolated_env, "BUILDER_WEIGHTS_CACHE": str(tmp_path / "cache")}  # its own: this test prunes it
    first = with_unique_repo(demo_variant(demo_manifest_data, "share-a"), hub, tiny_sd, tmp_path / "a")
    second = with_unique_repo(demo_variant(demo_manifest_data, "share-b"), hub, tiny_sd, tmp_path / "b")
    project_a = make_project(tmp_path / "a", first)
    project_b = make_project(tmp_path / "b", second)

    result_of(build(project_a.root, first["name"], env, "--no-push"))
    # The same manifest again, every step rebuilt: the cache serves every file.
    hub.clear_log()
    again = result_of(build(project_a.root, first["name"], env, "--no-push", "--no-cache"))
    assert resolve_gets(hub) == [] and again["downloaded_bytes"] == 0

    # `docker builder prune` and `docker image prune` empty what Docker keeps; the weights are not there.
    subprocess.run([DOCKER, "builder", "prune", "-af"], check=True, capture_output=True)
    hub.clear_log()
    result_of(build(project_a.root, first["name"], env, "--no-push"))
    assert resolve_gets(hub) == []

    # Another model holding the same files (all but its README): only the README comes down.
    hub.clear_log()
    other = result_of(build(project_b.root, second["name"], env, "--no-push"))
    assert resolve_gets(hub) == ["README.md"]
    assert other["downloaded_bytes"] == second["sources"][0]["artifacts"][0]["size"]

    # Every attempt is in the ledger, and stats reads it.
    stats = run_builder(["stats", "--json"], env)
    assert stats.returncode == 0, stats.stderr
    rows = {row["mirror"]: row for row in json.loads(stats.stdout)}
    assert rows["local"]["ok"] >= 2 and rows["local"]["failed"] == 0
    table = run_builder(["stats", first["name"]], env)
    assert "local" in table.stdout and "100%" in table.stdout

    # The cache as the host sees it, and pruning what no manifest of project A pins.
    listing = run_builder(["--root", str(project_a.root), "cache", "ls", "--json"], env)
    assert listing.returncode == 0, listing.stderr
    blobs = {row["sha256"]: row for row in json.loads(listing.stdout) if row["kind"] == "blob"}
    readme_a = first["sources"][0]["artifacts"][0]["sha256"]
    readme_b = second["sources"][0]["artifacts"][0]["sha256"]
    assert blobs[readme_a]["used_by"] == [first["name"]] and readme_b in blobs

    dry = run_builder(["--root", str(project_a.root), "cache", "prune", "--unreferenced"], env)
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {readme_b}" in dry.stdout and readme_a not in dry.stdout and "(dry run: add --yes)" in dry.stdout
    pruned = run_builder(["--root", str(project_a.root), "cache", "prune", "--unreferenced", "--yes"], env)
    assert pruned.returncode == 0 and f"removed {readme_b}" in pruned.stdout
    after = run_builder(["--root", str(project_a.root), "cache", "ls", "--json"], env)
    remaining = {row["sha256"] for row in json.loads(after.stdout) if row["kind"] == "blob"}
    assert readme_a in remaining and readme_b not in remaining

    # With its blob gone, model B's build has to fetch that file again.
    hub.clear_log()
    result_of(build(project_b.root, second["name"], env, "--no-push", "--no-cache"))
    assert resolve_gets(hub) == ["README.md"]

    # verify finds nothing wrong in a healthy cache.
    verified = run_builder(["cache", "verify"], env)
    assert verified.returncode == 0 and ": 0 corrupt" in verified.stdout


def test_two_cold_builds_that_share_files_start_together_and_each_file_comes_down_once(
    tmp_path: Path, hub: LocalHub, tiny_sd: Path, isolated_env: dict, demo_manifest_data: dict
) -> None:
    env = {**isolated_env, "BUILDER_WEIGHTS_CACHE": str(tmp_path / "cache")}  # cold: nothing in it
    projects = []
    shared = with_unique_repo(demo_variant(demo_manifest_data, "twin"), hub, tiny_sd, tmp_path / "repo")
    for twin in ("a", "b"):
        data = {**shared, "name": f"{shared['name']}-{twin}"}
        projects.append((make_project(tmp_path / twin, data).root, data["name"]))
    hub.clear_log()
    procs = [subprocess.Popen([sys.executable, "-m", "builder", "--root", str(root), "build", name, "--no-push", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for root, name in projects]
    results = [proc.communicate(timeout=900) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr[-3000:]
        assert json.loads(stdout)["smoke"]["passed"]
    counts = Counter(resolve_gets(hub))
    assert set(counts) == {a["path"].rsplit("/", 1)[-1] for a in shared["sources"][0]["artifacts"]}
    # Each file once (a large file in ranges: each range once), whichever build fetched it.
    paths = Counter((r.path, r.range) for r in hub.requests if r.method == "GET" and "/resolve/" in r.path)
    assert max(paths.values()) == 1, paths
    downloaded = [json.loads(out)["downloaded_bytes"] for out, _ in results]
    assert sum(downloaded) == sum(a["size"] for a in shared["sources"][0]["artifacts"])


def test_prune_without_a_rule_is_bad_input(isolated_env: dict) -> None:
    result = run_builder(["cache", "prune"], isolated_env)
    assert result.returncode == 2
    assert "say what to prune" in result.stderr.strip().splitlines()[-1]
