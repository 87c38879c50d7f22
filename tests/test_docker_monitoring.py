"""The monitoring pipeline for real: builds of the demo model against the loopback Hub (good ones,
one whose smoke fails, one whose files do not match their sha256), a deploy and a rollback on the
RunPod stand-in; after each build the build workflow's own metrics step PUTs the ledger's figures
to Debian's Pushgateway; Debian's Prometheus scrapes it and evaluates the alert rules. Every
panel of the dashboard returns data through Prometheus's HTTP API, and the failing builds fire
their alerts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from builder.monitoring.panels import PANELS
from tests.conftest import make_project, run_builder, unique_name, write_config
from tests.localhub import LocalHub
from tests.prometheus_stack import Stack, finite, prometheus_stack, push_metrics  # noqa: F401 - a fixture
from tests.runpod_standin import RunPodStandIn

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]


def _fresh_readme(data: dict, hub: LocalHub, tiny_sd: Path, where: Path) -> None:
    """Point the manifest at a copy of the tiny model with a README of its own: the shared weights
    cache cannot serve that file, so the build downloads it from the Hub (one `ok` attempt)."""
    shutil.copytree(tiny_sd, where)
    readme = f"# {data['name']} {data['version']}\n{uuid.uuid4()}\n".encode()
    (where / "README.md").write_bytes(readme)
    repo_id = f"builder-test/{data['name']}-{data['version'].replace('.', '-')}"
    data["sources"][0].update(repo_id=repo_id, revision=hub.publish(repo_id, where))
    data["sources"][0]["artifacts"][0].update(sha256=hashlib.sha256(readme).hexdigest(), size=len(readme))


def test_real_builds_fill_every_panel_and_the_failing_ones_fire_alerts(
        tmp_path: Path, registry: str, hub: LocalHub, tiny_sd: Path, demo_manifest_data: dict,
        prometheus_stack: Stack) -> None:
    data = json.loads(json.dumps(demo_manifest_data))
    data["name"] = unique_name("mon")
    project = make_project(tmp_path, data)
    manifest = project.manifests_dir / f"{data['name']}.yaml"
    ledger = str(tmp_path / "ledger.sqlite3")
    namespace = f"{registry}/{unique_name('ns')}"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_ENDPOINT", "BUILDER_REGISTRY")}
    env.update(BUILDER_CONFIG=str(write_config(tmp_path / "builder.yaml", ("local", hub.url))), BUILDER_LEDGER=ledger,
               HF_HOME=str(tmp_path / "hf"), BUILDER_REGISTRY=namespace)

    def build(version: str, change=lambda d: None, ok: bool = True) -> dict | None:
        data["version"] = version
        _fresh_readme(data, hub, tiny_sd, tmp_path / f"repo-{version}-{len(list(tmp_path.glob('repo-*')))}")
        change(data)
        manifest.write_text(yaml.safe_dump(data, sort_keys=False))
        run = run_builder(["--root", str(project.root), "build", data["name"], "--json"], env)
        push_metrics(tmp_path, ledger, prometheus_stack, "gpu-1")  # `if: always()`, as the workflow does
        assert (run.returncode == 0) == ok, run.stderr[-3000:]
        return json.loads(run.stdout) if ok else None

    build("1.0.0")
    second = build("1.1.0")
    assert second["pushed"]

    with RunPodStandIn() as runpod:  # a deploy of 1.1.0, then a rollback to 1.0.0, on a template
        template = runpod.add_endpoint("ep-mon", f"{namespace}/{data['name']}@sha256:{'0' * 64}")
        for args in (["deploy", data["name"], "1.1.0"], ["rollback", data["name"], "--to", "1.0.0"]):
            run = run_builder(["--root", str(project.root), *args, "--target", f"template:{template}"],
                              {**env, **runpod.env()})
            assert run.returncode == 0, run.stderr

    build("1.2.0", lambda d: d["smoke_test"].update(expect={"kind": "image", "width": 128, "height": 64}), ok=False)

    def wrong_hashes(d: dict) -> None:  # every file: the mirror's bytes do not match what the manifest pins
        for artifact in d["sources"][0]["artifacts"]:
            artifact["sha256"] = hashlib.sha256(artifact["path"].encode()).hexdigest()

    build("1.2.1", wrong_hashes, ok=False)

    for panel in PANELS:
        for query in panel.queries:
            assert finite(prometheus_stack.query(query.expr)), f"{panel.title}: no data for {query.expr}"
    firing = prometheus_stack.wait_for_alerts("BuilderSmokeFailed", "BuilderMirrorFailing", "BuilderDownloadSuccessLow")
    labels = {a["labels"]["alertname"]: a["labels"] for a in firing}
    assert labels["BuilderSmokeFailed"]["model"] == data["name"]
    assert {a["labels"]["mirror"] for a in firing if a["labels"]["alertname"] == "BuilderMirrorFailing"} == {"local"}
    deploys = {(r["metric"]["kind"], r["metric"]["outcome"]): float(r["value"][1]) for r in prometheus_stack.query(
        next(p for p in PANELS if p.title == "Deploys and rollbacks").queries[0].expr)}
    assert deploys[("deploy", "healthy")] > 0 and deploys[("rollback", "healthy")] > 0
    sizes = prometheus_stack.query('max by (version) (builder_weights_bytes{model="%s"})' % data["name"])
    assert {r["metric"]["version"] for r in sizes} == {"1.0.0", "1.1.0", "1.2.0", "1.2.1"}
