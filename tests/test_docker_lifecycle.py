"""The whole lifecycle with a real build: build and push, the registry's smoke record, promote,
deploy to the RunPod stand-in, and what the ledger says about each step (including failures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.registry import RegistryClient, RegistryRef, smoke_tag
from tests.conftest import make_project, run_builder
from tests.runpod_standin import RunPodStandIn
from tests.test_docker_build import build, demo_variant, result_of

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]


def test_build_push_promote_deploy_and_the_ledger(tmp_path: Path, registry: str, isolated_env: dict,
                                                  demo_manifest_data: dict) -> None:
    data = demo_variant(demo_manifest_data, "life")
    data["license"]["approval"] = {"approved_by": "legal", "approved_on": "2026-11-01", "reference": "LEGAL-9"}
    project = make_project(tmp_path, data)
    name = data["name"]
    result = result_of(build(project.root, name, isolated_env, "--registry", registry))
    digest = result["digest_reference"].split("@")[1]

    client = RegistryClient(RegistryRef.parse(registry))
    record = client.get_document(name, smoke_tag(digest))
    assert record["passed"] and record["digest"] == digest and record["image_id"] == result["image_id"]

    env = {**isolated_env, "BUILDER_REGISTRY": registry}
    for stage in ("staging", "production"):
        promoted = run_builder(["--root", str(project.root), "promote", name, data["version"], "--to", stage], env)
        assert promoted.returncode == 0, promoted.stderr

    with RunPodStandIn(ready_after=1) as runpod:
        runpod.add_endpoint("ep-prod", "earlier/image@sha256:" + "0" * 64)
        deployed = run_builder(["--root", str(project.root), "deploy", name, "--target", "endpoint:ep-prod",
                                "--poll", "0.05"], {**env, **runpod.env()})
        assert deployed.returncode == 0, deployed.stderr
        assert runpod.image_of("ep-prod") == result["digest_reference"]

    events = json.loads(run_builder(["history", name, "--json"], env).stdout)
    assert [e["event"] for e in events] == ["build", "promote", "promote", "deploy"]
    built = events[0]
    assert built["status"] == "pushed" and built["digest"] == digest and built["smoke"]["passed"]
    assert built["seconds"]["build"] > 0 and built["seconds"]["smoke"] > 0
    assert [e["stage"] for e in events[1:3]] == ["staging", "production"]
    assert events[3]["outcome"] == "healthy" and events[3]["digest"] == digest


def test_failed_builds_are_recorded_as_failed(tmp_path: Path, registry: str, isolated_env: dict,
                                             demo_manifest_data: dict) -> None:
    data = demo_variant(demo_manifest_data, "lifefail")
    data["smoke_test"]["expect"] = {"kind": "image", "width": 128, "height": 64}
    project = make_project(tmp_path, data)
    proc = build(project.root, data["name"], isolated_env, "--registry", registry)
    assert proc.returncode == 1
    events = json.loads(run_builder(["history", data["name"], "--json"], isolated_env).stdout)
    assert len(events) == 1
    assert events[0]["status"] == "failed" and "smoke test failed: image is 64x64" in events[0]["error"]
    assert events[0]["smoke"] == {"passed": False, "reason": "image is 64x64, expected 128x64", "device": "cpu",
                                  "inference_seconds": events[0]["smoke"]["inference_seconds"]}
    assert events[0]["digest"] is None
    promoted = run_builder(["--root", str(project.root), "promote", data["name"], data["version"], "--to", "staging"],
                           {**isolated_env, "BUILDER_REGISTRY": registry})
    assert promoted.returncode == 1 and "is not in the registry" in promoted.stderr
