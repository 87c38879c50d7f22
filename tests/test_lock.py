"""`builder lock` and `lock --check` against the loopback Hub."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

from tests.conftest import ROOT, run_builder
from tests.localhub import LocalHub

UNLOCKED = """\
# A manifest before locking: a branch, an include pattern, artifacts without hashes.
name: demo
version: "0.1.0"   # quoted on purpose: the lock must keep it
profile: experimental
task: text-to-image
license: {name: Apache License 2.0, spdx: Apache-2.0, commercial_use: true}
sources:
  - repo_id: {repo}
    revision: main  # follows main until locked
    include: ["*.json"]
    exclude: ["tokenizer/*"]
    artifacts:
      - {path: unet/diffusion_pytorch_model.safetensors}  # LFS: hash from the Hub's metadata
      - {path: README.md}
entrypoint: {loader: diffusers, class_name: StableDiffusionPipeline}
runtime:
  base_image: builder-local/python-cpu:3.11
  python: "3.11"
smoke_test:
  inputs: {prompt: a cat}
  max_seconds: 60
  expect: {kind: image, width: 64, height: 64}
"""


def project_with(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "project"
    (root / "manifests").mkdir(parents=True)
    for part in ("templates", "server"):
        (root / part).symlink_to(ROOT / part)
    (root / "manifests" / "demo.yaml").write_text(text)
    return root


def lock(root: Path, env: dict, *args: str):
    return run_builder(["--root", str(root), "lock", "demo", *args], env)


def test_lock_pins_commit_files_hashes_and_sizes_and_keeps_the_text(tmp_path, hub: LocalHub, isolated_env, demo_manifest_data) -> None:
    root = project_with(tmp_path, UNLOCKED.replace("{repo}", "builder-demo/tiny-sd"))
    check = lock(root, isolated_env, "--check")
    assert check.returncode == 1
    assert "error: 1 of 1 manifests need `python -m builder lock`" in check.stderr
    assert "revision main -> abaa7aa9b35fd02bf64efe884bc3f8ed67316a6f" in check.stdout

    hub.clear_log()
    result = lock(root, isolated_env)
    assert result.returncode == 0, result.stderr
    text = (root / "manifests/demo.yaml").read_text()
    assert text.startswith("# A manifest before locking")
    assert 'version: "0.1.0"   # quoted on purpose' in text and "# LFS: hash from the Hub's metadata" in text
    data = yaml.safe_load(text)
    source = data["sources"][0]
    assert source["revision"] == "abaa7aa9b35fd02bf64efe884bc3f8ed67316a6f" and source["ref"] == "main"
    expected = {a["path"]: (a["sha256"], a["size"]) for a in demo_manifest_data["sources"][0]["artifacts"]}
    locked = {a["path"]: (a["sha256"], a["size"]) for a in source["artifacts"]}
    wanted = {"unet/diffusion_pytorch_model.safetensors", "README.md", "model_index.json", "scheduler/scheduler_config.json",
              "text_encoder/config.json", "unet/config.json", "vae/config.json"}
    assert locked == {path: expected[path] for path in wanted}  # the Hub's metadata and our hashing agree
    assert "  - {path: vae/config.json, size: 643, sha256: c03495fe" in text  # one flow-style line per file
    # the LFS file's hash came from metadata; the plain-git files were downloaded and hashed
    fetched = [r.path.rsplit("/resolve/", 1)[1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path]
    assert "abaa7aa9b35fd02bf64efe884bc3f8ed67316a6f/README.md" in fetched
    assert not [p for p in fetched if p.endswith(".safetensors")]

    again = lock(root, isolated_env, "--check")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().endswith("manifests/demo.yaml: locked and up to date")
    assert run_builder(["--root", str(root), "validate"], isolated_env).returncode == 0


def test_check_fails_when_the_followed_branch_moved(tmp_path, hub: LocalHub, isolated_env) -> None:
    repo = tmp_path / "moving"
    repo.mkdir()
    (repo / "README.md").write_text("first\n")
    (repo / "config.json").write_text("{}\n")
    first = hub.publish("builder-test/moving", repo)
    root = project_with(tmp_path, UNLOCKED.replace("{repo}", "builder-test/moving").replace(
        "      - {path: unet/diffusion_pytorch_model.safetensors}  # LFS: hash from the Hub's metadata\n", ""))
    assert lock(root, isolated_env).returncode == 0
    assert yaml.safe_load((root / "manifests/demo.yaml").read_text())["sources"][0]["revision"] == first

    (repo / "README.md").write_text("second\n")
    second = hub.publish("builder-test/moving", repo)
    stale = lock(root, isolated_env, "--check")
    assert stale.returncode == 1
    assert f"revision {first} -> {second} (main is now {second})" in stale.stdout
    new_hash = hashlib.sha256(b"second\n").hexdigest()
    assert f"README.md: sha256/size" in stale.stdout and new_hash in stale.stdout


def test_an_unapproved_hf_endpoint_is_refused(tmp_path, isolated_env) -> None:
    root = project_with(tmp_path, UNLOCKED.replace("{repo}", "builder-demo/tiny-sd"))
    result = lock(root, {**isolated_env, "HF_ENDPOINT": "https://hf-mirror.com"})
    assert result.returncode == 2
    assert "HF_ENDPOINT https://hf-mirror.com is not an approved mirror" in result.stderr.strip().splitlines()[-1]


def test_an_include_pattern_matching_nothing_is_one_line(tmp_path, isolated_env) -> None:
    root = project_with(tmp_path, UNLOCKED.replace("{repo}", "builder-demo/tiny-sd").replace('["*.json"]', '["*.json", "*.bin"]'))
    result = lock(root, isolated_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: demo: include pattern '*.bin' matches no file in builder-demo/tiny-sd: fix or remove it")


def test_a_listed_file_missing_from_the_repo_is_one_line(tmp_path, isolated_env) -> None:
    root = project_with(tmp_path, UNLOCKED.replace("{repo}", "builder-demo/tiny-sd").replace("{path: README.md}", "{path: NOPE.md}"))
    result = lock(root, isolated_env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: demo: NOPE.md is not in builder-demo/tiny-sd@abaa7aa9b35f: fix the artifact's path")


def test_lock_resolves_a_space_source(tmp_path, hub: LocalHub, isolated_env, tiny_sd: Path, demo_manifest_data) -> None:
    """A source with repo_type: space (the InstantID Space hosts the antelopev2 face models) is
    looked up and fetched under the Hub's /spaces/ routes, not as the model of the same name."""
    commit = hub.publish("builder-test/sd-space", tiny_sd, repo_type="space")
    text = UNLOCKED.replace("  - repo_id: {repo}\n", "  - repo_id: builder-test/sd-space\n    repo_type: space\n")
    root = project_with(tmp_path, text)
    hub.clear_log()
    result = lock(root, isolated_env)
    assert result.returncode == 0, result.stderr
    source = yaml.safe_load((root / "manifests/demo.yaml").read_text())["sources"][0]
    assert source["repo_type"] == "space" and source["revision"] == commit
    expected = {a["path"]: (a["sha256"], a["size"]) for a in demo_manifest_data["sources"][0]["artifacts"]}
    assert all(expected[a["path"]] == (a["sha256"], a["size"]) for a in source["artifacts"])
    paths = [r.path for r in hub.requests]
    assert any(p.startswith("/api/spaces/builder-test/sd-space") for p in paths)
    assert any(p.startswith("/spaces/builder-test/sd-space/resolve/") for p in paths)
    assert not any(p.startswith("/api/models/builder-test/sd-space") for p in paths)
