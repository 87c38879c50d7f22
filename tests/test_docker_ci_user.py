"""The whole demo build as a CI runner runs it: a user who is not root, in the docker group, on
this machine's engine (Docker 20.10) and on Docker 26 in both image stores (tests/env/engine26.sh).

Nothing on the weights path reads the engine's private store: the weights come from the user's
own cache, their layers are the builder's, the smoke sees them through bind mounts; only the code
layers change path (the engine pushes them, its store being unreadable). Each image is then pulled
by digest into another engine and its smoke passes there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, unique_name, write_config
from tests.engines import CiUser, Engine26
from tests.test_docker_build import DOCKER

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]
MAIN_HOST = "unix:///var/run/docker.sock"


@pytest.fixture(scope="module")
def user_home(ci_user: CiUser) -> Iterator[Path]:
    """A directory of the user's own for the weights cache, ledger and temporary files."""
    path = Path(tempfile.mkdtemp(prefix="builderci-build-"))
    ci_user.give(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def user_python(ci_user: CiUser, user_home: Path) -> tuple[list[str], str]:
    """The interpreter and PYTHONPATH the user runs the builder with: every module a build imports,
    from where it lies when the user can read it there, else copied (a checkout or virtual
    environment under root's home is not readable)."""
    probe = subprocess.run([sys.executable, "-c", (
        "import sys, builder.cli, builder.build, builder.smoke, builder.assemble, huggingface_hub, docker\n"
        "from builder.build import hub_token; hub_token()\n"
        "tops = {m.split('.')[0] for m in list(sys.modules)}\n"
        "names = {t for t in tops if getattr(sys.modules.get(t), '__file__', None)\n"
        "         and ('site-packages' in sys.modules[t].__file__ or sys.modules[t].__file__.startswith(sys.argv[1]))}\n"
        "print(' '.join(sorted(names)))"), str(ROOT)], capture_output=True, text=True, check=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    modules = [m for m in probe.stdout.split() if not m.startswith("_") or m in ("_cffi_backend", "_yaml")]
    interpreter, pythonpath = ci_user.python(["builder", "server", *modules], user_home / "site")
    return interpreter, pythonpath


def build_as_user(ci_user: CiUser, user_python: tuple[list[str], str], home: Path, env: dict[str, str],
                  registry: str | None) -> tuple[dict, str]:
    interpreter, pythonpath = user_python
    name = unique_name("ci")
    work = home / name
    work.mkdir()
    ci_user.give(work)
    config = write_config(work / "builder.yaml", *env.pop("MIRRORS"), fetch={"progress_seconds": 2})
    ci_user.give(config)
    where = ["--registry", f"{registry}/{name}"] if registry else ["--no-push"]
    run = ci_user.run([*interpreter, "-m", "builder", "--root", str(ROOT), "build", "demo", *where, "--json"],
                      timeout=1200, cwd=work, env={
        **env, "PYTHONPATH": pythonpath, "BUILDER_CONFIG": str(config), "BUILDER_LEDGER": str(work / "ledger.sqlite3"),
        "BUILDER_WEIGHTS_CACHE": str(home / "weights-cache"), "HF_HOME": str(work / "hf"), "TMPDIR": str(work),
        "XDG_CACHE_HOME": str(work / "cache"), "HF_HUB_DISABLE_TELEMETRY": "1"})
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return json.loads(run.stdout), run.stderr


def smoke_in(host: str, reference: str) -> dict:
    """Pull `reference` by digest into the engine at `host` and run its smoke there."""
    env = {**os.environ, "DOCKER_HOST": host}
    subprocess.run([DOCKER, "pull", "-q", reference], env=env, check=True, capture_output=True, timeout=900)
    try:
        out = subprocess.run([DOCKER, "run", "--rm", "--network", "none", "-e", "BUILDER_DEVICE=cpu", reference,
                              "python3", "-m", "server.smoke"], env=env, capture_output=True, text=True, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([DOCKER, "rmi", "-f", reference], env=env, capture_output=True)


def _check(result: dict, log: str, tool: str, via: str = "mounts") -> None:
    assert result["pushed"] and result["smoke"]["passed"] and result["smoke_via"] == via
    lines = [line for line in log.splitlines() if "==>" in line]
    assert [line for line in lines if "build tool: " in line and tool in line], lines
    assert [line for line in lines if "push path: weights layers from the cache" in line
            and "code layers by the Docker engine's own push" in line], lines  # the user cannot read its store


def test_the_demo_builds_as_the_ci_user_on_this_machines_engine(ci_user: CiUser, user_python, user_home: Path,
                                                                registry: str, hub, engines26) -> None:
    result, log = build_as_user(ci_user, user_python, user_home,
                                {"DOCKER_HOST": MAIN_HOST, "MIRRORS": [("local", hub.url)]}, registry)
    # buildx where the user's DOCKER_CONFIG has the plugin (an earlier test may have put it there), else
    # the pre-23 client with DOCKER_BUILDKIT=1: either way, the line names it.
    _check(result, log, "build")
    engine = engines26.get("classic")
    assert smoke_in(engine.docker_host, result["digest_reference"])["passed"]


@pytest.mark.engine26
def test_the_demo_builds_as_the_ci_user_on_docker_26(engine26: Engine26, ci_user: CiUser, user_python,
                                                     user_home: Path, registry: str, hub) -> None:
    config = engine26.docker_config(ci_user.home / ".docker", owner=ci_user)
    result, log = build_as_user(ci_user, user_python, user_home,
                                {**engine26.env(config), "MIRRORS": [("local", hub.url)]}, registry)
    # This engine runs in a root of its own (tests/env/engine26.sh): it cannot see the host's /tmp,
    # where the user's weights cache is, so the image goes to the registry first and it pulls that.
    _check(result, log, "buildx build --load", via="pulled")
    assert "the engine cannot see this host's files" in log
    assert smoke_in(MAIN_HOST, result["digest_reference"])["passed"]  # pulled into the other engine

    # --no-push: the image is loaded into this engine (the containerd store wants every layer in the
    # archive: the code image's too) and tagged there after its smoke.
    local, log = build_as_user(ci_user, user_python, user_home,
                               {**engine26.env(config), "MIRRORS": [("local", hub.url)]}, None)
    assert local["smoke"]["passed"] and local["smoke_via"] == "image" and local["tag"] == "demo:0.1.0"
    labels = engine26.client.images.get("demo:0.1.0").labels
    assert labels["io.builder.manifest.name"] == "demo"
    engine26.client.images.remove("demo:0.1.0", force=True)
