"""Shared fixtures: the project, the tiny model, a loopback Hub, a real registry and dockerd."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from builder.project import Project
from tests.localhub import LocalHub

if TYPE_CHECKING:
    from tests.engines import CiUser, Engine26, Engine26Pool

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "builder-local/python-cpu:3.11"
AUDIO_BASE_IMAGE = "builder-local/python-audio:3.11"  # torch 2.9.1, torchaudio, coqui-tts (tests/env/up.sh)
DEMO_REPO = "builder-demo/tiny-sd"


def wait_for(check: Callable[[], bool], timeout: float, what: str,
             stop: Callable[[], str | None] = lambda: None) -> None:
    """Poll check() until it is true; fail after timeout, or at once when stop() gives a reason."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:  # connection refused and friends (requests' errors are OSErrors)
            pass
        reason = stop()
        if reason:
            raise AssertionError(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def private_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The builder's default files (the ledger under $XDG_STATE_HOME, the push state under
    $XDG_CACHE_HOME) in this session's own directory, for the builders the tests start too: never
    the user's own, which another checkout's newer builder may have migrated, nor one that another
    session or pytest-xdist worker writes at the same time."""
    home = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(home / "state"))
        patch.setenv("XDG_CACHE_HOME", str(home / "cache"))
        yield home


@pytest.fixture(scope="session")
def project() -> Project:
    return Project(ROOT)


@pytest.fixture(scope="session")
def demo_manifest_data() -> dict:
    return yaml.safe_load((ROOT / "manifests" / "demo.yaml").read_text())


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny random-weight model (the demo's and the stand-ins'), made once per session."""
    from tests.fixtures.tiny_models import MAKERS

    root = tmp_path_factory.mktemp("tiny")
    return {name: make(root / name) for name, make in MAKERS.items()}


@pytest.fixture(scope="session")
def tiny_sd(tiny_models: dict[str, Path]) -> Path:
    return tiny_models["tiny-sd"]


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Iterator[LocalHub]:
    """A loopback Hub serving every tiny model under the repository id its manifest names."""
    with LocalHub(tmp_path_factory.mktemp("hub")) as local_hub:
        local_hub.publish(DEMO_REPO, tiny_models["tiny-sd"])
        for name, directory in tiny_models.items():
            if name != "tiny-sd":
                local_hub.publish(f"builder-demo/{name}", directory)
        yield local_hub


# -- docker -------------------------------------------------------------------------------------
def _docker_problem() -> str | None:
    try:
        from builder.docker import Docker

        docker = Docker.connect()
    except Exception as exc:  # noqa: BLE001 - reported as the skip/fail reason
        return str(exc)
    try:
        docker.client.images.get(BASE_IMAGE)
    except Exception:  # noqa: BLE001
        return f"the local base image {BASE_IMAGE} is missing: run `make env`"
    return None


@pytest.fixture(scope="session")
def docker_ready() -> None:
    problem = _docker_problem()
    if problem is None:
        return
    if os.environ.get("BUILDER_REQUIRE_DOCKER") == "1":
        pytest.fail(f"docker tests required (make test) but: {problem}")
    pytest.skip(f"no Docker engine: {problem}")


@pytest.fixture(scope="session")
def audio_ready(docker_ready: None) -> None:
    """The local audio base image, which the XTTS stand-in is made and built on."""
    from builder.docker import Docker

    try:
        Docker.connect().client.images.get(AUDIO_BASE_IMAGE)
    except Exception:  # noqa: BLE001 - reported as the skip/fail reason
        problem = f"the local audio base image {AUDIO_BASE_IMAGE} is missing: run `make env`"
        if os.environ.get("BUILDER_REQUIRE_DOCKER") == "1":
            pytest.fail(f"docker tests required (make test) but: {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="session")
def tiny_xtts(tmp_path_factory: pytest.TempPathFactory, hub: LocalHub, audio_ready: None) -> Path:
    """The tiny XTTS-v2 checkpoint, made in the audio base image (coqui-tts cannot load beside
    the project's torch) and published to the loopback Hub as manifests/tiny-xtts.yaml names it."""
    from tests.fixtures.tiny_xtts import make_tiny_xtts

    directory = make_tiny_xtts(tmp_path_factory.mktemp("tiny") / "tiny-xtts", AUDIO_BASE_IMAGE)
    hub.publish("builder-demo/tiny-xtts", directory)
    return directory


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real CNCF Distribution registry on a free loopback port, for this session only."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        if os.environ.get("BUILDER_REQUIRE_DOCKER") == "1":
            pytest.fail("docker-registry is not installed: run `make env`")
        pytest.skip("docker-registry is not installed (make env installs it)")
    state = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{free_port()}"
    config = state / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {"filesystem": {"rootdirectory": str(state / "data")}, "delete": {"enabled": True}},
                "http": {"addr": address},
            }
        )
    )
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://{address}/v2/", timeout=1).status == 200, 15,
                 f"the test registry on {address}", lambda: "exited" if proc.poll() is not None else None)
    except AssertionError:
        proc.kill()
        raise
    yield address
    proc.terminate()
    proc.wait(timeout=10)


# -- Docker 26 from Debian 13, both image stores, and a non-root user (tests/engines.py) ---------------
def _unavailable(what: str, problem: str) -> None:
    if os.environ.get("BUILDER_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{what} required (make test) but: {problem}")
    pytest.skip(f"{what}: {problem}")


@pytest.fixture(scope="session")
def engines26(docker_ready: None) -> Iterator[Engine26Pool]:
    """The Debian 13 engine's modes, each started on first use and let go at the session's end."""
    from tests.engines import Engine26Pool

    pool = Engine26Pool()
    yield pool
    pool.close()


@pytest.fixture(scope="session", params=["classic", "containerd"])
def engine26(request: pytest.FixtureRequest, engines26: Engine26Pool) -> Engine26:
    """Docker 26 in one mode (classic store, containerd image store), holding the local base image."""
    from builder.docker import Docker
    from tests.engines import EngineUnavailable, ensure_image

    try:
        engine = engines26.get(request.param)
        ensure_image(Docker.connect().client, engine, BASE_IMAGE)
    except EngineUnavailable as exc:
        _unavailable(f"the Docker 26 engine ({request.param})", str(exc))
    return engine


@pytest.fixture(scope="session")
def ci_user() -> CiUser:
    """builderci (uid 2000 where free), in the docker group that owns every engine's socket."""
    from tests.engines import EngineUnavailable, ci_user as make_user

    try:
        return make_user()
    except EngineUnavailable as exc:
        _unavailable("the non-root CI user", str(exc))


# -- PostgreSQL (the ledger shared by several build hosts) ------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of the throwaway loopback cluster tests/env/postgres.sh keeps under .cache/env
    (started here when it is not running; `make env` installs PostgreSQL)."""
    problem = None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        problem = "psycopg is not installed: pip install -e '.[postgres]' (make env)"
    else:
        run = subprocess.run([str(ROOT / "tests" / "env" / "postgres.sh")], capture_output=True, text=True, timeout=180)
        if run.returncode != 0:
            problem = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
    if problem is not None:
        if os.environ.get("BUILDER_REQUIRE_DOCKER") == "1":
            pytest.fail(f"PostgreSQL ledger tests required (make test) but: {problem}")
        pytest.skip(f"no PostgreSQL server: {problem}")
    return (ROOT / ".cache" / "env" / "postgres" / "url").read_text().strip()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the test cluster, dropped afterwards."""
    import psycopg

    name = f"ledger_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    yield f"{postgres_server.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(postgres_server, autocommit=True) as db:
        db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def write_config(path: Path, *mirrors: tuple[str, str], **extra: object) -> Path:
    """A builder configuration approving exactly these (name, url) mirrors."""
    path.write_text(yaml.safe_dump({"mirrors": [{"name": n, "url": u} for n, u in mirrors], **extra}))
    return path


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The host's weights cache for this test session: shared by its builds, as on a build host."""
    return tmp_path_factory.mktemp("weights-cache")


@pytest.fixture
def isolated_env(tmp_path: Path, hub: LocalHub, weights_cache: Path) -> dict[str, str]:
    """Environment for a builder subprocess: our Hub as the one approved mirror, a ledger of its
    own, the session's weights cache, no inherited token or saved login."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "BUILDER_REGISTRY", "HF_ENDPOINT")}
    config = write_config(tmp_path / "builder.yaml", ("local", hub.url), fetch={"progress_seconds": 2})
    env.update({"BUILDER_CONFIG": str(config), "BUILDER_LEDGER": str(tmp_path / "ledger.sqlite3"),
                "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1",
                "BUILDER_WEIGHTS_CACHE": str(weights_cache)})
    return env


def make_project(tmp_path: Path, manifest: dict, copy_server: bool = True) -> Project:
    """A throwaway project root with the real templates and server code and one manifest."""
    root = tmp_path / f"project-{manifest['name']}"
    (root / "manifests").mkdir(parents=True)
    shutil.copytree(ROOT / "templates", root / "templates")
    if copy_server:
        shutil.copytree(ROOT / "server", root / "server", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "manifests" / f"{manifest['name']}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return Project(root)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_builder(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def push_fake_image(registry: str, name: str, tag: str, version: str, created: str, payload: bytes = b"",
                    labels: dict[str, str] | None = None) -> str:
    """Push a small but real image (one layer, a config with builder's labels) straight through the
    registry API; return its manifest digest. For lifecycle tests that need many versions fast."""
    import gzip
    import hashlib
    import io
    import json as _json
    import tarfile

    import requests

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        data = payload or f"{name}:{version}".encode()
        info = tarfile.TarInfo("payload.txt")
        info.size, info.mtime = len(data), 0
        archive.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = _json.dumps({
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {"Labels": {"io.builder.manifest.name": name, "io.builder.manifest.version": version,
                              "io.builder.profile": "hf-diffusers-standard", "io.builder.locked": "true",
                              **(labels or {})}},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()]},
        "history": [{"created": created, "created_by": "test"}],
    }).encode()
    base = f"http://{registry.split('/', 1)[0]}/v2/{registry.split('/', 1)[1] + '/' if '/' in registry else ''}{name}"
    for blob in (layer, config):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        location = requests.post(f"{base}/blobs/uploads/", timeout=10).headers["Location"]
        location = location if location.startswith("http") else f"http://{registry.split('/', 1)[0]}{location}"
        requests.put(f"{location}&digest={digest}", data=blob, timeout=10).raise_for_status()
    manifest = _json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest(), "size": len(layer)}],
    }).encode()
    response = requests.put(f"{base}/manifests/{tag}", data=manifest, timeout=10,
                            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    response.raise_for_status()
    return response.headers["Docker-Content-Digest"]
