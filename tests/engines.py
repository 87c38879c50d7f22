"""Throwaway engines for tests and benchmarks: a registry of their own, a second Docker engine,
Docker 26 from Debian 13 in both image stores, and a non-root user in the docker group.

Both are the real programs (distribution's `docker-registry`, `dockerd`), started on loopback
with their own data directories and stopped afterwards, so a test can pull into an engine that
shares no layers with the one that built, or push into a registry no other test has touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check, what: str, log: Path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start:\n{tail}")


@contextmanager
def scratch_registry(workdir: Path, auth: dict[str, Any] | None = None) -> Iterator[str]:
    """A distribution registry on 127.0.0.1:PORT with its own storage; yields HOST:PORT.
    `auth`: the registry configuration's `auth` section (htpasswd or token)."""
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "scratch-registry-secret"},
    }
    if auth:
        config["auth"] = auth
    (workdir / "config.yml").write_text(yaml.safe_dump(config))
    log = workdir / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(workdir / "config.yml")], stdout=out, stderr=out)
    try:
        _wait(lambda: requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code in (200, 401),
              "the scratch registry", log)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def second_engine(workdir: Path) -> Iterator[Any]:
    """A second dockerd with its own data root (no layer shared with the main engine); yields a
    Docker SDK client for it. Needs root, like the main engine here."""
    import docker

    import tempfile

    workdir.mkdir(parents=True, exist_ok=True)
    # Sockets live under the exec root: a short path, since a unix socket's is limited to 107 bytes.
    short = Path(tempfile.mkdtemp(prefix="bde-", dir="/run" if os.access("/run", os.W_OK) else "/tmp"))
    sock = short / "docker.sock"
    log = workdir / "dockerd.log"
    argv = ["dockerd", "--data-root", str(workdir / "data"), "--exec-root", str(short / "x"),
            "--pidfile", str(short / "dockerd.pid"), "--host", f"unix://{sock}", "--bridge=none",
            "--iptables=false", "--ip-masq=false", "--containerd-namespace", f"second-{os.getpid()}",
            "--containerd-plugins-namespace", f"second-{os.getpid()}-plugins"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out)
    client = None
    try:
        _wait(lambda: docker.DockerClient(base_url=f"unix://{sock}", timeout=5).ping(), "the second dockerd", log, 60)
        client = docker.DockerClient(base_url=f"unix://{sock}", timeout=600)
        client.socket_url = f"unix://{sock}"  # what DOCKER_HOST names for a CLI or subprocess
        yield client
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-R", str(workdir / "data")], capture_output=True)
        shutil.rmtree(workdir / "data", ignore_errors=True)
        shutil.rmtree(short, ignore_errors=True)


@contextmanager
def faulty_proxy(target: str, fault) -> Iterator[tuple[str, list[dict]]]:
    """A reverse proxy in front of the registry at `target` (HOST:PORT) that can misbehave.

    `fault(method, path, headers, body)` returns None to forward the request, or (status,
    headers, body) to answer instead; after forwarding, `fault.after(method, path, response
    headers)` may add headers. Yields (HOST:PORT of the proxy, the log of requests seen)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict] = []
    session = requests.Session()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    body += self.rfile.read(size)
                    self.rfile.readline()
            else:
                body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length")}
            entry = {"method": self.command, "path": self.path, "length": len(body), "headers": headers}
            seen.append(entry)  # handlers run in threads at once: each keeps its own entry
            answer = fault(self.command, self.path, headers, body)
            if answer is None:
                upstream = session.request(self.command, f"http://{target}{self.path}", headers=headers, data=body,
                                           allow_redirects=False, timeout=120)
                status, out_headers, out = upstream.status_code, dict(upstream.headers), upstream.content
                out_headers.update(getattr(fault, "after", lambda *a: {})(self.command, self.path, out_headers) or {})
            else:
                status, out_headers, out = answer
            entry["status"] = status
            self.send_response(status)
            for key, value in out_headers.items():
                if key.lower() not in ("transfer-encoding", "content-length", "connection", "content-encoding"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(out) if self.command != "HEAD" else
                                                   out_headers.get("Content-Length", len(out))))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


# -- Docker 26 from Debian 13 (tests/env/engine26.sh) ---------------------------------------------
ENGINE26_SCRIPT = Path(__file__).resolve().parent / "env" / "engine26.sh"
ENGINE26_MODES = ("classic", "containerd")


class EngineUnavailable(RuntimeError):
    """The engine cannot run here; the message says why (for a skip, or a failure under make test)."""


@dataclass
class Engine26:
    """One running mode of the Debian 13 engine: what a CLI and the SDK need to reach it."""

    mode: str
    docker_host: str
    buildx_plugin: Path
    client: Any

    def docker_config(self, directory: Path, owner: "CiUser | None" = None) -> Path:
        """A DOCKER_CONFIG holding the buildx plugin, so that the host's docker CLI (28.x, no
        plugin of its own) runs `docker buildx build` against this engine."""
        plugins = directory / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        target = plugins / "docker-buildx"
        if not target.exists():
            shutil.copy2(self.buildx_plugin, target)
        if owner is not None:
            owner.give(directory)
        return directory

    def env(self, docker_config: Path) -> dict[str, str]:
        return {"DOCKER_HOST": self.docker_host, "DOCKER_CONFIG": str(docker_config)}


def _run_engine26(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "ENGINE26_HOLDER": str(os.getpid())}
    return subprocess.run([str(ENGINE26_SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


class Engine26Pool:
    """Each mode started on first use, once per session, and let go at the end. The engines
    outlive a session only while another session still holds them (engine26.sh's leases); their
    data roots stay under .cache/env/engine26, so the base image is loaded once, not per session."""

    def __init__(self) -> None:
        self._started: dict[str, Engine26] = {}

    def get(self, mode: str) -> Engine26:
        if mode not in self._started:
            self._started[mode] = self._start(mode)
        return self._started[mode]

    def _start(self, mode: str) -> Engine26:
        import docker

        if os.geteuid() != 0:
            raise EngineUnavailable("the Docker 26 engine needs root (debootstrap, mount, dockerd)")
        run = _run_engine26(["up", mode], timeout=900)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
            raise EngineUnavailable(f"tests/env/engine26.sh up {mode}: {last}")
        values = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line)
        client = docker.DockerClient(base_url=values["DOCKER_HOST"], timeout=600)
        client.ping()
        # BuildKit's cache of builds no session has used for a day: the engine is the tests' own.
        client.api.prune_builds(filters={"until": "24h"})
        return Engine26(mode, values["DOCKER_HOST"], Path(values["BUILDX_PLUGIN"]), client)

    def close(self) -> None:
        for mode, engine in self._started.items():
            engine.client.close()
            _run_engine26(["down", mode], timeout=120)
        self._started.clear()


def ensure_image(source: Any, engine: Engine26, ref: str) -> float:
    """Copy image `ref` from the engine of SDK client `source` into `engine` unless it already
    holds the same layers; return the seconds it took (0 when nothing was copied).

    `docker save | docker load`, not a registry: measured here for the 1.85 GB CPU base (as_built
    section 10), save|load took 49 s into the classic store and 39 s into the containerd store,
    where a push from Debian 12's engine (which gzips) took 60 s before pulls of 43 s and 36 s."""
    import docker

    wanted = source.images.get(ref).attrs["RootFS"]["Layers"]
    try:
        if engine.client.images.get(ref).attrs["RootFS"]["Layers"] == wanted:
            return 0.0
    except docker.errors.ImageNotFound:
        pass
    started = time.monotonic()
    main_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE, env={**os.environ, "DOCKER_HOST": main_host})
    load = subprocess.run(["docker", "load", "-q"], stdin=save.stdout, capture_output=True, text=True,
                          env={**os.environ, "DOCKER_HOST": engine.docker_host}, timeout=900)
    save.stdout.close()
    if save.wait(timeout=60) != 0 or load.returncode != 0:
        raise EngineUnavailable(f"cannot copy {ref} into the {engine.mode} engine: {load.stderr.strip()[-300:]}")
    return time.monotonic() - started


# -- a non-root user in the docker group, as on CI runners ------------------------------------------
@dataclass
class CiUser:
    """A user who reaches the engines only through the docker group, as a CI runner's user does."""

    name: str
    uid: int
    gid: int
    home: Path

    def give(self, path: Path) -> None:
        """Make `path` (and what is under it) the user's own."""
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(path)], check=True)

    def can(self, test: str, path: Path | str) -> bool:
        return subprocess.run(["runuser", "-u", self.name, "--", "test", test, str(path)]).returncode == 0

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run argv as the user, with a clean environment: HOME, a PATH, and `env`."""
        base = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "LANG": "C.UTF-8",
                "PATH": "/usr/local/bin:/usr/bin:/bin"}
        pairs = [f"{k}={v}" for k, v in {**base, **(env or {})}.items()]
        return subprocess.run(["runuser", "-u", self.name, "--", "env", "-i", *pairs, *argv], capture_output=True,
                              text=True, timeout=timeout, cwd=str(cwd or self.home))

    def python(self, modules: list[str], staging: Path) -> tuple[list[str], str]:
        """(interpreter argv, PYTHONPATH) for running the project's code as the user: the same
        Python version, and each module from where it lies when the user can read it there, else
        from a copy under `staging` (a checkout or virtual environment under /root is not readable)."""
        import importlib

        interpreter = os.path.realpath(sys.executable)
        if not self.can("-x", interpreter):
            interpreter = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
            if not self.can("-x", interpreter):
                raise EngineUnavailable(f"no Python {sys.version_info.major}.{sys.version_info.minor} that "
                                        f"{self.name} may run (the virtual environment's is under a private home)")
        paths: list[str] = []
        for name in modules:
            module = importlib.import_module(name)
            source = Path(module.__file__).parent if module.__file__.endswith("__init__.py") else Path(module.__file__)
            where = source.parent
            if not (self.can("-r", source) and self.can("-x", where)):
                staging.mkdir(parents=True, exist_ok=True)
                copy = staging / source.name
                if not copy.exists():
                    (shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__")) if source.is_dir()
                     else shutil.copy2(source, copy))
                self.give(staging)
                where = staging
            if str(where) not in paths:
                paths.append(str(where))
        return [interpreter], os.pathsep.join(paths)


def ci_user(name: str = "builderci", uid: int = 2000) -> CiUser:
    """The user `name` (uid 2000 where free) in a `docker` group, made where missing. Needs root."""
    import grp
    import pwd

    if os.geteuid() != 0:
        raise EngineUnavailable("making a user needs root")
    try:
        grp.getgrnam("docker")
    except KeyError:
        subprocess.run(["groupadd", "--system", "docker"], check=True, capture_output=True)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        taken = True
        try:
            pwd.getpwuid(uid)
        except KeyError:
            taken = False
        argv = ["useradd", "--create-home", "--shell", "/bin/bash", "--groups", "docker", "--user-group"]
        subprocess.run([*argv, *([] if taken else ["--uid", str(uid)]), name], check=True, capture_output=True)
        entry = pwd.getpwnam(name)
    if name not in grp.getgrnam("docker").gr_mem:
        subprocess.run(["usermod", "-aG", "docker", name], check=True, capture_output=True)
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(parents=True)
    user = CiUser(name, entry.pw_uid, entry.pw_gid, home)
    user.give(home)
    return user
