"""The weights stage's fetcher, run here against the loopback Hub with real huggingface_hub.

The fetcher reads HF_ENDPOINT when huggingface_hub is imported, so each case runs it in a
subprocess with the endpoint set, exactly as the build stage does."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.errors import from_marker
from builder.manifest import Manifest
from builder.render import weights_plan
from tests.localhub import LocalHub

ROOT = Path(__file__).resolve().parent.parent


def run_fetch(plan: dict, export: Path, hub_url: str, tmp_path: Path, token: str | None = None):
    plan_file = tmp_path / "weights.json"
    plan_file.write_text(json.dumps(plan))
    script = (
        "import sys; from pathlib import Path; import builder.fetch as f\n"
        "if len(sys.argv) > 3: f.TOKEN_SECRET = Path(sys.argv[3])\n"
        "sys.exit(f.main(sys.argv[1:3]))\n"
    )
    args = [sys.executable, "-c", script, str(plan_file), str(export)]
    if token is not None:
        secret = tmp_path / "hf_token"
        secret.write_text(token + "\n")
        args.append(str(secret))
    env = {**os.environ, "HF_ENDPOINT": hub_url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def error_of(result: subprocess.CompletedProcess):
    errors = [e for e in map(from_marker, result.stderr.splitlines()) if e is not None]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def demo(demo_manifest_data) -> Manifest:
    return Manifest.model_validate(demo_manifest_data)


def test_fetch_lays_out_verified_layers_with_fixed_metadata(demo, hub: LocalHub, tmp_path: Path, tiny_sd: Path) -> None:
    export = tmp_path / "export"
    result = run_fetch(weights_plan(demo).plan, export, hub.url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fetched 11 files, 6762160 bytes, for demo" in result.stdout
    layers = sorted(p.name for p in export.iterdir())
    assert layers == [f"sha256-{h}" for h in sorted(
        ["5634309f88ff3b40ab842708f0d2604799727b0cb2e42117d50c088ed9492ca4",
         "b1f9201a6513c788b70408de91e0105515f9c2da33f7642e1864c3ed93ceb1e9"])] + ["small"]
    model = export / "small/opt/models/demo"
    unet = model / "unet/diffusion_pytorch_model.safetensors"
    assert unet.is_symlink()
    assert os.readlink(unet) == "../../../weights/sha256/5634309f88ff3b40ab842708f0d2604799727b0cb2e42117d50c088ed9492ca4"
    blob = export / "sha256-5634309f88ff3b40ab842708f0d2604799727b0cb2e42117d50c088ed9492ca4/opt/weights/sha256"
    assert (blob / "5634309f88ff3b40ab842708f0d2604799727b0cb2e42117d50c088ed9492ca4").read_bytes() == \
        (tiny_sd / "unet/diffusion_pytorch_model.safetensors").read_bytes()
    assert (model / "model_index.json").read_bytes() == (tiny_sd / "model_index.json").read_bytes()
    for path in export.rglob("*"):
        stat = path.lstat()
        assert stat.st_mtime_ns == 0, path
        if not path.is_symlink():
            assert stat.st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
    assert not (export / ".staging").exists()


def test_a_wrong_sha256_fails_naming_file_expected_and_actual(demo_manifest_data, hub, tmp_path: Path) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0]["artifacts"][7]["sha256"] = "0" * 64  # unet/config.json
    export = tmp_path / "export"
    error = error_of(run_fetch(weights_plan(Manifest.model_validate(data)).plan, export, hub.url, tmp_path))
    assert type(error).__name__ == "ChecksumMismatch"
    assert str(error) == (
        "demo: unet/config.json from builder-demo/tiny-sd@abaa7aa9b35f: sha256 mismatch: expected "
        + "0" * 64 + ", got 2fb1db3e93bcde65dd281bd21a4645a0610b74a85bfecea4f1f51eb42b696430"
    )


def test_a_wrong_size_fails_before_hashing(demo_manifest_data, hub, tmp_path: Path) -> None:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0]["artifacts"][0]["size"] = 320
    error = error_of(run_fetch(weights_plan(Manifest.model_validate(data)).plan, tmp_path / "e", hub.url, tmp_path))
    assert "README.md from builder-demo/tiny-sd@abaa7aa9b35f: size mismatch: expected 320 bytes, got 321" in str(error)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.update(repo_id="builder-demo/nope"), "repository builder-demo/nope not found at http://"),
        (lambda s: s.update(revision="f" * 40), f"revision {'f' * 40} not found in builder-demo/tiny-sd"),
        (lambda s: s["artifacts"][0].update(path="MISSING.md"), "MISSING.md not found in builder-demo/tiny-sd@abaa7aa9b35f"),
    ],
)
def test_hub_errors_are_one_actionable_line(demo_manifest_data, hub, tmp_path: Path, change, expected: str) -> None:
    data = copy.deepcopy(demo_manifest_data)
    change(data["sources"][0])
    error = error_of(run_fetch(weights_plan(Manifest.model_validate(data)).plan, tmp_path / "e", hub.url, tmp_path))
    assert type(error).__name__ == "DownloadError"
    assert expected in str(error), str(error)
    assert "\n" not in str(error)


@pytest.fixture(scope="module")
def gated_hub(tmp_path_factory, tiny_sd: Path):
    with LocalHub(tmp_path_factory.mktemp("gated")) as local_hub:
        commit = local_hub.publish("builder-demo/tiny-sd-gated", tiny_sd, gated_tokens={"hf_right_token"})
        yield local_hub, commit


def _gated_plan(demo_manifest_data, commit: str) -> dict:
    data = copy.deepcopy(demo_manifest_data)
    data["sources"][0].update(repo_id="builder-demo/tiny-sd-gated", revision=commit, gated=True)
    data["sources"][0]["artifacts"] = data["sources"][0]["artifacts"][:2]
    return weights_plan(Manifest.model_validate(data)).plan


def test_gated_repo_without_token_says_to_accept_the_licence(demo_manifest_data, gated_hub, tmp_path: Path) -> None:
    local_hub, commit = gated_hub
    error = error_of(run_fetch(_gated_plan(demo_manifest_data, commit), tmp_path / "e", local_hub.url, tmp_path))
    assert "is gated and no token was passed: accept its licence at" in str(error)
    assert "set HF_TOKEN" in str(error)


def test_gated_repo_with_a_token_lacking_access(demo_manifest_data, gated_hub, tmp_path: Path) -> None:
    local_hub, commit = gated_hub
    result = run_fetch(_gated_plan(demo_manifest_data, commit), tmp_path / "e", local_hub.url, tmp_path, token="hf_wrong")
    assert "the token passed has no access: accept the licence" in str(error_of(result))
    assert "hf_wrong" not in result.stderr + result.stdout


def test_gated_repo_with_the_right_token_from_the_secret_file(demo_manifest_data, gated_hub, tmp_path: Path) -> None:
    local_hub, commit = gated_hub
    local_hub.clear_log()
    result = run_fetch(_gated_plan(demo_manifest_data, commit), tmp_path / "e", local_hub.url, tmp_path, token="hf_right_token")
    assert result.returncode == 0, result.stderr
    assert "hf_right_token" not in result.stderr + result.stdout
    downloads = [r for r in local_hub.requests if "/resolve/" in r.path and r.method == "GET"]
    assert downloads and all(r.token == "hf_right_token" for r in downloads)
