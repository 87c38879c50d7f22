"""Promotion, deploys, rollback and retention: a real registry, the RunPod stand-in, the CLI.

Images are pushed straight through the registry API (small, real OCI images carrying builder's
labels) so a test can hold many versions; the build test suite covers how real builds get there."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from builder.registry import RegistryClient, RegistryRef, smoke_tag
from tests.conftest import make_project, push_fake_image, run_builder, unique_name
from tests.runpod_standin import RunPodStandIn

APPROVAL = {"approved_by": "legal", "approved_on": "2026-11-01", "reference": "LEGAL-7"}


@pytest.fixture
def lifecycle(tmp_path: Path, registry: str, demo_manifest_data: dict):
    """A project with one model, a namespace of its own in the registry, a fresh ledger."""
    data = copy.deepcopy(demo_manifest_data)
    data["name"] = unique_name("life")
    namespace = f"{registry}/{unique_name('ns')}"
    project = make_project(tmp_path, data)
    env_path = tmp_path / "ledger.sqlite3"
    env = {"BUILDER_LEDGER": str(env_path), "BUILDER_REGISTRY": namespace}
    return {"data": data, "name": data["name"], "project": project, "registry": namespace, "env": env,
            "client": RegistryClient(RegistryRef.parse(namespace))}


def cli(life: dict, *args: str, extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("BUILDER_REGISTRY", "RUNPOD_API_KEY")}
    env.update(life["env"], **(extra or {}))
    return run_builder(["--root", str(life["project"].root), *args], env)


def error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def version(life: dict, tag: str, created: str = "2026-11-01T00:00:00Z", smoke: bool = True) -> str:
    digest = push_fake_image(life["registry"], life["name"], tag, tag, created)
    if smoke:
        life["client"].record_smoke(life["name"], digest, {"passed": True, "version": tag, "digest": digest})
    return digest


def set_approval(life: dict, approval: dict | None, commercial: bool = True) -> None:
    data = life["data"]
    data["license"]["approval"] = approval
    data["license"]["commercial_use"] = commercial
    import yaml

    (life["project"].manifests_dir / f"{life['name']}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


# -- promotion ---------------------------------------------------------------------------------
def test_promote_needs_a_passed_smoke_for_that_digest(lifecycle) -> None:
    version(lifecycle, "1.0.0", smoke=False)
    proc = cli(lifecycle, "promote", lifecycle["name"], "1.0.0", "--to", "staging")
    assert proc.returncode == 2
    assert "no passed smoke test is recorded for" in error_line(proc)
    assert "staging" not in lifecycle["client"].tags(lifecycle["name"])


def test_promote_to_staging_moves_the_tag_and_keeps_a_history(lifecycle) -> None:
    digest = version(lifecycle, "1.0.0")
    proc = cli(lifecycle, "promote", lifecycle["name"], "1.0.0", "--to", "staging")
    assert proc.returncode == 0, proc.stderr
    tags = lifecycle["client"].tags(lifecycle["name"])
    assert "staging" in tags and any(t.startswith("staging-") for t in tags)
    assert lifecycle["client"].image(lifecycle["name"], "staging").digest == digest
    history = json.loads(cli(lifecycle, "history", lifecycle["name"], "--json").stdout)
    assert [(e["event"], e["stage"], e["digest"]) for e in history] == [("promote", "staging", digest)]


def test_production_needs_an_approval(lifecycle) -> None:
    version(lifecycle, "1.0.0")
    proc = cli(lifecycle, "promote", lifecycle["name"], "1.0.0", "--to", "production")
    assert proc.returncode == 2
    assert "promoting to production needs the licence approval recorded in license.approval" in error_line(proc)
    set_approval(lifecycle, APPROVAL)
    assert cli(lifecycle, "promote", lifecycle["name"], "1.0.0", "--to", "production").returncode == 0


def test_a_non_commercial_licence_blocks_production_unless_the_approval_says_why(lifecycle) -> None:
    version(lifecycle, "1.0.0")
    set_approval(lifecycle, APPROVAL, commercial=False)
    proc = cli(lifecycle, "promote", lifecycle["name"], "1.0.0", "--to", "production")
    assert proc.returncode == 2
    assert "does not allow commercial use: license.approval.note must say why" in error_line(proc)
    assert "production" not in lifecycle["client"].tags(lifecycle["name"])
    set_approval(lifecycle, {**APPROVAL, "note": "commercial licence bought from the vendor, contract C-12"},
                 commercial=False)
    assert cli(lifecycle, "promote", lifecycle["name"], "1.0.0", "--to", "production").returncode == 0


def test_promoting_a_version_that_is_not_in_the_registry_is_one_line(lifecycle) -> None:
    proc = cli(lifecycle, "promote", lifecycle["name"], "9.9.9", "--to", "staging")
    assert proc.returncode == 1
    assert error_line(proc) == f"error: {lifecycle['registry']}/{lifecycle['name']}:9.9.9 is not in the registry: build and push it first"


def proxied_client(life: dict, proxy) -> RegistryClient:
    """A registry client whose every request goes through `proxy` (which logs method and URL)."""
    import requests

    session = requests.Session()
    session.trust_env = False  # NO_PROXY must not route around the proxy
    session.proxies = {"http": proxy.url()}
    return RegistryClient(RegistryRef.parse(life["registry"]), session=session)


def test_the_production_history_is_read_by_head_not_get(lifecycle) -> None:
    """Docker Hub counts each manifest GET as a pull and a HEAD as none: reading the history (for
    every deploy's gate, every rollback and prune) must not spend the pull allowance."""
    from builder.promote import stage_history
    from tests.forward_proxy import ForwardProxy

    set_approval(lifecycle, APPROVAL)
    digests = [version(lifecycle, v) for v in ("1.0.0", "1.1.0", "1.2.0")]
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        assert cli(lifecycle, "promote", lifecycle["name"], v, "--to", "production").returncode == 0
    with ForwardProxy() as proxy:
        history = stage_history(proxied_client(lifecycle, proxy), lifecycle["name"], "production")
    assert [entry.digest for entry in history] == digests[::-1]
    asked = [(r.method, r.target.rsplit("/", 1)[-1]) for r in proxy.log if "/manifests/" in r.target]
    assert sorted(asked) == sorted(("HEAD", entry.tag) for entry in history)  # one HEAD each, no GET
    # A registry whose HEAD answer carries no digest: then, and only then, a GET.
    with ForwardProxy(drop_on_head=frozenset({"docker-content-digest"})) as bare:
        again = stage_history(proxied_client(lifecycle, bare), lifecycle["name"], "production")
    assert [entry.digest for entry in again] == digests[::-1]
    methods = sorted(r.method for r in bare.log if "/manifests/" in r.target)
    assert methods == ["GET"] * 3 + ["HEAD"] * 3


# -- deploy and rollback -------------------------------------------------------------------------
@pytest.fixture
def runpod_env(lifecycle):
    with RunPodStandIn(ready_after=2) as stand_in:
        yield stand_in


def test_deploy_waits_for_health_and_records_it(lifecycle, runpod_env) -> None:
    old = version(lifecycle, "1.0.0")
    new = version(lifecycle, "1.1.0")
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    runpod_env.add_endpoint("ep-live", f"{repo}@{old}")
    proc = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep-live", "--poll", "0.05",
               extra=runpod_env.env())
    assert proc.returncode == 0, proc.stderr
    assert runpod_env.image_of("ep-live") == f"{repo}@{new}"
    assert "waiting for endpoint ep-live" in proc.stderr  # it did wait for workers to initialise
    assert f"roll back with: python -m builder rollback {lifecycle['name']} --target endpoint:ep-live" in proc.stdout
    deploys = [e for e in json.loads(cli(lifecycle, "history", lifecycle["name"], "--json").stdout) if e["event"] == "deploy"]
    assert [(d["outcome"], d["digest"], d["previous_digest"]) for d in deploys] == [("healthy", new, old)]


def test_a_deploy_that_never_gets_healthy_times_out_and_leaves_the_old_version_serving(lifecycle, runpod_env) -> None:
    old = version(lifecycle, "1.0.0")
    broken = version(lifecycle, "2.0.0")
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    runpod_env.add_endpoint("ep-live", f"{repo}@{old}")
    runpod_env.state.broken_images.add(f"{repo}@{broken}")
    proc = cli(lifecycle, "deploy", lifecycle["name"], "2.0.0", "--target", "endpoint:ep-live", "--timeout", "1",
               "--poll", "0.1", extra=runpod_env.env())
    assert proc.returncode == 1
    line = error_line(proc)
    assert line.startswith(f"error: endpoint ep-live did not become healthy on {repo}@{broken} within 1s")
    assert f"the endpoint is back on template" in line and f"({repo}@{old})" in line
    assert runpod_env.image_of("ep-live") == f"{repo}@{old}"
    deploys = [e for e in json.loads(cli(lifecycle, "history", lifecycle["name"], "--json").stdout) if e["event"] == "deploy"]
    assert [(d["outcome"], d["digest"]) for d in deploys] == [("timeout", broken)]  # the ledger does not lie


def test_deploy_without_a_version_takes_production_and_refuses_tags(lifecycle, runpod_env) -> None:
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    runpod_env.add_endpoint("ep", f"{repo}@sha256:{'0' * 64}")
    proc = cli(lifecycle, "deploy", lifecycle["name"], "--target", "endpoint:ep", extra=runpod_env.env())
    assert proc.returncode == 1 and "production is not in the registry: promote a version" in error_line(proc)
    digest = version(lifecycle, "1.0.0")
    set_approval(lifecycle, APPROVAL)
    assert cli(lifecycle, "promote", lifecycle["name"], "1.0.0", "--to", "production").returncode == 0
    proc = cli(lifecycle, "deploy", lifecycle["name"], "--target", "endpoint:ep", "--poll", "0.05", extra=runpod_env.env())
    assert proc.returncode == 0, proc.stderr
    assert runpod_env.image_of("ep") == f"{repo}@{digest}"


def test_a_template_target_gets_the_new_image(lifecycle, runpod_env) -> None:
    digest = version(lifecycle, "1.0.0")
    template_id = runpod_env.add_endpoint("unused", "old/image@sha256:" + "1" * 64)
    proc = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", f"template:{template_id}",
               extra=runpod_env.env())
    assert proc.returncode == 0, proc.stderr
    assert runpod_env.state.templates[template_id]["imageName"] == f"{lifecycle['registry']}/{lifecycle['name']}@{digest}"


def test_deploy_errors_are_one_line(lifecycle, runpod_env) -> None:
    version(lifecycle, "1.0.0")
    no_key = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:x",
                 extra={**runpod_env.env(), "RUNPOD_API_KEY": ""})
    assert no_key.returncode == 2 and "no RunPod API key: set RUNPOD_API_KEY" in error_line(no_key)
    bad_key = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:x",
                  extra={**runpod_env.env(), "RUNPOD_API_KEY": "wrong"})
    assert bad_key.returncode == 1 and "RunPod refused the API key" in error_line(bad_key)
    missing = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:nope", extra=runpod_env.env())
    assert missing.returncode == 1 and "RunPod has no serverless endpoint nope" in error_line(missing)
    target = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "pod;rm -rf", extra=runpod_env.env())
    assert target.returncode == 2 and "expected pod:ID, endpoint:ID" in error_line(target)


def test_rollback_from_an_empty_ledger_picks_the_last_known_good(lifecycle, runpod_env, tmp_path: Path) -> None:
    set_approval(lifecycle, APPROVAL)
    first = version(lifecycle, "1.0.0")
    second = version(lifecycle, "1.1.0")
    third = version(lifecycle, "1.2.0")  # promoted nowhere: never a rollback target
    for v in ("1.0.0", "1.1.0"):
        assert cli(lifecycle, "promote", lifecycle["name"], v, "--to", "production").returncode == 0
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    runpod_env.add_endpoint("ep-live", f"{repo}@{second}")
    fresh = {"BUILDER_LEDGER": str(tmp_path / "fresh-runner.sqlite3")}  # a CI runner that has never seen a build
    proc = cli(lifecycle, "rollback", lifecycle["name"], "--target", "endpoint:ep-live", "--poll", "0.05",
               extra={**runpod_env.env(), **fresh})
    assert proc.returncode == 0, proc.stderr
    assert runpod_env.image_of("ep-live") == f"{repo}@{first}"
    assert f"rolled back endpoint:ep-live to {repo}@{first} ({lifecycle['name']} 1.0.0)" in proc.stdout
    assert third not in runpod_env.image_of("ep-live")
    explicit = cli(lifecycle, "rollback", lifecycle["name"], "--target", "endpoint:ep-live", "--to", "1.1.0",
                   "--poll", "0.05", extra={**runpod_env.env(), **fresh})
    assert explicit.returncode == 0 and runpod_env.image_of("ep-live") == f"{repo}@{second}"


def test_rollback_with_nothing_earlier_says_so(lifecycle, runpod_env) -> None:
    set_approval(lifecycle, APPROVAL)
    only = version(lifecycle, "1.0.0")
    assert cli(lifecycle, "promote", lifecycle["name"], "1.0.0", "--to", "production").returncode == 0
    runpod_env.add_endpoint("ep", f"{lifecycle['registry']}/{lifecycle['name']}@{only}")
    proc = cli(lifecycle, "rollback", lifecycle["name"], "--target", "endpoint:ep", extra=runpod_env.env())
    assert proc.returncode == 1 and "nothing earlier to roll back to" in error_line(proc)


# -- retention -----------------------------------------------------------------------------------
def test_prune_never_touches_production_or_the_last_known_good(lifecycle) -> None:
    name, client = lifecycle["name"], lifecycle["client"]
    set_approval(lifecycle, APPROVAL)
    digests = {f"1.{i}.0": version(lifecycle, f"1.{i}.0", created=f"2026-0{i + 1}-01T00:00:00.123456789Z")
               for i in range(6)}
    for v in ("1.1.0", "1.2.0"):  # 1.2.0 is in production now; 1.1.0 is the last known-good
        assert cli(lifecycle, "promote", name, v, "--to", "production").returncode == 0
    assert cli(lifecycle, "promote", name, "1.3.0", "--to", "staging").returncode == 0
    dry = cli(lifecycle, "prune", name, "--keep", "1", "--older-than", "0")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: 2 versions would be deleted" in dry.stdout
    assert set(client.tags(name)) >= {f"1.{i}.0" for i in range(6)}  # a dry run deletes nothing
    done = cli(lifecycle, "prune", name, "--keep", "1", "--older-than", "0", "--yes")
    assert done.returncode == 0, done.stderr
    tags = set(client.tags(name))
    assert {"1.0.0", "1.4.0"}.isdisjoint(tags)  # old, never promoted, not the newest
    assert {"1.1.0", "1.2.0", "1.3.0", "1.5.0", "production", "staging"} <= tags
    assert smoke_tag(digests["1.0.0"]) not in tags and smoke_tag(digests["1.2.0"]) in tags
    assert "keep   " + name + ":1.1.0" in done.stdout and "(was in production)" in done.stdout


def test_prune_keeps_young_versions(lifecycle) -> None:
    for i in range(3):
        version(lifecycle, f"2.{i}.0", created="2099-01-01T00:00:00Z")
    proc = cli(lifecycle, "prune", lifecycle["name"], "--keep", "0", "--older-than", "30", "--yes")
    assert proc.returncode == 0 and "deleted 0 versions" in proc.stdout
    assert {"2.0.0", "2.1.0", "2.2.0"} <= set(lifecycle["client"].tags(lifecycle["name"]))


# -- what a review found ----------------------------------------------------------------------------
def test_a_ready_old_worker_is_not_taken_for_the_new_image(lifecycle, runpod_env) -> None:
    old, new = version(lifecycle, "1.0.0"), version(lifecycle, "1.1.0")
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    runpod_env.add_endpoint("ep", f"{repo}@{old}")
    runpod_env.state.linger_polls = 3  # the old worker keeps answering "ready" for three polls
    proc = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", "--poll", "0.05",
               extra=runpod_env.env())
    assert proc.returncode == 0, proc.stderr
    waits = [line for line in proc.stderr.splitlines() if "waiting for endpoint ep" in line]
    assert len(waits) >= 3 + 2  # through the lingering polls, then the new worker starting


def test_failing_health_polls_are_retried_then_a_failed_deploy_switches_back(lifecycle, runpod_env) -> None:
    old, new = version(lifecycle, "1.0.0"), version(lifecycle, "1.1.0")
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    runpod_env.add_endpoint("ep", f"{repo}@{old}")
    runpod_env.state.failing_health_polls = 2  # two 500s: tolerated
    ok = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", "--poll", "0.05",
             extra=runpod_env.env())
    assert ok.returncode == 0, ok.stderr
    assert "health check failed" in ok.stderr
    runpod_env.state.failing_health_polls = 50  # RunPod keeps failing: give up, and put the old image back
    broken = version(lifecycle, "1.2.0")
    proc = cli(lifecycle, "deploy", lifecycle["name"], "1.2.0", "--target", "endpoint:ep", "--poll", "0.05",
               extra=runpod_env.env())
    line = error_line(proc)
    assert proc.returncode == 1 and "to read the health of endpoint ep" in line
    assert "the endpoint is back on template" in line and "recorded as failed" in line
    assert runpod_env.image_of("ep") == f"{repo}@{new}"
    deploys = [e for e in json.loads(cli(lifecycle, "history", lifecycle["name"], "--json").stdout) if e["event"] == "deploy"]
    assert [(d["outcome"], d["digest"]) for d in deploys] == [("healthy", new), ("failed", broken)]


def test_the_new_template_keeps_the_old_ones_environment_and_registry_credentials(lifecycle, runpod_env) -> None:
    old, new = version(lifecycle, "1.0.0"), version(lifecycle, "1.1.0")
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    runpod_env.add_endpoint("ep", f"{repo}@{old}", env={"BUILDER_MAX_QUEUE": "2"}, registry_auth="auth-7")
    assert cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", "--poll", "0.05",
               extra=runpod_env.env()).returncode == 0
    template = runpod_env.state.templates[runpod_env.state.endpoints["ep"].template_id]
    assert {"key": "BUILDER_MAX_QUEUE", "value": "2"} in template["env"]
    assert template["containerRegistryAuthId"] == "auth-7" and template["imageName"] == f"{repo}@{new}"


def test_a_second_rollback_goes_further_back_not_forward(lifecycle, runpod_env) -> None:
    set_approval(lifecycle, APPROVAL)
    a, b, c = (version(lifecycle, v) for v in ("1.0.0", "1.1.0", "1.2.0"))
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        assert cli(lifecycle, "promote", lifecycle["name"], v, "--to", "production").returncode == 0
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    runpod_env.add_endpoint("ep", f"{repo}@{c}")
    for expected in (b, a):
        proc = cli(lifecycle, "rollback", lifecycle["name"], "--target", "endpoint:ep", "--poll", "0.05",
                   extra=runpod_env.env())
        assert proc.returncode == 0, proc.stderr
        assert runpod_env.image_of("ep") == f"{repo}@{expected}"
    last = cli(lifecycle, "rollback", lifecycle["name"], "--target", "endpoint:ep", extra=runpod_env.env())
    assert last.returncode == 1 and "nothing earlier to roll back to" in error_line(last)


def test_an_experimental_image_is_never_promoted(lifecycle) -> None:
    digest = push_fake_image(lifecycle["registry"], lifecycle["name"], "0.9.0", "0.9.0", "2026-11-01T00:00:00Z",
                             labels={"io.builder.profile": "experimental", "io.builder.locked": "false"})
    lifecycle["client"].record_smoke(lifecycle["name"], digest, {"passed": True})
    proc = cli(lifecycle, "promote", lifecycle["name"], "0.9.0", "--to", "staging")
    assert proc.returncode == 2
    assert "was built from an experimental or unlocked manifest" in error_line(proc)


def test_tags_follow_pagination(lifecycle) -> None:
    for i in range(5):
        version(lifecycle, f"3.{i}.0", smoke=False)
    assert lifecycle["client"].tags(lifecycle["name"], page_size=2) == sorted(f"3.{i}.0" for i in range(5))


# -- release gates, endpoint types, templates (issue 11) -----------------------------------------
def deploys_of(life: dict) -> list[dict]:
    return [e for e in json.loads(cli(life, "history", life["name"], "--json").stdout) if e["event"] == "deploy"]


def test_deploy_refuses_an_image_without_a_passed_smoke_unless_forced_with_a_reason(lifecycle, runpod_env) -> None:
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    old = version(lifecycle, "1.0.0")
    unsmoked = version(lifecycle, "1.1.0", smoke=False)
    runpod_env.add_endpoint("ep", f"{repo}@{old}")
    refused = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", extra=runpod_env.env())
    assert refused.returncode == 2
    line = error_line(refused)
    assert "no passed smoke test is recorded for" in line and '--force --reason "why"' in line
    assert runpod_env.image_of("ep") == f"{repo}@{old}" and deploys_of(lifecycle) == []
    no_reason = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", "--force",
                    extra=runpod_env.env())
    assert no_reason.returncode == 2 and "--force needs --reason" in error_line(no_reason)
    forced = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", "--force", "--reason",
                 "hotfix INC-42, smoke rerun by hand", "--poll", "0.05", extra=runpod_env.env())
    assert forced.returncode == 0, forced.stderr
    assert "release gates overridden (--force): hotfix INC-42" in forced.stderr
    assert runpod_env.image_of("ep") == f"{repo}@{unsmoked}"
    [record] = deploys_of(lifecycle)
    assert record["outcome"] == "healthy" and record["forced_reason"].startswith("hotfix INC-42, smoke rerun by hand")
    assert "no passed smoke test" in record["forced_reason"]


def test_an_experimental_image_is_not_deployed(lifecycle, runpod_env) -> None:
    digest = push_fake_image(lifecycle["registry"], lifecycle["name"], "0.9.0", "0.9.0", "2026-11-01T00:00:00Z",
                             labels={"io.builder.profile": "experimental", "io.builder.locked": "false"})
    lifecycle["client"].record_smoke(lifecycle["name"], digest, {"passed": True})
    runpod_env.add_endpoint("ep", "old/image@sha256:" + "1" * 64)
    proc = cli(lifecycle, "deploy", lifecycle["name"], "0.9.0", "--target", "endpoint:ep", extra=runpod_env.env())
    assert proc.returncode == 2 and "was built from an experimental or unlocked manifest" in error_line(proc)


def test_a_production_target_takes_only_a_production_promotion_with_its_approval(lifecycle, runpod_env,
                                                                                 tmp_path: Path) -> None:
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    digest = version(lifecycle, "1.0.0")
    runpod_env.add_endpoint("ep-prod", "old/image@sha256:" + "1" * 64)
    by_flag = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:ep-prod", "--production",
                  extra=runpod_env.env())
    assert by_flag.returncode == 2
    assert "endpoint:ep-prod serves production and" in error_line(by_flag)
    assert "was never promoted to production" in error_line(by_flag)
    config = tmp_path / "builder.yaml"
    config.write_text("deploy:\n  production_targets: [endpoint:ep-prod]\n")
    by_config = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:ep-prod",
                    extra={**runpod_env.env(), "BUILDER_CONFIG": str(config)})
    assert by_config.returncode == 2 and "was never promoted to production" in error_line(by_config)
    set_approval(lifecycle, APPROVAL)
    assert cli(lifecycle, "promote", lifecycle["name"], "1.0.0", "--to", "production").returncode == 0
    set_approval(lifecycle, None)  # the approval withdrawn since: production refuses again
    withdrawn = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:ep-prod",
                    extra={**runpod_env.env(), "BUILDER_CONFIG": str(config)})
    assert withdrawn.returncode == 2 and "needs the licence approval" in error_line(withdrawn)
    set_approval(lifecycle, APPROVAL)
    ok = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:ep-prod", "--poll", "0.05",
             extra={**runpod_env.env(), "BUILDER_CONFIG": str(config)})
    assert ok.returncode == 0, ok.stderr
    assert runpod_env.image_of("ep-prod") == f"{repo}@{digest}"


@pytest.mark.parametrize("kind, mode", [("LB", "http"), ("QB", "queue")])
def test_the_template_environment_follows_the_endpoint_type(lifecycle, runpod_env, kind: str, mode: str) -> None:
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    old, new = version(lifecycle, "1.0.0"), version(lifecycle, "1.1.0")
    runpod_env.add_endpoint("ep", f"{repo}@{old}", env={"HF_HOME": "/tmp/hf"}, type=kind)
    proc = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", "--poll", "0.05",
               extra=runpod_env.env())
    assert proc.returncode == 0, proc.stderr
    assert f"serving as {mode}" in proc.stdout
    template = runpod_env.state.templates[runpod_env.state.endpoints["ep"].template_id]
    env = {item["key"]: item["value"] for item in template["env"]}
    assert env["BUILDER_SERVE_MODE"] == mode and env["HF_HOME"] == "/tmp/hf"
    if mode == "http":
        assert env["PORT"] == "8000" and env["PORT_HEALTH"] == "8000" and template["ports"]
    else:
        assert "PORT_HEALTH" not in env


def test_an_endpoint_of_unknown_type_needs_the_type_given(lifecycle, runpod_env) -> None:
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    old, new = version(lifecycle, "1.0.0"), version(lifecycle, "1.1.0")
    runpod_env.add_endpoint("ep", f"{repo}@{old}", type="SOMETHING_NEW")
    proc = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", extra=runpod_env.env())
    assert proc.returncode == 2 and "pass --endpoint-type lb or --endpoint-type queue" in error_line(proc)
    given = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", "--endpoint-type", "lb",
                "--poll", "0.05", extra=runpod_env.env())
    assert given.returncode == 0, given.stderr
    assert runpod_env.image_of("ep") == f"{repo}@{new}"


def test_template_names_are_unique_per_deploy_and_unused_ones_are_tidied(lifecycle, runpod_env, tmp_path: Path) -> None:
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    a, b = version(lifecycle, "1.0.0"), version(lifecycle, "1.1.0")
    runpod_env.add_endpoint("ep", f"{repo}@{a}")
    runpod_env.add_endpoint("other", f"{repo}@{a}")
    config = tmp_path / "builder.yaml"
    config.write_text("deploy:\n  keep_templates: 1\n")
    extra = {**runpod_env.env(), "BUILDER_CONFIG": str(config)}
    for v in ("1.1.0", "1.0.0", "1.1.0", "1.0.0"):  # the same versions again, as rollbacks do
        proc = cli(lifecycle, "deploy", lifecycle["name"], v, "--target", "endpoint:ep", "--poll", "0.05", extra=extra)
        assert proc.returncode == 0, proc.stderr
    templates = runpod_env.state.templates.values()
    ours = [t for t in templates if t["name"].startswith("builder-")]
    in_use = {e.template_id for e in runpod_env.state.endpoints.values()}
    assert len({t["name"] for t in ours}) == len(ours)
    assert len([t for t in ours if t["id"] not in in_use]) == 1  # kept: the newest unused one
    assert {"ep-initial", "other-initial"} <= {t["name"] for t in templates}  # never one builder did not make
    assert "deleted unused template builder-" in proc.stderr
    assert runpod_env.image_of("ep") == f"{repo}@{a}"


def test_deploy_refuses_gpus_smaller_than_the_image_needs(lifecycle, runpod_env) -> None:
    """Issue 12: min_gpu_memory_gb travels as an image label; deploy compares the target's GPU types."""
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    digest = push_fake_image(lifecycle["registry"], lifecycle["name"], "1.0.0", "1.0.0", "2026-11-01T00:00:00Z",
                             labels={"io.builder.min_gpu_memory_gb": "40"})
    lifecycle["client"].record_smoke(lifecycle["name"], digest, {"passed": True})
    runpod_env.add_endpoint("small", "old/image@sha256:" + "1" * 64, gpu_ids="ADA_48_PRO,AMPERE_24")
    runpod_env.add_endpoint("large", "old/image@sha256:" + "1" * 64, gpu_ids="AMPERE_80,-NVIDIA A100 80GB PCIe")
    runpod_env.add_endpoint("named", "old/image@sha256:" + "1" * 64, gpu_ids="NVIDIA L40S,Some Future GPU")
    runpod_env.add_pod("pod-small", "old/image@sha256:" + "1" * 64, gpu="RTX A5000")
    small = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:small", extra=runpod_env.env())
    assert small.returncode == 2
    assert ("endpoint:small may run on AMPERE_24 (24 GB) and" in error_line(small)
            and "needs at least 40 GB (serving.memory.min_gpu_memory_gb)" in error_line(small))
    pod = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "pod:pod-small", extra=runpod_env.env())
    assert pod.returncode == 2 and "pod:pod-small may run on RTX A5000 (24 GB)" in error_line(pod)
    named = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:named", extra=runpod_env.env())
    assert named.returncode == 2 and "whose memory RunPod did not list (Some Future GPU)" in error_line(named)
    large = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:large", "--poll", "0.05",
                extra=runpod_env.env())
    assert large.returncode == 0, large.stderr
    forced = cli(lifecycle, "deploy", lifecycle["name"], "1.0.0", "--target", "endpoint:small", "--force", "--reason",
                 "the 48 GB pool is pinned in the console", "--poll", "0.05", extra=runpod_env.env())
    assert forced.returncode == 0, forced.stderr
    assert runpod_env.image_of("small") == f"{repo}@{digest}"


# -- production-day defects (issue 22) ------------------------------------------------------------------
HOSTILE_ENV = {
    "MODEL_CONFIG": '{"scheduler": {"name": "euler", "steps": [1, 2]}, "note": "say \\"hi\\""}',
    "WINDOWS_PATH": "C:\\models\\flux\\",
    "PEM": "-----BEGIN CERTIFICATE-----\nMIIB\\u0041\n-----END CERTIFICATE-----\n",
    "QUOTES": "it's \"quoted\" and } braces { and $dollar",
}


def test_an_environment_with_json_quotes_backslashes_and_newlines_survives_a_deploy(lifecycle, runpod_env) -> None:
    """The SDK's create_template pasted each value into the GraphQL text unescaped: any of these
    made the stand-in's GraphQL parser (as RunPod's) refuse the deploy."""
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    old, new = version(lifecycle, "1.0.0"), version(lifecycle, "1.1.0")
    runpod_env.add_endpoint("ep", f"{repo}@{old}", env=HOSTILE_ENV, type="QB")
    proc = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", "--poll", "0.05",
               extra=runpod_env.env())
    assert proc.returncode == 0, proc.stderr
    template = runpod_env.state.templates[runpod_env.state.endpoints["ep"].template_id]
    env = {item["key"]: item["value"] for item in template["env"]}
    assert template["imageName"] == f"{repo}@{new}"
    assert {key: env[key] for key in HOSTILE_ENV} == HOSTILE_ENV  # byte for byte
    # A template target and a pod send their environment back whole: it survives there too.
    template_id = runpod_env.add_endpoint("unused", f"{repo}@{old}", env=HOSTILE_ENV)
    assert cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", f"template:{template_id}",
               extra=runpod_env.env()).returncode == 0
    kept = {item["key"]: item["value"] for item in runpod_env.state.templates[template_id]["env"]}
    assert kept == HOSTILE_ENV
    runpod_env.add_pod("pod-env", f"{repo}@{old}", env=HOSTILE_ENV)
    proc = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "pod:pod-env", "--poll", "0.05",
               "--timeout", "30", extra=runpod_env.env())
    assert proc.returncode == 0, proc.stderr
    assert runpod_env.state.pods["pod-env"].env == HOSTILE_ENV


def test_a_graphql_request_with_values_in_its_text_still_fails_on_the_stand_in(runpod_env) -> None:
    """What the stand-in refuses, as RunPod's parser does: a value pasted into the query unescaped."""
    import requests

    url, key = runpod_env.url, runpod_env.state.api_key
    value = HOSTILE_ENV["MODEL_CONFIG"]
    pasted = (f'mutation {{ saveTemplate(input: {{ name: "t", imageName: "i", containerDiskInGb: 5, volumeInGb: 0, '
              f'env: [{{ key: "K", value: "{value}" }}] }}) {{ id }} }}')
    answer = requests.post(f"{url}/graphql", json={"query": pasted}, headers={"Authorization": f"Bearer {key}"},
                           timeout=10).json()
    assert answer["errors"][0]["message"].startswith("Syntax Error")
    as_variable = requests.post(f"{url}/graphql", headers={"Authorization": f"Bearer {key}"}, timeout=10, json={
        "query": "mutation Save($input: SaveTemplateInput!) { saveTemplate(input: $input) { id env { value } } }",
        "variables": {"input": {"name": "t", "imageName": "i", "containerDiskInGb": 5, "volumeInGb": 0,
                                "env": [{"key": "K", "value": value}]}}}).json()
    assert "errors" not in as_variable and as_variable["data"]["saveTemplate"]["env"] == [{"value": value}]
    not_an_object = requests.post(f"{url}/graphql", json={"query": "{ myself { id } }", "variables": "[]"},
                                  headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert not_an_object.status_code == 400


@pytest.mark.parametrize("env, ports, exposed", [
    ({}, "80/http", {"8000/http"}),  # no PORT: RunPod would probe 80 while the server listens on 8000
    ({"PORT": "8000", "PORT_HEALTH": "8001"}, "8000/http", {"8000/http", "8001/http"}),
    ({"PORT": "9000"}, "22/tcp", {"9000/http", "22/tcp"}),
])
def test_a_load_balancing_template_exposes_the_ports_its_server_listens_on(lifecycle, runpod_env, env: dict,
                                                                            ports: str, exposed: set) -> None:
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    old, new = version(lifecycle, "1.0.0"), version(lifecycle, "1.1.0")
    runpod_env.add_endpoint("ep", f"{repo}@{old}", env=env, type="LB", ports=ports)
    proc = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "endpoint:ep", "--poll", "0.05",
               "--timeout", "20", extra=runpod_env.env())
    assert proc.returncode == 0, proc.stderr
    template = runpod_env.state.templates[runpod_env.state.endpoints["ep"].template_id]
    assert exposed <= set(template["ports"].split(","))


def test_the_stand_in_never_serves_an_unexposed_port(lifecycle, runpod_env) -> None:
    """The old rollout's template (PORT 8000 set, only 80 exposed) never turns healthy there."""
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    old = version(lifecycle, "1.0.0")
    runpod_env.add_endpoint("ep", f"{repo}@{old}", env={"PORT": "8000"}, type="LB", ports="80/http")
    runpod_env.state.endpoints["ep"].polls_since_switch = 0
    import requests

    health = [requests.get(f"{runpod_env.url}/v2/ep/health", timeout=10,
                           headers={"Authorization": f"Bearer {runpod_env.state.api_key}"}).json()["workers"]
              for _ in range(runpod_env.state.ready_after + 3)]
    assert all(h["initializing"] == 1 and h["ready"] == 0 for h in health)


def test_a_pod_deploy_sends_no_credentials_to_the_pod(lifecycle, runpod_env) -> None:
    """RUNPOD_API_KEY went to the pod's proxy URL as a Bearer header: the stand-in pod refuses any."""
    repo = f"{lifecycle['registry']}/{lifecycle['name']}"
    old, new = version(lifecycle, "1.0.0"), version(lifecycle, "1.1.0")
    runpod_env.add_pod("pod-1", f"{repo}@{old}", ports="8000/http,22/tcp")
    proc = cli(lifecycle, "deploy", lifecycle["name"], "1.1.0", "--target", "pod:pod-1", "--poll", "0.05",
               "--timeout", "20", extra=runpod_env.env())
    assert proc.returncode == 0, proc.stderr
    assert runpod_env.state.credentials_seen == []
    assert runpod_env.state.pods["pod-1"].image == f"{repo}@{new}"
    assert "waiting for pod pod-1" in proc.stderr  # it did ask the pod, through the proxy
