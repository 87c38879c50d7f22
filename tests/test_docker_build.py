"""The spine end to end, for real: dockerd with BuildKit, a CNCF registry, huggingface_hub
against the loopback Hub, the smoke test inside the built image, the server over HTTP."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
import requests

from builder.registry import RegistryClient, RegistryRef
from tests.conftest import ROOT, free_port, make_project, run_builder, unique_name, wait_for, write_config
from tests.engines import second_engine
from tests.localhub import Fault, LocalHub

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]
DOCKER = "/usr/bin/docker"


def build(project_root: Path | None, name: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    root = ["--root", str(project_root)] if project_root else []
    return run_builder([*root, "build", name, "--json", *args], env)


def result_of(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def last_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def weight_layers(config: dict, large_only: bool = False) -> list[str]:
    """diff ids of the weights layers the builder spliced in (its history entries say so)."""
    layered = [h for h in config["history"] if not h.get("empty_layer")]
    assert len(layered) == len(config["rootfs"]["diff_ids"])
    prefix = "builder: weights sha256-" if large_only else "builder: weights "
    return [d for h, d in zip(layered, config["rootfs"]["diff_ids"]) if h.get("created_by", "").startswith(prefix)]


def docker_out(*args: str) -> str:
    return subprocess.run([DOCKER, *args], capture_output=True, text=True, check=True).stdout


def local_tags(repository_part: str) -> list[str]:
    listing = docker_out("images", "--format", "{{.Repository}}:{{.Tag}}")
    return [line for line in listing.splitlines() if repository_part in line]


def demo_variant(demo_manifest_data: dict, prefix: str) -> dict:
    data = copy.deepcopy(demo_manifest_data)
    data["name"] = unique_name(prefix)
    return data


def with_unique_repo(data: dict, hub: LocalHub, tiny_sd: Path, tmp_path: Path, gated_tokens: set[str] | None = None) -> dict:
    """Point data at a fresh copy of the tiny model whose README is unique, so the shared weights
    cache cannot serve that file and the build must ask the Hub for it."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_sd, repo)
    readme = f"# {data['name']}\n{uuid.uuid4()}\n".encode()
    (repo / "README.md").write_bytes(readme)
    repo_id = f"builder-test/{data['name']}"
    commit = hub.publish(repo_id, repo, gated_tokens=gated_tokens)
    data["sources"][0].update(repo_id=repo_id, revision=commit, gated=gated_tokens is not None)
    data["sources"][0]["artifacts"][0].update(sha256=hashlib.sha256(readme).hexdigest(), size=len(readme))
    return data


def test_demo_builds_smokes_pushes_and_pulls_back_by_digest(registry: str, isolated_env: dict, tmp_path: Path) -> None:
    namespaced = f"{registry}/{unique_name('ns')}"
    result = result_of(build(None, "demo", isolated_env, "--registry", namespaced))
    assert result["pushed"] and result["smoke"]["passed"]
    assert result["smoke"]["device"] == "cpu"
    reference = result["digest_reference"]
    assert reference.startswith(f"{namespaced}/demo@sha256:")
    assert result["run_commands"][0] == f"docker run --rm --network host -e PORT=8000 {reference}"

    # The builder pushed it: each weights layer uncompressed (blob digest = diff id), spliced in
    # below the server code; the rest gzip; the config is the image the smoke ran on.
    client = RegistryClient(RegistryRef.parse(namespaced))
    manifest = json.loads(client.manifest("demo", reference.split("@", 1)[1])[0])
    config = client.config("demo", reference.split("@", 1)[1])
    assert manifest["config"]["digest"] == result["image_id"]
    assert result["smoke_via"] == "mounts" and result["code_image_id"] != result["image_id"]
    weights = weight_layers(config)
    assert len(weight_layers(config, large_only=True)) == 2, "unet and vae are over the demo's large_file_bytes"
    assert len(weights) == 3  # and the small files together
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        uncompressed = layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
        assert uncompressed == (diff_id in weights)
        assert (layer["digest"] == diff_id) == uncompressed
    made = [h.get("created_by", "") for h in config["history"] if not h.get("empty_layer")]
    assert made[-2:] == ["COPY server/ /app/server/ # buildkit", "COPY manifest.json /app/manifest.json # buildkit"]
    assert all(m.startswith("builder: weights ") for m in made[-5:-2])

    # Pulled by digest into an engine that shares no layer with the build, it passes its smoke there.
    with second_engine(tmp_path / "engine") as other:
        pulled = other.images.pull(reference)
        assert pulled.id == result["image_id"]
        out = other.containers.run(pulled.id, ["python3", "-m", "server.smoke"], network_mode="none", remove=True,
                                   environment={"BUILDER_DEVICE": "cpu"})
        smoke = json.loads(out.decode().strip().splitlines()[-1])
        assert smoke["passed"] is True and smoke["device"] == "cpu"

    # Pull it back by digest (the build engine holds the code image only) and check what it says about itself.
    assert local_tags(f"{namespaced}/demo") == []
    docker_out("pull", reference)
    inspect = json.loads(docker_out("image", "inspect", reference))[0]
    labels = inspect["Config"]["Labels"]
    assert labels["io.builder.model.id"] == "builder-demo/tiny-sd"
    assert labels["io.builder.model.revision"] == "abaa7aa9b35fd02bf64efe884bc3f8ed67316a6f"
    assert labels["io.builder.manifest.version"] == labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["io.builder.manifest.digest"].startswith("sha256:")
    assert inspect["Config"]["User"] == "10001:10001"
    assert "HF_HUB_OFFLINE=1" in inspect["Config"]["Env"]
    assert inspect["Config"]["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "server.healthcheck"]

    # The pulled image serves: /ready, then a PNG from /v1/predict, with no network but loopback.
    port = free_port()
    container = docker_out("run", "-d", "--rm", "--network", "host", "-e", f"PORT={port}", reference).strip()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(f"{url}/ready", timeout=2).status_code == 200, 90, "the pulled image's /ready",
                 lambda: None if container in docker_out("ps", "-q", "--no-trunc") else "the container exited")
        response = requests.post(f"{url}/v1/predict", headers={"Accept": "image/png"}, timeout=60,
                                 json={"prompt": "a cat", "width": 64, "height": 64, "num_inference_steps": 2})
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    finally:
        subprocess.run([DOCKER, "rm", "-f", container], capture_output=True)

    # Building the same thing again is a no-op success: same image, same digest, nothing pushed.
    again = result_of(build(None, "demo", isolated_env, "--registry", namespaced))
    assert again["already_in_registry"] and not again["pushed"]
    assert again["digest_reference"] == reference


def test_a_wrong_sha256_fails_the_build_and_nothing_is_tagged_or_pushed(
    tmp_path: Path, registry: str, isolated_env: dict, demo_manifest_data: dict
) -> None:
    data = demo_variant(demo_manifest_data, "badsha")
    data["sources"][0]["artifacts"][7]["sha256"] = "e" * 64  # unet/config.json: downloaded, then hashed
    project = make_project(tmp_path, data)
    proc = build(project.root, data["name"], isolated_env, "--registry", registry)
    assert proc.returncode == 1
    assert last_line(proc) == (
        f"error: {data['name']}: unet/config.json from builder-demo/tiny-sd@abaa7aa9b35f via local: "
        f"sha256 mismatch: expected {'e' * 64}, "
        "got 2fb1db3e93bcde65dd281bd21a4645a0610b74a85bfecea4f1f51eb42b696430"
    )
    assert local_tags(data["name"]) == []
    assert RegistryClient(RegistryRef.parse(registry)).tags(data["name"]) == []


def test_a_failed_smoke_tags_and_pushes_nothing(
    tmp_path: Path, registry: str, isolated_env: dict, demo_manifest_data: dict
) -> None:
    data = demo_variant(demo_manifest_data, "badsmoke")
    data["smoke_test"]["expect"] = {"kind": "image", "width": 128, "height": 64}
    project = make_project(tmp_path, data)
    proc = build(project.root, data["name"], isolated_env, "--registry", registry)
    assert proc.returncode == 1
    assert last_line(proc) == (
        f"error: {data['name']}: smoke test failed: image is 64x64, expected 128x64; nothing was tagged or pushed"
    )
    assert local_tags(data["name"]) == []
    assert RegistryClient(RegistryRef.parse(registry)).tags(data["name"]) == []


def test_the_token_reaches_the_hub_and_nowhere_else(
    tmp_path: Path, hub: LocalHub, tiny_sd: Path, isolated_env: dict, demo_manifest_data: dict
) -> None:
    sentinel = f"hf_SENTINEL{unique_name('tok').replace('-', '')}"
    data = with_unique_repo(demo_variant(demo_manifest_data, "token"), hub, tiny_sd, tmp_path, gated_tokens={sentinel})
    gated_repo = data["sources"][0]["repo_id"]
    data["description"] = 'quoted " $(touch /tmp/pwned) ${HOME} \\ kept literally'
    project = make_project(tmp_path, data)
    hub.clear_log()
    proc = build(project.root, data["name"], {**isolated_env, "HF_TOKEN": sentinel}, "--no-push")
    result = result_of(proc)
    assert sentinel not in proc.stdout + proc.stderr

    # It did reach the Hub for the file the cache could not serve: the build could not have passed otherwise.
    downloads = [r for r in hub.requests if f"/{gated_repo}/resolve/" in r.path and r.method == "GET"]
    assert "README.md" in [r.path.rsplit("/", 1)[1] for r in downloads]
    assert {r.token for r in downloads} == {sentinel}

    image = result["image_id"]
    assert result["smoke_via"] == "image"  # --no-push: the image itself was loaded into the engine
    assert sentinel not in docker_out("history", "--no-trunc", image)
    assert sentinel not in docker_out("history", "--no-trunc", result["code_image_id"])
    inspect = docker_out("image", "inspect", image)
    assert sentinel not in inspect
    labels = json.loads(inspect)[0]["Config"]["Labels"]
    assert labels["org.opencontainers.image.description"] == data["description"]

    saved = tmp_path / "image.tar"
    docker_out("save", "-o", str(saved), image)
    needle = sentinel.encode()
    with tarfile.open(saved) as archive:
        members = [m for m in archive.getmembers() if m.isfile()]
        assert any(m.name.endswith("layer.tar") for m in members)
        for member in members:
            data_bytes = archive.extractfile(member).read()  # type: ignore[union-attr]
            assert needle not in data_bytes, f"token found in {member.name}"
    saved.unlink()


def test_two_no_cache_builds_give_identical_weight_layers(
    tmp_path: Path, registry: str, isolated_env: dict, demo_manifest_data: dict
) -> None:
    data = demo_variant(demo_manifest_data, "repro")
    client = RegistryClient(RegistryRef.parse(registry))
    layers = []
    for version in ("1.0.0", "1.0.1"):
        data["version"] = version
        project = make_project(tmp_path / version, data)
        result_of(build(project.root, data["name"], isolated_env, "--registry", registry, "--no-cache"))
        config = client.config(data["name"], version)
        assert config is not None
        layers.append(weight_layers(config))
    assert len(layers[0]) == 3  # unet and vae alone, the small files together
    assert layers[0] == layers[1]


def test_a_server_code_change_rebuilds_without_touching_the_weights(
    tmp_path: Path, registry: str, hub: LocalHub, tiny_sd: Path, isolated_env: dict, demo_manifest_data: dict
) -> None:
    data = with_unique_repo(demo_variant(demo_manifest_data, "codechange"), hub, tiny_sd, tmp_path)
    project = make_project(tmp_path, data)
    client = RegistryClient(RegistryRef.parse(registry))
    hub.clear_log()
    first = result_of(build(project.root, data["name"], isolated_env, "--registry", registry))
    assert [r for r in hub.requests if "/resolve/" in r.path], "the first build must fetch from the Hub"
    first_config = client.config(data["name"], data["version"])

    app = project.server_dir / "app.py"
    app.write_text(app.read_text() + "\n# a code-only change\n")
    data["version"] = "0.1.1"
    (project.manifests_dir / f"{data['name']}.yaml").write_text(
        (project.manifests_dir / f"{data['name']}.yaml").read_text().replace("version: 0.1.0", "version: 0.1.1")
    )
    hub.clear_log()
    second = result_of(build(project.root, data["name"], isolated_env, "--registry", registry))
    assert hub.requests == [], "a code-only rebuild asked the Hub for something"
    second_config = client.config(data["name"], "0.1.1")
    assert weight_layers(first_config) == weight_layers(second_config)
    assert first_config["rootfs"]["diff_ids"] != second_config["rootfs"]["diff_ids"]
    assert first["image_id"] != second["image_id"]

    # Pushing changed content under the version already pushed is refused.
    data["version"] = "0.1.0"
    (project.manifests_dir / f"{data['name']}.yaml").write_text(
        (project.manifests_dir / f"{data['name']}.yaml").read_text().replace("version: 0.1.1", "version: 0.1.0")
    )
    app.write_text(app.read_text() + "# and another\n")
    proc = build(project.root, data["name"], isolated_env, "--registry", registry)
    assert proc.returncode == 1
    line = last_line(proc)
    assert f"{registry}/{data['name']}:0.1.0 already exists with other content" in line
    assert "versions are immutable: bump version in" in line
    assert client.image(data["name"], "0.1.0").digest == first["digest_reference"].split("@")[1]


def test_a_base_image_without_the_manifests_python_fails_with_one_line(
    tmp_path: Path, isolated_env: dict, demo_manifest_data: dict
) -> None:
    data = demo_variant(demo_manifest_data, "pyver")
    data["runtime"]["python"] = "3.12"
    project = make_project(tmp_path, data)
    proc = build(project.root, data["name"], isolated_env, "--no-push")
    assert proc.returncode == 2
    assert last_line(proc) == (
        "error: the base image has Python 3.11, the manifest says 3.12: fix runtime.python or runtime.base_image"
    )



def _ledger_rows(path: Path, query: str, *args: object) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return list(db.execute(query, args))


def test_mirror_credentials_and_the_token_stay_out_of_the_build_log_and_the_ledger(
    tmp_path: Path, hub: LocalHub, tiny_sd: Path, isolated_env: dict, demo_manifest_data: dict
) -> None:
    """Through a real build: a mirror that cannot be reached, then one that serves bytes that do
    not match; both URLs carry a password, and a token is set."""
    password, token = "mirror-pw-SENTINEL-d41c", "hf_SENTINELbuild0123456789abcdefghij"
    data = with_unique_repo(demo_variant(demo_manifest_data, "secret"), hub, tiny_sd, tmp_path)
    data["sources"][0]["artifacts"][0]["sha256"] = "e" * 64  # README.md: downloaded, then refused
    project = make_project(tmp_path, data)
    config = write_config(tmp_path / "builder.yaml", ("dead", f"http://builder:{password}@127.0.0.1:9"),
                          ("private", hub.url.replace("http://", f"http://builder:{password}@")),
                          fetch={"attempts": 2, "backoff_base": 0.05, "backoff_max": 0.2, "connect_timeout": 2})
    env = {**isolated_env, "BUILDER_CONFIG": str(config), "HF_TOKEN": token}
    proc = run_builder(["--root", str(project.root), "build", data["name"], "--no-push"], env)
    assert proc.returncode == 1
    assert "all 2 mirrors failed" in last_line(proc)
    assert "retrying" in proc.stderr and "via dead" in proc.stderr  # the build log was echoed
    assert "SENTINEL" not in proc.stdout + proc.stderr
    ledger = Path(isolated_env["BUILDER_LEDGER"])
    builds = _ledger_rows(ledger, "SELECT id, status, error FROM builds WHERE model = ?", data["name"])
    assert [b[1] for b in builds] == ["failed"] and "all 2 mirrors failed" in builds[0][2]
    attempts = _ledger_rows(ledger, "SELECT mirror, outcome, error FROM download_attempts WHERE build_id = ?",
                            builds[0][0])
    assert {(m, o) for m, o, _ in attempts} >= {("dead", "failed"), ("private", "failed")}
    assert "SENTINEL" not in repr(builds) + repr(attempts)


def test_a_killed_build_keeps_the_attempts_it_made(
    tmp_path: Path, hub: LocalHub, tiny_sd: Path, isolated_env: dict, demo_manifest_data: dict
) -> None:
    data = with_unique_repo(demo_variant(demo_manifest_data, "killed"), hub, tiny_sd, tmp_path)
    project = make_project(tmp_path, data)
    # README.md (unique to this build) stalls; the other files, cached or downloaded, finish first.
    hub.inject(Fault("stall", path=f"{data['sources'][0]['repo_id']}/resolve/{data['sources'][0]['revision']}/README.md",
                     method="GET", times=-1, stall_seconds=120))
    ledger = Path(isolated_env["BUILDER_LEDGER"])
    proc = subprocess.Popen([sys.executable, "-m", "builder", "--root", str(project.root), "build", data["name"],
                             "--no-push"], env=isolated_env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def recorded() -> bool:
            try:
                return ledger.exists() and bool(_ledger_rows(
                    ledger, "SELECT 1 FROM download_attempts WHERE model = ? AND outcome IN ('ok', 'cached')",
                    data["name"]))
            except sqlite3.OperationalError:  # the file is there, its tables not yet
                return False

        wait_for(recorded, 600, "a finished file in the ledger while the build runs",
                 lambda: f"the build ended first (exit {proc.returncode})" if proc.poll() is not None else None)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the builder and the docker client it started
        proc.wait()
        hub.clear_faults()
    builds = _ledger_rows(ledger, "SELECT id, status FROM builds WHERE model = ?", data["name"])
    assert [b[1] for b in builds] == ["running"]  # killed: never finished
    kept = _ledger_rows(ledger, "SELECT path, outcome FROM download_attempts WHERE build_id = ?", builds[0][0])
    assert kept and ("README.md", "ok") not in kept, kept
