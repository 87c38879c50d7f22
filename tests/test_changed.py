"""`builder changed`: which manifests a git change affects, on real git histories."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from builder.changed import affected
from builder.errors import InputError
from tests.conftest import run_builder


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}).stdout.strip()


def commit(repo: Path, message: str, files: dict[str, str | None]) -> str:
    for path, text in files.items():
        target = repo / path
        if text is None:
            git(repo, "rm", "-q", path)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        git(repo, "add", path)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    commit(root, "start", {"manifests/a.yaml": "a", "manifests/b.yaml": "b", "manifests/c.yaml": "c",
                           "templates/base.Dockerfile.j2": "x", "server/app.py": "x", "builder/cli.py": "x",
                           "README.md": "x"})
    return root


def test_a_manifest_change_affects_that_manifest_only(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, "bump a", {"manifests/a.yaml": "a2"})
    commit(repo, "docs", {"README.md": "y"})
    assert affected(repo, base) == ["a"]


@pytest.mark.parametrize("path", ["templates/base.Dockerfile.j2", "server/app.py", "builder/cli.py", "pyproject.toml"])
def test_shared_code_affects_every_manifest(repo: Path, path: str) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, "shared", {path: "changed"})
    assert affected(repo, base) == ["a", "b", "c"]


def test_a_deleted_manifest_is_not_built_and_new_ones_are(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, "swap", {"manifests/b.yaml": None, "manifests/d.yaml": "d"})
    assert affected(repo, base) == ["d"]


def test_only_what_the_branch_changed_counts_since_the_merge_base(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, "feature work", {"manifests/c.yaml": "c2"})
    git(repo, "checkout", "-q", "main")
    commit(repo, "meanwhile on main", {"manifests/a.yaml": "a3"})
    main_head = git(repo, "rev-parse", "HEAD")
    assert affected(repo, main_head, "feature") == ["c"]  # the PR's own change, not main's
    assert affected(repo, base, "main") == ["a"]


def test_excluded_manifests_are_left_out(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, "shared", {"server/app.py": "y"})
    assert affected(repo, base, exclude=("a", "c*")) == ["b"]


def test_no_base_means_everything_and_a_bad_base_is_one_line(repo: Path) -> None:
    assert affected(repo, "0" * 40) == ["a", "b", "c"]
    with pytest.raises(InputError, match="--base nope: git cannot compare it with HEAD"):
        affected(repo, "nope")


def test_the_cli_prints_a_json_matrix(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, "bump", {"manifests/b.yaml": "b2", "manifests/c.yaml": "c2"})
    (repo / "templates").mkdir(exist_ok=True)
    result = run_builder(["--root", str(repo), "changed", "--base", base, "--json"], {"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["b", "c"]


# -- --unbuilt: what the registry lacks (issue 22) ---------------------------------------------------
def test_unbuilt_lists_the_manifests_whose_version_the_registry_lacks(tmp_path: Path, registry: str,
                                                                      demo_manifest_data: dict) -> None:
    from builder.changed import unbuilt
    from builder.registry import RegistryClient, RegistryRef
    from tests.conftest import push_fake_image, unique_name

    import yaml

    root = tmp_path / "project"
    (root / "manifests").mkdir(parents=True)
    for name, version in (("a", "1.0.0"), ("b", "2.0.0"), ("c", "1.0.0")):
        (root / "manifests" / f"{name}.yaml").write_text(
            yaml.safe_dump({**demo_manifest_data, "name": name, "version": version}, sort_keys=False))
    namespace = f"{registry}/{unique_name('unbuilt')}"
    push_fake_image(namespace, "a", "1.0.0", "1.0.0", "2026-11-01T00:00:00Z")
    push_fake_image(namespace, "b", "1.0.0", "1.0.0", "2026-11-01T00:00:00Z")  # an older version: 2.0.0 is not built
    client = RegistryClient(RegistryRef.parse(namespace))
    assert unbuilt(root, client) == ["b", "c"]
    assert unbuilt(root, client, exclude=("c",)) == ["b"]


def test_changed_takes_base_or_unbuilt(repo: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for args in ([], ["--base", "HEAD", "--unbuilt"]):
        proc = run_builder(["--root", str(repo), "changed", *args], env)
        assert proc.returncode == 2
        assert proc.stderr.strip() == "error: pass --base REF (what a change affects) or --unbuilt (what the registry " \
                                      "lacks), one of them"
