"""builder.docker on a current engine: Docker 26 from Debian 13, through `docker buildx build --load`
(the host's 28.x CLI with Debian 13's buildx plugin), on the classic image store and on the
containerd image store, as root and as a non-root user in the docker group (tests/engines.py).

The build uses what the real builds use: a secret mount, a cache mount and the host network."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builder.docker import BuildRequest, Docker, detect_build_tool
from builder.errors import ChecksumMismatch, DockerError
from tests.conftest import BASE_IMAGE
from tests.engines import CiUser, Engine26

pytestmark = [pytest.mark.docker, pytest.mark.engine26]

SECRET = "e26-secret-" + uuid.uuid4().hex  # not shaped like a token: the log scrubber would not hide it


@pytest.fixture(scope="module")
def loopback_page() -> Iterator[str]:
    """A page on 127.0.0.1 that only a build step on the host network can reach."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = b"reached-over-loopback"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def user_tmp(ci_user: CiUser) -> Iterator[Path]:
    """A scratch directory the CI user owns (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="builderci-"))
    ci_user.give(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_context(directory: Path, page: str, cache_id: str) -> tuple[Path, Path]:
    """A build context whose one step reads a secret, counts its runs in a cache mount and fetches
    a loopback page; and the secret's file, outside the context. Returns (context, secret file)."""
    context = directory / "context"
    context.mkdir(parents=True)
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\n"
        "ARG BUILDER_REBUILD\n"
        f"RUN --mount=type=secret,id=token,required=true --mount=type=cache,id={cache_id},target=/cache \\\n"
        "    n=$(cat /cache/count 2>/dev/null || echo 0) && n=$((n + 1)) && echo $n > /cache/count && echo $n > /count && \\\n"
        "    sha256sum < /run/secrets/token | cut -c1-64 > /token.sha256 && \\\n"
        "    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \\\n"
        f"      {page} > /reached\n"
    )
    secret = directory / "token"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    return context, secret


def read_back(engine: Engine26, image_id: str) -> dict[str, str]:
    """What the build step left in the image, read by a container on the engine itself."""
    script = ("for f in /count /token.sha256 /reached; do printf '%s=' $f; cat $f; done; "
              "test -e /run/secrets/token && echo secret-left=yes || echo secret-left=no")
    out = engine.client.containers.run(image_id, ["sh", "-c", script], network_mode="none", remove=True).decode()
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def remove(engine: Engine26, *image_ids: str) -> None:
    for image_id in image_ids:
        try:
            engine.client.images.remove(image_id, force=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def test_the_engine_is_docker_26_in_the_mode_asked(engine26: Engine26) -> None:
    info = engine26.client.info()
    assert engine26.client.version()["Version"].startswith("26.")
    containerd_store = any(pair[:1] == ["driver-type"] for pair in info.get("DriverStatus") or [])
    assert containerd_store is (engine26.mode == "containerd"), info.get("DriverStatus")
    # The socket belongs to the docker group, not to root alone: the CI user's way in.
    socket_path = engine26.docker_host.removeprefix("unix://")
    mode = os.stat(socket_path)
    assert mode.st_gid == grp.getgrnam("docker").gr_gid and mode.st_mode & stat.S_IRWXG == stat.S_IRGRP | stat.S_IWGRP


def test_a_build_through_buildx_as_root(engine26: Engine26, tmp_path: Path, loopback_page: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    config = engine26.docker_config(tmp_path / "docker-config")
    tool = detect_build_tool({**os.environ, "DOCKER_CONFIG": str(config)})
    assert tool.buildx and tool.argv[-3:] == ("buildx", "build", "--load"), tool.describe()
    docker = Docker(engine26.client, tool)  # no DOCKER_HOST in the environment: the client's engine is used
    assert docker.docker_host == engine26.docker_host and not docker.has_bridge_network()
    context, secret = write_context(tmp_path, loopback_page, f"e26-{uuid.uuid4().hex[:8]}")
    lines: list[str] = []

    def build(rebuild: str) -> str:
        request = BuildRequest(context, secrets={"token": secret}, build_args={"BUILDER_REBUILD": rebuild},
                               network="host")
        return docker.build(request, on_line=lines.append)  # nothing to scrub: nothing may print it

    first = build("1")
    again = build("1")
    second = build("2")
    try:
        # The id is one the engine answers to; on the containerd store that is the manifest's digest.
        assert engine26.client.images.get(first).id == first
        assert again == first, "a build with nothing changed must give the same image"
        config_digest = docker.config_digest(first)
        if engine26.mode == "classic":
            assert config_digest == first
        else:
            assert config_digest != first and config_digest.startswith("sha256:")
        base = engine26.client.images.get(BASE_IMAGE).attrs["RootFS"]["Layers"]
        layers = docker.diff_ids(first)
        assert layers[: len(base)] == base and len(layers) == len(base) + 1
        seen = read_back(engine26, first), read_back(engine26, second)
        assert [s["/count"] for s in seen] == ["1", "2"]  # the cache mount kept the first run's count
        assert {s["/token.sha256"] for s in seen} == {hashlib.sha256(SECRET.encode()).hexdigest()}
        assert {s["/reached"] for s in seen} == {"reached-over-loopback"}  # the host network, over loopback
        assert {s["secret-left"] for s in seen} == {"no"}
        attrs = json.dumps([engine26.client.images.get(first).attrs, engine26.client.api.history(first)])
        assert SECRET not in attrs and SECRET not in "\n".join(lines)
        assert any(line.startswith("#") and "RUN --mount=type=secret" in line for line in lines)  # plain progress
    finally:
        remove(engine26, first, second)


def test_a_failed_buildx_build_is_one_line_and_carries_markers(engine26: Engine26, tmp_path: Path) -> None:
    docker = Docker(engine26.client, detect_build_tool({**os.environ, "DOCKER_CONFIG": str(
        engine26.docker_config(tmp_path / "docker-config"))}))
    context = tmp_path / "marker"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nRUN echo '::builder-error::ChecksumMismatch::demo: a.bin: sha256 mismatch'; exit 3\n")
    with pytest.raises(ChecksumMismatch, match=r"^demo: a\.bin: sha256 mismatch$"):
        docker.build(BuildRequest(context, network="host"), on_line=lambda line: None)
    (context / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo going wrong; exit 7\n")
    with pytest.raises(DockerError) as failed:
        docker.build(BuildRequest(context, network="host"), on_line=lambda line: None)
    message = str(failed.value)
    assert "\n" not in message and "exit code: 7" in message, message


def test_the_ci_user_reaches_each_engine_through_the_docker_group(engine26: Engine26, ci_user: CiUser,
                                                                  user_tmp: Path) -> None:
    config = engine26.docker_config(ci_user.home / ".docker", owner=ci_user)
    env = engine26.env(config)
    assert ci_user.run(["id", "-u"]).stdout.strip() == str(ci_user.uid) != "0"
    version = ci_user.run(["docker", "version", "--format", "{{.Server.Version}}"], env=env)
    assert version.returncode == 0 and version.stdout.startswith("26."), version.stderr
    # The group is the way in: a user outside it is refused by the socket.
    outsider = CiUser("nobody", 65534, 65534, Path("/tmp"))
    refused = outsider.run(["docker", "version", "--format", "{{.Server.Version}}"], env={"DOCKER_HOST": engine26.docker_host})
    assert refused.returncode != 0 and "permission denied" in refused.stderr.lower(), refused.stderr

    work = user_tmp / "cli"
    work.mkdir()
    (work / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN echo built-by-the-ci-user > /who\n")
    ci_user.give(user_tmp)
    tag = f"builder-e26-test/ci-user:{uuid.uuid4().hex[:8]}"
    built = ci_user.run(["docker", "buildx", "build", "--load", "--network", "host", "--progress=plain", "-t", tag,
                         str(work)], env=env)
    try:
        assert built.returncode == 0, built.stderr[-2000:]
        out = engine26.client.containers.run(tag, ["cat", "/who"], network_mode="none", remove=True)
        assert out.decode().strip() == "built-by-the-ci-user"
    finally:
        remove(engine26, tag)


USER_BUILD = """
import json, sys
from pathlib import Path
import docker
from builder.docker import BuildRequest, Docker
context, secret, rebuild = sys.argv[1:4]
engine = Docker(docker.from_env(timeout=600))
lines = []
image_id = engine.build(BuildRequest(Path(context), secrets={"token": Path(secret)},
                                     build_args={"BUILDER_REBUILD": rebuild}), on_line=lines.append)
print(json.dumps({"image_id": image_id, "tool": engine.build_tool.describe(), "layers": engine.diff_ids(image_id),
                  "config": engine.config_digest(image_id), "log": lines}))
"""


def test_builder_docker_builds_as_the_ci_user(engine26: Engine26, ci_user: CiUser, user_tmp: Path,
                                              loopback_page: str) -> None:
    """The builder's own build path, run by the non-root user: the CLI and the buildx plugin found
    through the user's DOCKER_CONFIG, the engine through DOCKER_HOST, `--network auto` resolved to
    host by asking the engine, the secret read by the user's CLI."""
    config = engine26.docker_config(ci_user.home / ".docker", owner=ci_user)
    context, secret = write_context(user_tmp / "build", loopback_page, f"e26-user-{uuid.uuid4().hex[:8]}")
    (user_tmp / "build.py").write_text(USER_BUILD)
    interpreter, pythonpath = ci_user.python(
        ["builder", "docker", "requests", "urllib3", "idna", "certifi", "charset_normalizer"], user_tmp / "site")
    ci_user.give(user_tmp)
    run = ci_user.run([*interpreter, str(user_tmp / "build.py"), str(context), str(secret), uuid.uuid4().hex],
                      env={**engine26.env(config), "PYTHONPATH": pythonpath})
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    image_id = result["image_id"]
    try:
        assert "buildx build --load" in result["tool"] and f"DOCKER_CONFIG={config}" in result["tool"]
        assert engine26.client.images.get(image_id).id == image_id
        assert len(result["layers"]) == len(engine26.client.images.get(BASE_IMAGE).attrs["RootFS"]["Layers"]) + 1
        assert (result["config"] == image_id) is (engine26.mode == "classic")
        seen = read_back(engine26, image_id)
        assert seen["/token.sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()
        assert seen["/reached"] == "reached-over-loopback" and seen["/count"] == "1"
        assert SECRET not in "\n".join(result["log"])
    finally:
        remove(engine26, image_id)
