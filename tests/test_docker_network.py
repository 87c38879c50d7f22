"""The build steps' network follows the engine: host only where it has no bridge network."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from builder.docker import BuildRequest, BuildTool, Docker, detect_build_tool
from tests.conftest import BASE_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]


def _engine_networks() -> set[str]:
    listed = subprocess.run(["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True,
                            check=True).stdout
    return set(listed.split())


def _recording(tool: BuildTool, log: Path, directory: Path) -> BuildTool:
    """The real build tool behind a script that first writes down its arguments."""
    script = directory / "docker-recorded"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(log))}\nexec {shlex.quote(tool.argv[0])} "$@"\n')
    script.chmod(0o755)
    return BuildTool((str(script), *tool.argv[1:]), tool.env)


@pytest.mark.parametrize(("asked", "expected"), [("auto", None), ("host", "host")])
def test_a_build_runs_on_the_network_the_engine_suits(tmp_path: Path, asked: str, expected: str | None) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN true\n")
    log = tmp_path / "argv"
    docker = Docker.connect()
    docker = Docker(docker.client, _recording(detect_build_tool(), log, tmp_path))
    has_bridge = "bridge" in _engine_networks()
    assert docker.has_bridge_network() is has_bridge
    image = docker.build(BuildRequest(context, network=asked), on_line=lambda line: None)
    assert image.startswith("sha256:")
    argv = log.read_text().splitlines()
    used = argv[argv.index("--network") + 1]
    assert used == (expected or ("default" if has_bridge else "host")), json.dumps(argv)
