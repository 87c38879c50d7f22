"""`builder bump`: new versions for changed images, the YAML edited in place, and the CI check
run as the workflow runs it, on real git histories."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builder.errors import InputError, ManifestError
from builder.manifest import load_manifest
from builder.versions import bump_manifest, bump_text, next_version
from tests.conftest import ROOT
from tests.test_changed import commit, git

WORKFLOW = ROOT / ".github/workflows/build.yml"
CHECK_STEP = "Affected manifests have new versions"
# The manifests CI builds (the workflow's LOCAL_ONLY leaves out demo and tiny-*).
PUSHED = ["flux", "instantid", "musetalk", "xtts-v2", "z-image"]


@pytest.mark.parametrize(("version", "part", "expected"), [
    ("1.0.0", "patch", "1.0.1"), ("1.2.9", "minor", "1.3.0"), ("1.2.9", "major", "2.0.0"), ("0.9.10", "patch", "0.9.11"),
])
def test_next_version(version: str, part: str, expected: str) -> None:
    assert next_version(version, part) == expected


def test_a_version_that_is_not_semver_is_left_to_a_human() -> None:
    with pytest.raises(InputError, match="'2024-05-01' is not MAJOR.MINOR.PATCH: edit the manifest's `version:` by hand"):
        next_version("2024-05-01", "patch")


def test_only_the_top_level_version_line_changes() -> None:
    text = ("# a comment about version: 1.0.0\n"
            "name: m\n"
            "version: '1.4.2'   # bumped by hand last time\n"
            "runtime:\n"
            "  version: 1.4.2\n"
            "  packages: [\"x==1.4.2\"]\n")
    old, new, bumped = bump_text(text, "m.yaml", "minor")
    assert (old, new) == ("1.4.2", "1.5.0")
    assert bumped == text.replace("version: '1.4.2'   #", "version: '1.5.0'   #")


def test_an_unquoted_version_is_quoted_and_crlf_line_ends_stay() -> None:
    _, _, bumped = bump_text("name: m\r\nversion: 1.0.0\r\nprofile: x\r\n", "m.yaml", "patch")
    assert bumped == 'name: m\r\nversion: "1.0.1"\r\nprofile: x\r\n'


def test_no_or_two_version_lines_is_one_clear_error() -> None:
    with pytest.raises(ManifestError, match="m.yaml: expected one top-level `version:` line with a plain value, found 0"):
        bump_text("name: m\nversion: >-\n  1.0.0\n", "m.yaml", "patch")


def test_bump_keeps_every_other_byte_and_the_manifest_validates(tmp_path: Path) -> None:
    path = tmp_path / "flux.yaml"
    shutil.copy(ROOT / "manifests/flux.yaml", path)
    before = path.read_text().splitlines(keepends=True)
    major, minor, patch = load_manifest(path).version.split(".")
    done = bump_manifest(path, "patch")
    after = path.read_text().splitlines(keepends=True)
    assert (done.old, done.new) == (f"{major}.{minor}.{patch}", f"{major}.{minor}.{int(patch) + 1}")
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and changed == [(f'version: "{done.old}"\n', f'version: "{done.new}"\n')]
    assert load_manifest(path).version == done.new


def test_an_invalid_manifest_is_not_bumped(tmp_path: Path) -> None:
    path = tmp_path / "flux.yaml"
    text = (ROOT / "manifests/flux.yaml").read_text().replace("profile: hf-diffusers-standard", "profile: nonsense")
    path.write_text(text)
    with pytest.raises(ManifestError, match="profile"):
        bump_manifest(path, "patch")
    assert path.read_text() == text


# -- the workflow's own check, on a git history ------------------------------------------------
def _step(name: str) -> tuple[str, dict[str, str]]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = [s for job in workflow["jobs"].values() for s in job.get("steps", []) if s.get("name") == name]
    assert len(steps) == 1, f"the workflow has no step {name!r}"
    return steps[0]["run"], dict(workflow.get("env", {}))


def _run_step(repo: Path, base: str, tmp_path: Path, name: str = CHECK_STEP, **extra: str) -> subprocess.CompletedProcess:
    """The step's script in bash as GitHub runs it (-e, pipefail), `python` being this interpreter
    and the checkout being `repo`."""
    script, env = _step(name)
    env.update(extra)
    shims = tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    if not (shims / "python").exists():  # a script, not a link: a venv's python finds its venv by its own path
        (shims / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (shims / "python").chmod(0o755)
    env.update(BASE=base, PATH=f"{shims}:/usr/bin:/bin", PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def project_repo(tmp_path: Path) -> Path:
    """A git checkout with the project's real manifests, and stand-ins for the shared code."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    # The real manifests, the pushed ones at 1.0.0 (whatever version main has reached), so the
    # expected versions below stay fixed.
    files = {f"manifests/{p.name}": re.sub(r'^version: "[0-9.]+"$', 'version: "1.0.0"', p.read_text(), count=1, flags=re.M)
             if p.stem in PUSHED else p.read_text() for p in (ROOT / "manifests").glob("*.yaml")}
    files.update({"templates/base.Dockerfile.j2": "x", "server/app.py": "x", "builder/cli.py": "x"})
    commit(root, "start", files)
    return root


def test_ci_fails_a_shared_change_until_the_affected_manifests_are_bumped(project_repo: Path, tmp_path: Path) -> None:
    base = git(project_repo, "rev-parse", "HEAD")
    git(project_repo, "checkout", "-q", "-b", "change")
    commit(project_repo, "server change", {"server/app.py": "y"})

    failed = _run_step(project_repo, base, tmp_path)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert sorted(re.findall(r"^stale ([\w-]+): version 1\.0\.0 is the version at the base", failed.stdout, re.M)) == PUSHED
    fix = re.search(r"run `(python -m builder bump [^`]+)`", failed.stderr)
    assert fix, failed.stderr

    # The command the failure names, run in the checkout, is the fix.
    bumped = subprocess.run(["bash", "-c", fix.group(1)], cwd=project_repo, capture_output=True, text=True,
                            env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert bumped.returncode == 0, bumped.stderr
    assert sorted(re.findall(r"^bumped ([\w-]+): 1\.0\.0 -> 1\.0\.1$", bumped.stdout, re.M)) == PUSHED
    diff = git(project_repo, "diff", "-U0", "--no-color")
    assert sorted(line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))) == \
        ['+version: "1.0.1"'] * len(PUSHED) + ['-version: "1.0.0"'] * len(PUSHED)
    assert load_manifest(project_repo / "manifests/demo.yaml").version == "0.1.0"  # excluded: not pushed by CI
    git(project_repo, "commit", "-q", "-am", "bump")

    passed = _run_step(project_repo, base, tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "ok: every affected manifest has a new version" in passed.stdout
    again = subprocess.run(["bash", "-c", fix.group(1)], cwd=project_repo, capture_output=True, text=True,
                           env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert again.returncode == 0 and "nothing to bump" in again.stdout  # a second run bumps nothing twice


def test_ci_checks_only_the_changed_manifest_and_refuses_a_version_moved_back(project_repo: Path,
                                                                              tmp_path: Path) -> None:
    flux = project_repo / "manifests/flux.yaml"
    commit(project_repo, "flux at 1.2.0", {"manifests/flux.yaml": flux.read_text().replace('version: "1.0.0"', 'version: "1.2.0"')})
    base = git(project_repo, "rev-parse", "HEAD")
    commit(project_repo, "edit flux, back to 1.1.9",
           {"manifests/flux.yaml": flux.read_text().replace('version: "1.2.0"', 'version: "1.1.9"')})
    moved_back = _run_step(project_repo, base, tmp_path)
    assert moved_back.returncode == 1
    assert moved_back.stdout.splitlines() == ["stale flux: version 1.1.9 is older than 1.2.0 at the base"]

    commit(project_repo, "forward again", {"manifests/flux.yaml": flux.read_text().replace('version: "1.1.9"', 'version: "1.2.1"')})
    assert _run_step(project_repo, base, tmp_path).returncode == 0


def test_a_new_manifest_and_a_new_branch_need_nothing(project_repo: Path, tmp_path: Path) -> None:
    base = git(project_repo, "rev-parse", "HEAD")
    commit(project_repo, "new model", {"manifests/extra.yaml": (project_repo / "manifests/flux.yaml").read_text()
                                       .replace("name: flux", "name: extra")})
    assert _run_step(project_repo, base, tmp_path).returncode == 0
    assert _run_step(project_repo, "0" * 40, tmp_path).returncode == 0  # a branch's first push: nothing to compare


def test_the_matrix_step_leaves_out_what_lives_only_on_the_loopback_hub(project_repo: Path, tmp_path: Path) -> None:
    base = git(project_repo, "rev-parse", "HEAD")
    commit(project_repo, "server change", {"server/app.py": "y"})
    output = tmp_path / "github_output"
    step = _run_step(project_repo, base, tmp_path, "Affected manifests", GITHUB_OUTPUT=str(output))
    assert step.returncode == 0, step.stderr
    assert output.read_text() == f"manifests={json.dumps(PUSHED)}\n"


def test_bump_without_a_target_or_base_is_one_line(project_repo: Path) -> None:
    from tests.conftest import run_builder

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    for args, message in [([], "say what to bump: NAME..., or --changed --base REF"),
                          (["--check"], "--check and --changed compare with a revision: pass --base REF"),
                          (["flux", "--changed", "--base", "HEAD"], "name manifests, or use --changed/--check, not both"),
                          (["--check", "--base", "nope"], "--base nope: git cannot compare it with HEAD")]:
        result = run_builder(["--root", str(project_repo), "bump", *args], env)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), (args, result.stderr)


# -- what main builds: the registry's record, not the previous push (issue 22) -----------------------
UNBUILT_STEP = "Manifests main has not built yet"


def test_a_manifest_bumped_in_a_cancelled_run_is_still_built(project_repo: Path, tmp_path: Path, registry: str) -> None:
    """GitHub cancels a pending run when a newer one queues in the same concurrency group. Push B
    bumps flux and its run is cancelled; push C bumps z-image. Diffing C from `event.before` (B)
    finds z-image only, and flux 1.0.1 would never be built; the workflow asks the registry."""
    from tests.conftest import push_fake_image, run_builder, unique_name

    namespace = f"{registry}/{unique_name('ci')}"
    for name in PUSHED:  # push A: its run built every manifest at 1.0.0
        push_fake_image(namespace, name, "1.0.0", "1.0.0", "2026-11-01T00:00:00Z")
    flux, z_image = project_repo / "manifests/flux.yaml", project_repo / "manifests/z-image.yaml"
    before = commit(project_repo, "B: flux 1.0.1 (its run is cancelled)",
                    {"manifests/flux.yaml": flux.read_text().replace('version: "1.0.0"', 'version: "1.0.1"')})
    commit(project_repo, "C: z-image 1.0.1",
           {"manifests/z-image.yaml": z_image.read_text().replace('version: "1.0.0"', 'version: "1.0.1"')})

    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    diffed = run_builder(["--root", str(project_repo), "changed", "--base", before, "--exclude", "demo",
                          "--exclude", "tiny-*", "--json"], env)
    assert json.loads(diffed.stdout) == ["z-image"]  # what `event.before` gave: flux lost

    output = tmp_path / "github_output"
    step = _run_step(project_repo, before, tmp_path, UNBUILT_STEP, GITHUB_OUTPUT=str(output), BUILDER_REGISTRY=namespace)
    assert step.returncode == 0, step.stderr
    assert output.read_text() == 'manifests=["flux", "z-image"]\n'

    # The assemble job takes that output, and the smoke job's matrix is what it assembled.
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "steps.unbuilt.outputs.manifests" in workflow["jobs"]["check"]["outputs"]["manifests"]
    assemble = next(s for s in workflow["jobs"]["assemble"]["steps"] if s.get("id") == "assemble")
    assert assemble["env"]["MANIFESTS"] == "${{ needs.check.outputs.manifests }}"
    assert workflow["jobs"]["build"]["strategy"]["matrix"]["manifest"] == "${{ fromJSON(needs.assemble.outputs.names) }}"

    for name in ("flux", "z-image"):  # C's run built both: the next push builds nothing again
        push_fake_image(namespace, name, "1.0.1", "1.0.1", "2026-11-02T00:00:00Z")
    output.write_text("")
    assert _run_step(project_repo, before, tmp_path, UNBUILT_STEP, GITHUB_OUTPUT=str(output),
                     BUILDER_REGISTRY=namespace).returncode == 0
    assert output.read_text() == "manifests=[]\n"


def test_the_unbuilt_step_fails_loudly_without_a_registry(project_repo: Path, tmp_path: Path) -> None:
    output = tmp_path / "github_output"
    step = _run_step(project_repo, "", tmp_path, UNBUILT_STEP, GITHUB_OUTPUT=str(output))
    assert step.returncode == 2  # not an empty matrix that builds nothing
    assert "no registry: pass --registry" in step.stderr and not output.exists()


def test_the_gpu_job_logs_out_and_tidies_whatever_happened() -> None:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["build"]["steps"]
    by_name = {step.get("name"): step for step in steps}
    logout, tidy = by_name["Log out of the registry"], by_name["Free disk for the next build"]
    assert logout["if"] == "always()" and "docker logout" in logout["run"]
    assert tidy["if"] == "always()" and "python -m builder tidy" in tidy["run"]
    names = [step.get("name") for step in steps]
    assert names.index("Log out of the registry") > names.index("Log in to the registry")
