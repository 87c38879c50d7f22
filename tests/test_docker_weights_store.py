"""Two build hosts, one registry: the second takes every pinned file from the registry weights
store, asks the Hub for nothing, makes the same weights layers, and refuses a corrupted blob."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from builder.ledger import Ledger
from builder.registry import RegistryClient, RegistryRef
from builder.registry.layers import EngineLayers
from builder.registry.push import Pusher
from tests.conftest import make_project, unique_name, write_config
from tests.engines import scratch_registry, second_engine

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]
BASE = "builder-local/python-cpu:3.11"


def _fixture(data: dict, hub, tiny_sd: Path, tmp_path: Path) -> dict:
    """The demo's tiny pipeline plus two files no cache has seen: a large one (a layer of its own)
    and a small one (in the layer of small files)."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_sd, repo)
    (repo / "extra").mkdir()
    (repo / "extra" / "noise.safetensors").write_bytes(os.urandom(2 * 1024 * 1024))
    (repo / "extra" / "noise.json").write_text(json.dumps({"id": str(uuid.uuid4())}))
    repo_id = f"builder-test/{data['name']}"
    commit = hub.publish(repo_id, repo)
    artifacts = []
    for path in sorted(p for p in repo.rglob("*") if p.is_file()):
        body = path.read_bytes()
        artifacts.append({"path": str(path.relative_to(repo)), "size": len(body), "sha256": hashlib.sha256(body).hexdigest()})
    data["sources"] = [{"repo_id": repo_id, "revision": commit, "artifacts": artifacts}]
    return data


def _build(project_root: Path, name: str, env: dict, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "builder", "--root", str(project_root), "build", name, "--json", *args],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout), "stderr": proc.stderr}


def _file_requests(hub, paths: set[str]) -> list[str]:
    return [r.path for r in hub.requests if any(r.path.endswith("/" + p) for p in paths)]


def _weights_layers(client: RegistryClient, name: str, reference: str) -> list[str]:
    config = client.config(name, reference)
    made = [h for h in config["history"] if not h.get("empty_layer")]
    return [d for h, d in zip(made, config["rootfs"]["diff_ids"]) if h.get("created_by", "").startswith("builder: weights ")]


def test_a_second_build_host_takes_every_pinned_file_from_the_registry(tmp_path: Path, hub, tiny_sd: Path,
                                                                        demo_manifest_data: dict, isolated_env: dict) -> None:
    data = _fixture({**demo_manifest_data, "name": unique_name("fleet")}, hub, tiny_sd, tmp_path)
    project = make_project(tmp_path, data)
    files = {a["path"] for a in data["sources"][0]["artifacts"]}
    with scratch_registry(tmp_path / "registry") as registry, second_engine(tmp_path / "engine") as other:
        store = f"oci://{registry}/weights"
        config = write_config(tmp_path / "fleet.yaml", ("org", store), ("local", hub.url), prefer_fastest_mirror=False,
                              fetch={"progress_seconds": 2})
        env = {**isolated_env, "BUILDER_CONFIG": str(config)}

        # Host 1 downloads the new files from the Hub, builds, pushes and publishes every file.
        hub.clear_log()
        first = _build(project.root, data["name"], env, "--registry", f"{registry}/one")
        assert {"extra/noise.safetensors", "extra/noise.json"} <= {p.split("/resolve/", 1)[-1].split("/", 1)[-1]
                                                                     for p in _file_requests(hub, files)}
        assert f"weights store {store}: {len(files)} file(s) published" in first["stderr"]
        client = RegistryClient(RegistryRef.parse(registry))
        for artifact in data["sources"][0]["artifacts"]:
            assert client.manifest("weights", f"sha256-{artifact['sha256']}") is not None

        # Host 2: its own engine (no layer) and weights cache, the base image from the registry.
        local = docker.from_env()
        Pusher(RegistryClient(RegistryRef.parse(registry)), EngineLayers.open(local)).push("base", "1", local.images.get(BASE).id)
        other.images.pull(f"{registry}/base", tag="1").tag(BASE)
        host2 = {**env, "DOCKER_HOST": other.socket_url, "BUILDER_LEDGER": str(tmp_path / "host2.sqlite3"),
                 "BUILDER_WEIGHTS_CACHE": str(tmp_path / "host2-cache")}
        hub.clear_log()
        second = _build(project.root, data["name"], host2, "--registry", f"{registry}/two")
        assert _file_requests(hub, files) == []  # not one request to the Hub for a pinned file
        assert _weights_layers(client, "one/" + data["name"], first["digest_reference"].split("@")[1]) == \
            _weights_layers(client, "two/" + data["name"], second["digest_reference"].split("@")[1])
        ledger = Ledger(Path(host2["BUILDER_LEDGER"]))
        rows = [r for r in ledger.mirror_stats(data["name"])]
        assert [(r.mirror, r.ok, r.failed) for r in rows] == [("org", len(files), 0)]

        # One byte changed in the registry's copy of a file: refused, and that file from the Hub.
        small = next(a for a in data["sources"][0]["artifacts"] if a["path"] == "extra/noise.json")
        blob = tmp_path / "registry" / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / \
            small["sha256"][:2] / small["sha256"] / "data"
        raw = bytearray(blob.read_bytes())
        raw[0] ^= 0x01
        blob.write_bytes(bytes(raw))
        prune = subprocess.run([sys.executable, "-m", "builder", "--root", str(project.root), "cache", "prune", "--all",
                                "--yes"], capture_output=True, text=True, env=host2, timeout=600)
        assert prune.returncode == 0, prune.stderr
        hub.clear_log()
        third = _build(project.root, data["name"], host2, "--registry", f"{registry}/three", "--no-cache")
        asked = _file_requests(hub, files)
        assert asked and all(p.endswith("extra/noise.json") for p in asked)
        assert _weights_layers(client, "three/" + data["name"], third["digest_reference"].split("@")[1]) == \
            _weights_layers(client, "one/" + data["name"], first["digest_reference"].split("@")[1])
        rows = {r.mirror: r for r in Ledger(Path(host2["BUILDER_LEDGER"])).mirror_stats(data["name"])}
        assert rows["org"].failed >= 1 and rows["local"].ok >= 1
