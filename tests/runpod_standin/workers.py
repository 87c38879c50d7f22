"""Workers the way RunPod runs them: the image pulled by digest from the registry and run with
Docker, with the template's (or pod's) environment, health-checked the way RunPod does.

- http workers (pods and load-balancing endpoints): `GET /ping` on PORT_HEALTH; 200 is ready,
  204 or no answer yet is initialising, anything else (or an exited container) is unhealthy; a
  worker whose template does not expose its ports stays initialising (nothing reaches it).
- queue workers: ready while the runpod SDK's worker loop polls the job-take URL; a worker
  holding a job is running; an exited container is unhealthy.

One difference from RunPod, forced by this machine (dockerd without a bridge network): every
container shares the host's network, so each worker gets free loopback ports and its PORT and
PORT_HEALTH are set to them; the stand-in maps the template's ports onto those. No GPU here.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

_ids = itertools.count(1)
POLL_FRESH = 3.0  # seconds: a queue worker that polled this recently is taking jobs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Worker:
    owner: str  # the template id (endpoints) or pod id (pods) it was started for
    image: str
    mode: str  # http | queue
    env: dict[str, str]
    id: str = field(default_factory=lambda: f"worker{next(_ids):04d}")
    port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    state: str = "initializing"  # initializing | ready | running | unhealthy | stopped
    detail: str = "pulling the image"
    container: Any = None
    last_poll: float = 0.0
    busy: bool = False
    started: float = field(default_factory=time.monotonic)
    unreachable: str | None = None  # why RunPod could not reach its ports (a template that does not expose them)

    @property
    def ping_port(self) -> int:
        """Where RunPod health-checks it: PORT_HEALTH when the template sets one apart from PORT."""
        separate = self.env.get("PORT_HEALTH") not in (None, self.env.get("PORT"))
        return self.health_port if separate else self.port


class DockerWorkers:
    """Starts, probes and stops worker containers; one daemon thread per worker start."""

    def __init__(self, client: Any, extra_env: dict[str, str] | None = None) -> None:
        self.client = client
        self.extra_env = extra_env or {}
        self.lock = threading.Lock()
        self.all: list[Worker] = []

    def start(self, worker: Worker) -> Worker:
        with self.lock:
            self.all.append(worker)
        threading.Thread(target=self._run, args=(worker,), name=f"standin-{worker.id}", daemon=True).start()
        return worker

    def _run(self, worker: Worker) -> None:
        from docker.errors import DockerException

        env = {**worker.env, **self.extra_env, "PORT": str(worker.port), "RUNPOD_POD_ID": worker.id}
        if worker.mode == "http":
            env["PORT_HEALTH"] = str(worker.ping_port)
        try:
            self.client.images.pull(worker.image)  # by digest, from the registry, as RunPod does
            container = self.client.containers.run(worker.image, detach=True, network_mode="host", environment=env,
                                                   labels={"builder.test.runpod-standin": worker.id})
        except DockerException as exc:
            worker.state, worker.detail = "unhealthy", f"cannot start: {' '.join(str(exc).split())[:300]}"
            return
        with self.lock:
            worker.container = container
            if worker.state == "stopped":  # stopped while it was being pulled
                self._remove(worker)
                return
            worker.detail = "container started"

    def probe(self, worker: Worker) -> None:
        """Update worker.state the way RunPod judges it (never a stopped worker's)."""
        if worker.state in ("stopped", "unhealthy") or worker.container is None:
            return
        state, detail = self._judge(worker)
        with self.lock:
            if worker.state != "stopped":
                worker.state, worker.detail = state, detail

    def _judge(self, worker: Worker) -> tuple[str, str]:
        try:
            worker.container.reload()
            status = worker.container.status
        except Exception:  # noqa: BLE001 - a container that vanished is unhealthy
            status = "gone"
        if status in ("exited", "dead", "gone"):
            return "unhealthy", f"container {status}: {self.logs(worker)[-300:]}"
        if worker.mode == "queue":
            if worker.busy:
                return "running", "holding a job"
            if time.monotonic() - worker.last_poll < POLL_FRESH:
                return "ready", "polling for jobs"
            return "initializing", "not polling for jobs yet"
        if worker.unreachable:  # RunPod's health check never gets through: it never turns ready
            return "initializing", worker.unreachable
        try:
            code = requests.get(f"http://127.0.0.1:{worker.ping_port}/ping", timeout=2).status_code
        except requests.RequestException:
            return "initializing", "no answer on the health port yet"
        if code == 200:
            return "ready", "/ping 200"
        if code == 204:
            return "initializing", "/ping 204"
        return "unhealthy", f"/ping {code}"

    def stop(self, worker: Worker) -> None:
        with self.lock:
            worker.state = "stopped"
            self._remove(worker)

    def _remove(self, worker: Worker) -> None:
        if worker.container is not None:
            try:
                worker.container.remove(force=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def logs(self, worker: Worker) -> str:
        try:
            return worker.container.logs().decode("utf-8", "replace") if worker.container is not None else ""
        except Exception:  # noqa: BLE001
            return ""

    def close(self) -> None:
        for worker in list(self.all):
            self.stop(worker)
