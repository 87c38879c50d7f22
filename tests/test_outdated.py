"""`builder outdated` against the loopback Hub, where a tracked repository gains a new commit; and
the scheduled workflow (.github/workflows/outdated.yml) run step by step as GitHub runs it: it
re-locks, bumps, pushes a branch to a real git remote and opens the pull request on a stand-in
for GitHub's REST API that refuses what GitHub refuses (tests/github_standin.py)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, make_project, run_builder, unique_name, write_config
from tests.github_standin import GitHubStandIn
from tests.localhub import LocalHub
from tests.localhub.server import git_blob_sha1

WORKFLOW = ROOT / ".github" / "workflows" / "outdated.yml"
EXTRA_A = b'{"note": "a file the include pattern takes"}\n'
EXTRA_B = b'{"note": "a file the new commit adds"}\n'


class Upstream:
    """A repository on the loopback Hub that a manifest tracks with `ref: main`, locked to its first
    commit, and the project that holds the manifest."""

    def __init__(self, tmp_path: Path, hub: LocalHub, tiny_sd: Path, demo: dict) -> None:
        self.hub, self.tmp = hub, tmp_path
        self.name = unique_name("up")
        self.repo_id = f"builder-test/{self.name}"
        self.first = tmp_path / "upstream-1"
        shutil.copytree(tiny_sd, self.first)
        (self.first / "extra").mkdir()
        (self.first / "extra" / "a.json").write_bytes(EXTRA_A)
        self.pinned = hub.publish(self.repo_id, self.first)
        data = copy.deepcopy(demo)
        data.update(name=self.name, version="1.0.0")
        source = data["sources"][0]
        source.update(repo_id=self.repo_id, revision=self.pinned, ref="main", include=["extra/*"])
        source["artifacts"].append({"path": "extra/a.json", "size": len(EXTRA_A),
                                    "sha256": hashlib.sha256(EXTRA_A).hexdigest()})
        self.data = data
        self.project = make_project(tmp_path, data)
        self.env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_ENDPOINT", "BUILDER_REGISTRY")}
        self.env.update(BUILDER_CONFIG=str(write_config(tmp_path / "builder.yaml", ("local", hub.url))),
                        BUILDER_LEDGER=str(tmp_path / "ledger.sqlite3"), HF_HOME=str(tmp_path / "hf"),
                        HF_HUB_DISABLE_TELEMETRY="1")

    @property
    def manifest(self) -> Path:
        return self.project.manifests_dir / f"{self.name}.yaml"

    def new_commit(self, remove: tuple[str, ...] = (), licence: str = "mit", gated: set[str] | None = None) -> str:
        """The next commit: README's licence changed, the UNet's weights replaced, extra/b.json added."""
        nxt = self.tmp / f"upstream-{len(list(self.tmp.glob('upstream-*'))) + 1}"
        shutil.copytree(self.first, nxt)
        readme = nxt / "README.md"
        readme.write_text(readme.read_text().replace("license: apache-2.0", f"license: {licence}"))
        shutil.copyfile(nxt / "vae" / "diffusion_pytorch_model.safetensors",
                        nxt / "unet" / "diffusion_pytorch_model.safetensors")
        (nxt / "extra" / "b.json").write_bytes(EXTRA_B)
        for path in remove:
            (nxt / path).unlink()
        self.next_dir = nxt
        return self.hub.commit(self.repo_id, nxt, gated_tokens=gated)

    def outdated(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_builder(["--root", str(self.project.root), "outdated", *args], {**self.env, **(env or {})})


@pytest.fixture
def upstream(tmp_path: Path, hub: LocalHub, tiny_sd: Path, demo_manifest_data: dict) -> Upstream:
    return Upstream(tmp_path, hub, tiny_sd, demo_manifest_data)


def _blob(path: Path) -> str:
    return git_blob_sha1(path)[:12]


def test_a_repository_that_gains_a_commit_is_reported_file_by_file(upstream: Upstream) -> None:
    current = upstream.outdated(upstream.name)
    assert current.returncode == 0, current.stderr
    assert current.stdout.splitlines()[1] == f"  sources[0] {upstream.repo_id} main: still {upstream.pinned[:12]}"

    commit = upstream.new_commit(remove=("vae/config.json",))
    run = upstream.outdated(upstream.name)
    assert run.returncode == 0, run.stderr
    old, new = upstream.first, upstream.next_dir
    assert run.stdout.splitlines() == [
        f"moved {upstream.name} 1.0.0 ({upstream.manifest}):",
        f"  sources[0] {upstream.repo_id} main: {upstream.pinned[:12]} -> {commit[:12]}",
        f"    changed README.md: 321 B, git blob {_blob(old / 'README.md')} -> 314 B, git blob {_blob(new / 'README.md')}",
        f"    added extra/b.json: {len(EXTRA_B)} B, git blob {_blob(new / 'extra' / 'b.json')}",
        "    changed unet/diffusion_pytorch_model.safetensors: 4.0 MB, sha256 5634309f88ff -> 2.6 MB, sha256 b1f9201a6513",
        f"    removed vae/config.json: 643 B, git blob {_blob(old / 'vae' / 'config.json')}",
        "    licence on the model card: apache-2.0 -> mit",
        f"  next: python -m builder lock {upstream.name} && python -m builder bump {upstream.name} --part minor",
    ]
    assert yaml.safe_load(upstream.manifest.read_text())["sources"][0]["revision"] == upstream.pinned  # nothing written


def test_json_carries_the_changes_and_the_pull_request_summary(upstream: Upstream) -> None:
    commit = upstream.new_commit()
    run = upstream.outdated(upstream.name, "--json")
    assert run.returncode == 0, run.stderr
    [result] = json.loads(run.stdout)
    assert (result["name"], result["status"], result["error"]) == (upstream.name, "moved", None)
    [source] = result["sources"]
    assert (source["ref"], source["pinned"], source["current"]) == ("main", upstream.pinned, commit)
    assert [(f["path"], f["change"]) for f in source["files"]] == [
        ("README.md", "changed"), ("extra/b.json", "added"), ("unet/diffusion_pytorch_model.safetensors", "changed")]
    unet = source["files"][2]
    assert unet["before"] == {"size": 3964928, "sha256": "5634309f88ff3b40ab842708f0d2604799727b0cb2e42117d50c088ed9492ca4"}
    assert unet["after"] == {"size": 2646532, "sha256": "b1f9201a6513c788b70408de91e0105515f9c2da33f7642e1864c3ed93ceb1e9"}
    assert source["licence"] == ["apache-2.0", "mit"] and source["gated"] is None
    summary = result["summary"]
    assert f"- commit: `{upstream.pinned}` -> `{commit}`" in summary
    assert "| `unet/diffusion_pytorch_model.safetensors` | changed | 4.0 MB, sha256 5634309f88ff | 2.6 MB, sha256 b1f9201a6513 |" in summary
    assert "**licence on the model card changed**: `apache-2.0` -> `mit`" in summary


def test_current_untracked_and_unreachable_are_each_one_line(upstream: Upstream, tmp_path: Path) -> None:
    pinned = copy.deepcopy(upstream.data)
    pinned["name"] = f"{upstream.name}-pinned"
    del pinned["sources"][0]["ref"]
    (upstream.project.manifests_dir / f"{pinned['name']}.yaml").write_text(yaml.safe_dump(pinned, sort_keys=False))
    run = upstream.outdated()
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [  # every manifest, by file name
        f"untracked {pinned['name']} 1.0.0 ({upstream.project.manifests_dir / (pinned['name'] + '.yaml')}): no source "
        "follows a branch or tag (add `ref: main` to a source to track it)",
        f"current {upstream.name} 1.0.0 ({upstream.manifest}):",
        f"  sources[0] {upstream.repo_id} main: still {upstream.pinned[:12]}",
    ]
    dead = write_config(tmp_path / "dead.yaml", ("dead", "http://127.0.0.1:9"))
    run = upstream.outdated(upstream.name, env={"BUILDER_CONFIG": str(dead)})
    assert run.returncode == 1 and "Traceback" not in run.stderr
    [line] = run.stdout.splitlines()
    assert line.startswith(f"error {upstream.name} 1.0.0 ({upstream.manifest}): cannot look up {upstream.repo_id}: "
                           "cannot reach the Hub at dead http://127.0.0.1:9")
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: 1 manifest(s) could not be checked ({upstream.name}): see the lines above")


def test_gating_that_changed_upstream(upstream: Upstream) -> None:
    upstream.new_commit(gated={"hf_good"})
    anonymous = upstream.outdated(upstream.name)
    assert anonymous.returncode == 1
    assert f"{upstream.repo_id} is gated and no token was passed" in anonymous.stdout
    run = upstream.outdated(upstream.name, env={"HF_TOKEN": "hf_good"})
    assert run.returncode == 0, run.stderr
    assert "    gating: the manifest says public, the Hub now gated" in run.stdout.splitlines()
    assert "hf_good" not in run.stdout + run.stderr


def test_a_pinned_commit_the_hub_no_longer_has_is_compared_with_the_pins(upstream: Upstream) -> None:
    upstream.new_commit()
    rewritten = upstream.hub.publish(upstream.repo_id, upstream.next_dir)  # a force-push: the history is gone
    run = upstream.outdated(upstream.name)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[1] == f"  sources[0] {upstream.repo_id} main: {upstream.pinned[:12]} -> {rewritten[:12]}"
    assert lines[2].startswith(f"    ({upstream.pinned[:12]} is no longer on the Hub: compared with the manifest's pins")
    readme = "5bb5f44ac4177b52de2c24f2cc5c0544d46e436ea191dc23b6cb831b4770a498"[:12]
    assert f"    changed README.md: 321 B, sha256 {readme} -> 314 B, git blob {_blob(upstream.next_dir / 'README.md')}" in lines
    assert "    changed unet/diffusion_pytorch_model.safetensors: 4.0 MB, sha256 5634309f88ff -> 2.6 MB, sha256 b1f9201a6513" in lines


# -- the scheduled workflow -------------------------------------------------------------------------
OWNER, REPO, TOKEN = "acme", "models", "ghp_bot_token_for_tests"


def _steps() -> dict[str, dict]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    return {s["name"]: s for s in workflow["jobs"]["propose"]["steps"] if "name" in s}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


class Checkout:
    """A clone of a bare `origin` holding the project, as actions/checkout leaves it, and the step
    runner: each step's script in bash -e -o pipefail, `python` being this interpreter."""

    def __init__(self, tmp_path: Path, upstream: Upstream) -> None:
        self.origin = tmp_path / "origin.git"
        seed = tmp_path / "seed"
        shutil.copytree(upstream.project.root / "manifests", seed / "manifests")
        for folder in ("templates", "server"):
            (seed / folder).mkdir()
            (seed / folder / "README").write_text("the build's, not needed here\n")
        _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(self.origin))
        _git(seed, "init", "-q", "-b", "main")
        _git(seed, "add", ".")
        _git(seed, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "start")
        _git(seed, "push", "-q", str(self.origin), "main")
        self.root = tmp_path / "checkout"
        _git(tmp_path, "clone", "-q", str(self.origin), str(self.root))
        shims = tmp_path / "bin"
        shims.mkdir()
        (shims / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (shims / "python").chmod(0o755)
        self.summary = tmp_path / "summary.md"
        self.env = {**{k: v for k, v in upstream.env.items() if k.startswith(("BUILDER_", "HF_"))},
                    "PATH": f"{shims}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
                    "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": f"{OWNER}/{REPO}",
                    "GITHUB_STEP_SUMMARY": str(self.summary), "BASE": "main", "NO_PROXY": "127.0.0.1",
                    "no_proxy": "127.0.0.1"}

    def run(self, name: str, **env: str) -> subprocess.CompletedProcess:
        step = _steps()[name]
        assert set(step.get("env", {})) <= {"HF_TOKEN", "GH_TOKEN", "BASE"}, "a step's env the test does not set"
        return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=self.root,
                              env={**self.env, **env}, capture_output=True, text=True, timeout=300)


def test_the_workflow_relocks_bumps_pushes_and_opens_the_pull_request(upstream: Upstream, tmp_path: Path) -> None:
    commit = upstream.new_commit()
    checkout = Checkout(tmp_path, upstream)
    with GitHubStandIn(OWNER, REPO, TOKEN, checkout.origin) as github:
        api = {"GITHUB_API_URL": github.url, "GH_TOKEN": TOKEN}
        found = checkout.run("Find updates")
        assert found.returncode == 0, found.stderr
        assert f"`builder outdated` found that **{upstream.name}**" in checkout.summary.read_text()
        branches = checkout.run("Branches with the updates", **api)
        assert branches.returncode == 0, branches.stdout + branches.stderr
        opened = checkout.run("Open pull requests", **api)
        assert opened.returncode == 0, opened.stdout + opened.stderr
        assert opened.stdout.strip() == f"opened https://github.com/{OWNER}/{REPO}/pull/1"

        # The request, as GitHub documents it.
        [request] = github.state.requests
        assert (request["method"], request["path"]) == ("POST", f"/repos/{OWNER}/{REPO}/pulls")
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["accept"] == "application/vnd.github+json" and headers["x-github-api-version"] == "2022-11-28"
        assert headers["authorization"] == f"Bearer {TOKEN}" and headers["user-agent"].startswith("curl/")
        body = json.loads(request["body"])
        branch = body["head"]
        assert set(body) == {"title", "head", "base", "body"} and body["base"] == "main"
        assert body["title"] == f"{upstream.name}: upstream moved, re-locked (1.0.0 -> 1.1.0)"
        [update] = json.loads((checkout.root / "outdated.json").read_text())
        assert body["body"] == update["summary"] and f"| `extra/b.json` | added |" in body["body"]
        assert f"(manifests/{upstream.name}.yaml, version 1.0.0)" in body["body"]

        # The branch on the remote: the manifest re-locked to the new commit, its minor version bumped.
        manifest = yaml.safe_load(_git(checkout.origin, "show", f"{branch}:manifests/{upstream.name}.yaml"))
        assert manifest["version"] == "1.1.0" and manifest["sources"][0]["revision"] == commit
        pins = {a["path"]: (a["size"], a["sha256"]) for a in manifest["sources"][0]["artifacts"]}
        assert pins["extra/b.json"] == (len(EXTRA_B), hashlib.sha256(EXTRA_B).hexdigest())
        assert pins["unet/diffusion_pytorch_model.safetensors"][1] == "b1f9201a6513c788b70408de91e0105515f9c2da33f7642e1864c3ed93ceb1e9"
        assert _git(checkout.origin, "log", "-1", "--format=%s", branch) == (
            f"{upstream.name}: upstream moved, re-locked (1.0.0 -> 1.1.0)")
        assert TOKEN not in branches.stdout + branches.stderr + opened.stdout + opened.stderr

        # The next day: the same upstream commit is not proposed twice.
        _git(checkout.root, "checkout", "-q", "main")
        for name in ("Find updates", "Branches with the updates", "Open pull requests"):
            again = checkout.run(name, **api)
            assert again.returncode == 0, again.stdout + again.stderr
        assert f"{upstream.name}: {branch} was proposed before" in checkout.run("Branches with the updates", **api).stdout
        assert len(github.state.requests) == 1


def test_a_refused_pull_request_fails_the_step_with_githubs_answer(upstream: Upstream, tmp_path: Path) -> None:
    upstream.new_commit()
    checkout = Checkout(tmp_path, upstream)
    with GitHubStandIn(OWNER, REPO, TOKEN, checkout.origin) as github:
        assert checkout.run("Find updates").returncode == 0
        assert checkout.run("Branches with the updates", GITHUB_API_URL=github.url, GH_TOKEN=TOKEN).returncode == 0
        refused = checkout.run("Open pull requests", GITHUB_API_URL=github.url, GH_TOKEN="ghp_revoked")
        assert refused.returncode == 1
        assert refused.stdout.strip().startswith("::error::GitHub answered 401 to the pull request for builder/outdated/")
        assert '"message": "Bad credentials"' in refused.stdout and "ghp_revoked" not in refused.stdout


def test_without_the_bot_token_the_job_reports_and_proposes_nothing(upstream: Upstream, tmp_path: Path) -> None:
    upstream.new_commit()
    checkout = Checkout(tmp_path, upstream)
    assert checkout.run("Find updates").returncode == 0
    branches = checkout.run("Branches with the updates", GH_TOKEN="")
    assert branches.returncode == 0
    assert "::warning::BUILDER_BOT_TOKEN is not set" in branches.stdout
    assert checkout.run("Open pull requests", GH_TOKEN="", GITHUB_API_URL="http://127.0.0.1:9").returncode == 0
    assert _git(checkout.origin, "branch", "--list") == "* main"


def _post(url: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict]:
    """A POST with exactly these headers (http.client adds no User-Agent of its own; urllib3 would)."""
    import http.client
    from urllib.parse import urlsplit

    connection = http.client.HTTPConnection(urlsplit(url).netloc, timeout=10)
    try:
        connection.request("POST", path, body=body, headers={k: v for k, v in headers.items() if v})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


@pytest.mark.parametrize(("change", "status", "message"), [
    ({"headers": {"User-Agent": ""}}, 403, "Request forbidden by administrative rules"),
    ({"headers": {"Authorization": "Bearer wrong"}}, 401, "Bad credentials"),
    ({"headers": {"X-GitHub-Api-Version": "2020-01-01"}}, 400, "Invalid API version '2020-01-01'"),
    ({"path": "/repos/acme/other/pulls"}, 404, "Not Found"),
    ({"data": b"title=x"}, 400, "Problems parsing JSON"),
    ({"json": {"title": "t", "head": "feature"}}, 422, "Invalid request.\n\n\"base\" wasn't supplied."),
    ({"json": {"head": "feature", "base": "main"}}, 422, "Invalid request.\n\n\"title\" wasn't supplied."),
    ({"json": {"title": "t", "head": "feature", "base": "main", "labels": ["x"]}}, 422, "\"labels\" is not a permitted key."),
    ({"json": {"title": 5, "head": "feature", "base": "main"}}, 422, "5 is not a str"),
    ({"json": {"title": "t", "head": "feature", "base": "nope"}}, 422, 'Validation Failed{"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": "base", "code": "invalid"}]'),
    ({"json": {"title": "t", "head": "nope", "base": "main"}}, 422, '"field": "head", "code": "invalid"'),
    ({"json": {"title": "t", "head": "main", "base": "main"}}, 422, '"message": "No commits between main and main"'),
])
def test_the_stand_in_refuses_what_github_refuses(tmp_path: Path, change: dict, status: int, message: str) -> None:
    origin = tmp_path / "origin.git"
    work = tmp_path / "work"
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    _git(tmp_path, "init", "-q", "-b", "main", str(work))
    for branch in ("main", "feature"):
        _git(work, "checkout", "-q", "-B", branch)
        (work / f"{branch}.txt").write_text(branch)
        _git(work, "add", ".")
        _git(work, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", branch)
        _git(work, "push", "-q", str(origin), branch)
    good = {"title": "t", "head": "feature", "base": "main", "body": "b"}
    headers = {"Authorization": f"Bearer {TOKEN}", "User-Agent": "test", "Accept": "application/vnd.github+json",
               "X-GitHub-Api-Version": "2022-11-28", "Content-Type": "application/json"}
    pulls = f"/repos/{OWNER}/{REPO}/pulls"
    with GitHubStandIn(OWNER, REPO, TOKEN, origin) as github:
        body = change["data"] if "data" in change else json.dumps(change.get("json", good)).encode()
        code, answer = _post(github.url, change.get("path", pulls), {**headers, **change.get("headers", {})}, body)
        assert code == status and message in answer["message"] + json.dumps(answer)
        # the documented request goes through, once: a second from the same head is refused
        assert _post(github.url, pulls, headers, json.dumps(good).encode()) == (201, github.state.pulls[0])
        code, answer = _post(github.url, pulls, headers, json.dumps(good).encode())
        assert code == 422 and answer["errors"][0]["message"] == "A pull request already exists for acme:feature."
