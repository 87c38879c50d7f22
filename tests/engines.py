"""Throwaway engines for tests and benchmarks: a registry of their own, a second Docker engine.

Both are the real programs (distribution's `docker-registry`, `dockerd`), started on loopback
with their own data directories and stopped afterwards, so a test can pull into an engine that
shares no layers with the one that built, or push into a registry no other test has touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
