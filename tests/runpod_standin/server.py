"""A loopback stand-in for RunPod, for the deploy and rollback tests.

The runpod SDK and builder talk to it unmodified: GraphQL at `$RUNPOD_API_BASE_URL/graphql`, the
GraphQL over HTTP form (a JSON object with `query`, and `variables` and `operationName` where
given: builder sends every value as a variable, the SDK's helpers paste theirs into the query
text), parsed, validated and executed by graphql-core against the subset of RunPod's schema below
(its input type names as RunPod's runpodctl declares its variables: SaveTemplateInput,
PodEditJobInput, UpdateEndpointTemplateInput, PodFilter), so a field the real API lacks, a
required field left out, or a value that breaks the query's syntax fails here too; and the
serverless REST API at `$RUNPOD_ENDPOINT_BASE_URL/{endpoint_id}/...`.

What it models, as RunPod documents it: templates (`saveTemplate` creates one, or updates it when
given an `id`; names are unique; `deleteTemplate` refuses one an endpoint uses), serverless
endpoints of two types (`QB` queue-based, `LB` load-balancing; `updateEndpointTemplate` switches
one to a template), pods (`pod`, `podEditJob`: the pod restarts on the new image), a Bearer API
key (401 otherwise, which the SDK raises as AuthenticationError), GraphQL errors in the standard
`{"errors": [...]}` shape (the SDK raises QueryError), and the health document
`{"jobs": {...}, "workers": {"idle", "initializing", "ready", "running", "throttled", "unhealthy"}}`,
and a few GPU types (`gpuTypes`; endpoints' `gpuIds` pools, pods' `machine { gpuDisplayName }`).

Ports, as RunPod routes them (https://docs.runpod.io/serverless/load-balancing/overview): a
load-balancing worker is reached on PORT (requests) and PORT_HEALTH (`/ping`); left unset, both
are 80 and RunPod exposes 80 itself; a port that is set must be among the template's exposed HTTP
ports (`8000/http`), or the worker is never reached (RunPod: it never turns healthy, requests get
502). A pod's port is reached through the proxy only when exposed as HTTP, and serves only if the
pod's server listens there (PORT, else the server's 8000). A pod takes no credentials through the
proxy: a request that carries an Authorization header is refused (400) and noted in
`state.credentials_seen`, since the header would reach whatever image the pod runs.

Two ways to run workers:
- with a Docker client (`docker=`), as RunPod does (tests/runpod_standin/workers.py): the image is
  pulled by digest and run with the template's or pod's environment; health is what the worker
  shows (`/ping` on PORT_HEALTH for load-balancing endpoints and pods, polling for jobs for queue
  endpoints); workers on a new template replace the old ones only once one serves, so the old
  version keeps serving through a failed rollout. Requests are served through them: your own
  paths at `/lb/{endpoint_id}/...` (RunPod: `https://ENDPOINT_ID.api.runpod.ai/...`), `/run`,
  `/runsync`, `/status/{id}` at `/v2/{endpoint_id}/` for queue endpoints, with the worker side of
  the job protocol the SDK's worker loop speaks (`job-take`, `job-done`, `ping`), and a pod's
  port at `/pod/{pod_id}-{port}/...` (RunPod's proxy: `https://{pod_id}-{port}.proxy.runpod.net`).
- without one, for tests of the API logic with images that cannot run: after a switch the
  endpoint's worker is `initializing` for `ready_after` health polls, then `ready`, or stays
  `unhealthy` for an image in `broken_images`, or `initializing` when its ports cannot be
  reached; a pod answers `/metadata` after `ready_after` requests since its restart with its
  image's version label, read from the registry the image names.
Every GraphQL operation is logged.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import requests
from graphql import GraphQLError, build_schema, graphql_sync

from tests.runpod_standin.workers import DockerWorkers, Worker

SCHEMA = build_schema("""
type Query {
  myself: User!
  pod(input: PodFilter!): Pod
  gpuTypes(input: GpuTypeFilter): [GpuType]
}

input GpuTypeFilter { id: String }
type GpuType { id: String! displayName: String memoryInGb: Int }
type PodMachine { gpuDisplayName: String }

type Mutation {
  saveTemplate(input: SaveTemplateInput): PodTemplate
  updateEndpointTemplate(input: UpdateEndpointTemplateInput): Endpoint
  deleteTemplate(templateName: String!): Boolean
  podEditJob(input: PodEditJobInput!): Pod
}

type User {
  id: String!
  endpoints: [Endpoint!]!
  podTemplates: [PodTemplate!]!
}

type EnvironmentVariable { key: String value: String }
input EnvironmentVariableInput { key: String! value: String! }

type NetworkVolume { id: String dataCenterId: String }

type Endpoint {
  id: String!
  name: String
  templateId: String
  aiKey: String
  gpuIds: String
  idleTimeout: Int
  networkVolumeId: String
  locations: String
  scalerType: String
  scalerValue: Int
  type: String
  userId: String
  version: Int
  workersMax: Int
  workersMin: Int
  workersStandby: Int
  gpuCount: Int
  env: [EnvironmentVariable]
  createdAt: String
  networkVolume: NetworkVolume
  allowedCudaVersions: String
  flashBootType: String
}

type PodTemplate {
  id: String!
  name: String
  imageName: String
  dockerArgs: String
  containerDiskInGb: Int
  volumeInGb: Int
  volumeMountPath: String
  ports: String
  env: [EnvironmentVariable]
  isServerless: Boolean
  startSsh: Boolean
  isPublic: Boolean
  readme: String
  containerRegistryAuthId: String
}

input SaveTemplateInput {
  id: String
  name: String!
  imageName: String!
  dockerArgs: String
  containerDiskInGb: Int!
  volumeInGb: Int!
  volumeMountPath: String
  ports: String
  env: [EnvironmentVariableInput]
  isServerless: Boolean
  containerRegistryAuthId: String
  startSsh: Boolean
  isPublic: Boolean
  readme: String
}

input UpdateEndpointTemplateInput { endpointId: String! templateId: String! }

input PodFilter { podId: String! }

type PodRuntime { uptimeInSeconds: Int }

type Pod {
  id: String!
  name: String
  imageName: String
  env: [String]
  ports: String
  dockerArgs: String
  containerDiskInGb: Int
  volumeInGb: Int
  volumeMountPath: String
  desiredStatus: String
  runtime: PodRuntime
  machine: PodMachine
}

input PodEditJobInput {
  podId: String!
  imageName: String!
  dockerArgs: String
  containerDiskInGb: Int
  volumeInGb: Int
  volumeMountPath: String
  ports: String
  env: [EnvironmentVariableInput]
  containerRegistryAuthId: String
}
""")

_WORKER_KEY = "rp-worker-key"  # what RunPod gives a worker in RUNPOD_AI_API_KEY
# A few of RunPod's GPU types (id, display name, memory in GB), as its gpuTypes query lists them.
GPU_TYPES = (
    ("NVIDIA RTX A5000", "RTX A5000", 24), ("NVIDIA GeForce RTX 4090", "RTX 4090", 24),
    ("NVIDIA L40S", "L40S", 48), ("NVIDIA A100 80GB PCIe", "A100 PCIe", 80),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 80), ("NVIDIA H200", "H200 SXM", 141),
)


def _env(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {item["key"]: item["value"] for item in items or []}


def exposed_http(ports: str | None) -> set[int]:
    """The HTTP ports a RunPod ports string ("8000/http,22/tcp") exposes."""
    found = set()
    for item in (ports or "").split(","):
        number, _, kind = item.strip().partition("/")
        if kind == "http" and number.isdigit():
            found.add(int(number))
    return found


def unreachable_ports(template: dict[str, Any]) -> str | None:
    """Why RunPod could not reach a load-balancing worker of this template, or None."""
    env = _env(template.get("env"))
    if not env.get("PORT") and not env.get("PORT_HEALTH"):
        return None  # RunPod sets both to 80 and exposes 80 itself
    port = int(env.get("PORT") or 80)
    wanted = {"PORT": port, "PORT_HEALTH": int(env.get("PORT_HEALTH") or port)}
    exposed = exposed_http(template.get("ports"))
    missing = [f"{name} {number}" for name, number in wanted.items() if number not in exposed]
    if not missing:
        return None
    return f"{' and '.join(missing)} not exposed as HTTP (ports: {template.get('ports') or 'none'})"


@dataclass
class Job:
    id: str
    endpoint: str
    input: Any
    status: str = "IN_QUEUE"  # IN_QUEUE | IN_PROGRESS | COMPLETED | FAILED
    output: Any = None
    error: Any = None
    worker: str | None = None
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def document(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = int((self.started - self.created) * 1000)
        if self.status == "COMPLETED":
            body["output"] = self.output
        if self.status == "FAILED":
            body["error"] = self.error
        return body


@dataclass
class EndpointState:
    id: str
    name: str
    template_id: str
    type: str = "QB"  # QB (queue-based) | LB (load-balancing)
    gpu_ids: str = "AMPERE_24"  # RunPod's GPU pools (AMPERE_24, ADA_48_PRO...) or GPU type ids, comma-separated
    polls_since_switch: int = 0
    old_workers: int = 0  # polls after a switch during which the old ready worker is still reported
    workers: list[Worker] = field(default_factory=list)
    queue: deque = field(default_factory=deque)


@dataclass
class PodState:
    id: str
    name: str
    image: str
    env: dict[str, str]
    ports: str = "8000/http"
    gpu: str = "RTX A5000"  # the machine's GPU, by display name
    worker: Worker | None = None
    restarted: float = field(default_factory=time.monotonic)
    requests_since_restart: int = 0  # simulated pods: how many proxied requests found it starting


@dataclass
class RunPodState:
    api_key: str
    ready_after: int = 2
    linger_polls: int = 0  # after a switch, the old worker still shows as ready for this many polls
    failing_health_polls: int = 0  # the next N health requests answer 500
    broken_images: set[str] = field(default_factory=set)
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    pods: dict[str, PodState] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    operations: list[str] = field(default_factory=list)
    credentials_seen: list[str] = field(default_factory=list)  # pod proxy paths that came with an Authorization header
    lock: threading.RLock = field(default_factory=threading.RLock)
    ids: Any = field(default_factory=lambda: itertools.count(1))
    workers: DockerWorkers | None = None
    url: str = ""

    # -- resolvers -----------------------------------------------------------------------------
    def myself(self) -> dict[str, Any]:
        return {
            "id": "user-1",
            "endpoints": [self._endpoint(e) for e in self.endpoints.values()],
            "podTemplates": list(self.templates.values()),
        }

    def _endpoint(self, endpoint: EndpointState) -> dict[str, Any]:
        return {"id": endpoint.id, "name": endpoint.name, "templateId": endpoint.template_id, "gpuIds": endpoint.gpu_ids,
                "workersMin": 0, "workersMax": 3, "workersStandby": 0, "gpuCount": 1, "env": [], "type": endpoint.type,
                "userId": "user-1", "version": 1, "scalerType": "QUEUE_DELAY", "scalerValue": 4, "idleTimeout": 5}

    def save_template(self, data: dict[str, Any]) -> dict[str, Any]:
        template_id = data.get("id")
        if template_id is not None and template_id not in self.templates:
            raise GraphQLError(f"Template {template_id} not found")
        if any(t["name"] == data["name"] and t["id"] != template_id for t in self.templates.values()):
            raise GraphQLError(f"Template name must be unique: {data['name']}")
        template_id = template_id or f"tpl{next(self.ids):04d}"
        template = {"id": template_id, "name": data["name"], "imageName": data["imageName"],
                    "dockerArgs": data.get("dockerArgs", ""), "containerDiskInGb": data.get("containerDiskInGb", 10),
                    "volumeInGb": data.get("volumeInGb", 0), "volumeMountPath": data.get("volumeMountPath"),
                    "ports": data.get("ports", ""), "env": data.get("env") or [],
                    "isServerless": data.get("isServerless", False),
                    "containerRegistryAuthId": data.get("containerRegistryAuthId") or None}
        self.templates[template_id] = template
        return template

    def delete_template(self, name: str) -> bool:
        found = [t for t in self.templates.values() if t["name"] == name]
        if not found:
            raise GraphQLError(f"Template {name} not found")
        if any(e.template_id == found[0]["id"] for e in self.endpoints.values()):
            raise GraphQLError(f"Template {name} is in use by an endpoint")
        del self.templates[found[0]["id"]]
        return True

    def update_endpoint_template(self, endpoint_id: str, template_id: str) -> dict[str, Any]:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            raise GraphQLError(f"Endpoint {endpoint_id} not found")
        if template_id not in self.templates:
            raise GraphQLError(f"Template {template_id} not found")
        endpoint.template_id, endpoint.polls_since_switch = template_id, 0
        endpoint.old_workers = self.linger_polls
        return self._endpoint(endpoint)

    def pod(self, pod_id: str) -> dict[str, Any] | None:
        pod = self.pods.get(pod_id)
        if pod is None:
            return None
        return {"id": pod.id, "name": pod.name, "imageName": pod.image, "env": [f"{k}={v}" for k, v in pod.env.items()],
                "ports": pod.ports, "dockerArgs": "", "containerDiskInGb": 20, "volumeInGb": 0, "volumeMountPath": None,
                "desiredStatus": "RUNNING", "runtime": {"uptimeInSeconds": int(time.monotonic() - pod.restarted)},
                "machine": {"gpuDisplayName": pod.gpu}}

    def edit_pod(self, data: dict[str, Any]) -> dict[str, Any]:
        pod = self.pods.get(data["podId"])
        if pod is None:
            raise GraphQLError(f"Pod {data['podId']} not found")
        pod.image = data["imageName"]
        if data.get("env") is not None:
            pod.env = _env(data["env"])
        pod.ports = data.get("ports") or pod.ports
        pod.restarted, pod.requests_since_restart = time.monotonic(), 0
        if self.workers is not None:  # a pod is one container: it restarts on the new image
            if pod.worker is not None:
                self.workers.stop(pod.worker)
            pod.worker = self.workers.start(Worker(pod.id, pod.image, "http", dict(pod.env)))
        return self.pod(pod.id)  # type: ignore[return-value]

    # -- health --------------------------------------------------------------------------------
    def health(self, endpoint_id: str) -> dict[str, Any] | None:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            return None
        jobs = {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": len(endpoint.queue), "retried": 0}
        for job in self.jobs.values():
            if job.endpoint == endpoint_id:
                key = {"COMPLETED": "completed", "FAILED": "failed", "IN_PROGRESS": "inProgress"}.get(job.status)
                if key:
                    jobs[key] += 1
        workers = {"idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0, "unhealthy": 0}
        if self.workers is not None:
            for worker in endpoint.workers:
                if worker.state in ("initializing", "unhealthy", "running"):
                    workers[worker.state] += 1
                elif worker.state == "ready":
                    workers["ready"] += 1
                    workers["idle"] += 1
            return {"jobs": jobs, "workers": workers}
        return {"jobs": jobs, "workers": self._simulated_workers(endpoint, workers)}

    def _simulated_workers(self, endpoint: EndpointState, workers: dict[str, int]) -> dict[str, int]:
        image = self.templates[endpoint.template_id]["imageName"]
        if endpoint.old_workers > 0:  # RunPod replaces workers gradually: the old one still serves
            endpoint.old_workers -= 1
            workers["ready"] = workers["idle"] = 1
            return workers
        endpoint.polls_since_switch += 1
        if image in self.broken_images:
            workers["unhealthy"] = 1
        elif endpoint.type == "LB" and unreachable_ports(self.templates[endpoint.template_id]):
            workers["initializing"] = 1  # RunPod's health check cannot reach it: it never turns ready
        elif endpoint.polls_since_switch <= self.ready_after:
            workers["initializing"] = 1
        else:
            workers["ready"] = workers["idle"] = 1
        return workers

    # -- real workers --------------------------------------------------------------------------
    def worker_env(self, endpoint: EndpointState, template: dict[str, Any]) -> dict[str, str]:
        env = _env(template.get("env"))
        if endpoint.type != "LB":  # what RunPod gives a queue worker: where to take jobs and return results
            base = f"{self.url}/v2/{endpoint.id}"
            env.update({
                "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID?gpu=none",
                "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID?gpu=none",
                "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID?gpu=none",
                "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID?gpu=none",
                "RUNPOD_AI_API_KEY": _WORKER_KEY, "RUNPOD_ENDPOINT_ID": endpoint.id,
            })
        return env

    def live_workers(self) -> list[Worker]:
        pods = [p.worker for p in self.pods.values() if p.worker is not None]
        return [w for e in self.endpoints.values() for w in e.workers if w.state != "stopped"] + pods

    def reconcile(self) -> None:
        """One supervision round, after the workers were probed: start one for each endpoint's
        current template, retire the old ones once a new one serves (or at once when they serve nothing)."""
        assert self.workers is not None
        for endpoint in self.endpoints.values():
            alive = [w for w in endpoint.workers if w.state != "stopped"]
            template = self.templates[endpoint.template_id]
            # A template whose image changed rolls its endpoint's workers too, as RunPod does.
            current = [w for w in alive if w.owner == endpoint.template_id and w.image == template["imageName"]]
            if not current:
                mode = "http" if endpoint.type == "LB" else "queue"
                worker = Worker(endpoint.template_id, template["imageName"], mode, self.worker_env(endpoint, template))
                worker.unreachable = unreachable_ports(template) if endpoint.type == "LB" else None
                worker = self.workers.start(worker)
                endpoint.workers.append(worker)
                current = [worker]
            serving = any(w.state in ("ready", "running") for w in current)
            for worker in alive:
                if worker not in current and (serving or worker.state not in ("ready", "running")):
                    self.workers.stop(worker)
            endpoint.workers = [w for w in endpoint.workers if w.state != "stopped"]

    def serving_worker(self, endpoint: EndpointState) -> Worker | None:
        ready = [w for w in endpoint.workers if w.state == "ready"]
        ready.sort(key=lambda w: w.owner != endpoint.template_id)  # the current template's first
        return ready[0] if ready else None


class _Handler(BaseHTTPRequestHandler):
    state: RunPodState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.state.api_key}":
            self._send(401, {"error": "Unauthorized"})
            return False
        return True

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        path = urlsplit(self.path).path
        if path == "/graphql":
            self._graphql()
        elif re.fullmatch(r"/v2/[^/]+/(run|runsync|job-done/[^/]+/[^/]+|job-stream/[^/]+/[^/]+|ping/[^/]+)", path):
            self._serverless(path)
        elif path.startswith(("/lb/", "/pod/")):
            self._proxy(path)
        else:
            self._send(404, {"error": "not found"})

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path.startswith(("/lb/", "/pod/")):
            self._proxy(path)
        elif path.startswith("/v2/"):
            self._serverless(path)
        else:
            self._send(404, {"error": "not found"})

    # -- GraphQL -------------------------------------------------------------------------------
    def _graphql(self) -> None:
        try:
            payload = json.loads(self._body() or b"{}")
        except ValueError:
            payload = None
        if not self._authorized():
            return
        # GraphQL over HTTP (https://graphql.github.io/graphql-over-http/draft/#sec-Request-Parameters):
        # `query` a string, `variables` and `operationName` optional, variables an object.
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str) or \
                not isinstance(payload.get("variables") or {}, dict) or \
                not isinstance(payload.get("operationName") or "", str):
            self._send(400, {"errors": [{"message": "a GraphQL request is a JSON object with a string query, "
                                                    "and optional variables (an object) and operationName"}]})
            return
        state = self.state
        root = {
            "myself": lambda info: state.myself(),
            "pod": lambda info, input: state.pod(input["podId"]),
            "gpuTypes": lambda info, input=None: [{"id": i, "displayName": d, "memoryInGb": m} for i, d, m in GPU_TYPES
                                                  if not input or input.get("id") in (None, i)],
            "saveTemplate": lambda info, input: state.save_template(input),
            "updateEndpointTemplate": lambda info, input: state.update_endpoint_template(input["endpointId"],
                                                                                         input["templateId"]),
            "deleteTemplate": lambda info, templateName: state.delete_template(templateName),
            "podEditJob": lambda info, input: state.edit_pod(input),
        }
        with state.lock:
            result = graphql_sync(SCHEMA, payload["query"], root_value=root, variable_values=payload.get("variables"),
                                  operation_name=payload.get("operationName"))
            operation = re.sub(r"\s+", " ", payload.get("query", "")).strip()[:200]
            state.operations.append(operation)
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [{"message": e.message, "path": e.path} for e in result.errors]
        self._send(200, body)

    # -- the serverless REST API, both sides -----------------------------------------------------
    def _serverless(self, path: str) -> None:
        parts = path.split("/")  # ["", "v2", endpoint, operation, ...]
        endpoint_id, operation = parts[2], parts[3] if len(parts) > 3 else ""
        state = self.state
        with state.lock:
            endpoint = state.endpoints.get(endpoint_id)
        if endpoint is None:
            self._body()
            self._send(404, {"error": f"endpoint {endpoint_id} not found"})
            return
        if operation in ("job-take", "job-done", "job-stream", "job-stop", "ping"):
            self._worker_side(endpoint, operation, parts)
            return
        body = self._body()
        if not self._authorized():
            return
        if operation == "health":
            with state.lock:
                if state.failing_health_polls > 0:
                    state.failing_health_polls -= 1
                    self._send(500, {"error": "internal error"})
                    return
                self._send(200, state.health(endpoint_id))
            return
        if operation in ("run", "runsync"):
            try:
                job_input = json.loads(body or b"{}")["input"]
            except (ValueError, KeyError, TypeError):
                self._send(400, {"error": "the body must be a JSON object with an \"input\""})
                return
            job = Job(f"{uuid.uuid4()}-u1", endpoint_id, job_input)
            with state.lock:
                state.jobs[job.id] = job
                endpoint.queue.append(job.id)
            if operation == "runsync":
                job.done.wait(90)  # RunPod's /runsync holds the request about this long
            self._send(200, job.document())
            return
        if operation == "status" and len(parts) > 4:
            job = state.jobs.get(parts[4])
            self._send(200, job.document()) if job else self._send(404, {"error": "job not found"})
            return
        self._send(404, {"error": "not found"})

    def _worker_side(self, endpoint: EndpointState, operation: str, parts: list[str]) -> None:
        state = self.state
        body = self._body()
        worker_id = parts[4] if len(parts) > 4 else ""
        worker = next((w for w in endpoint.workers if w.id == worker_id), None)
        if operation == "job-take":
            deadline = time.monotonic() + 1.0  # a short long-poll, as RunPod holds job-take
            while True:
                with state.lock:
                    if worker is not None:
                        worker.last_poll = time.monotonic()
                    if endpoint.queue and worker is not None and worker.state != "stopped":
                        job = state.jobs[endpoint.queue.popleft()]
                        job.status, job.worker, job.started = "IN_PROGRESS", worker_id, time.monotonic()
                        worker.busy = True
                        self._send(200, {"id": job.id, "input": job.input})
                        return
                if time.monotonic() > deadline:
                    self._send(204, b"")
                    return
                time.sleep(0.05)
        if operation == "job-done" and len(parts) > 5:
            job = state.jobs.get(parts[5])
            if job is None:
                self._send(404, {"error": "job not found"})
                return
            try:
                result = json.loads(body or b"{}")
            except ValueError:
                result = {"error": "the worker sent a result that is not JSON"}
            with state.lock:
                if "error" in result:
                    job.status, job.error = "FAILED", result["error"]
                else:
                    job.status, job.output = "COMPLETED", result.get("output")
                if worker is not None:
                    worker.busy = False
            job.done.set()
            self._send(200, {})
            return
        if operation == "job-stop":
            self._send(204, b"")
            return
        self._send(200, {})  # ping, job-stream

    # -- requests through workers ---------------------------------------------------------------
    def _proxy(self, path: str) -> None:
        body = self._body()
        state = self.state
        kind, _, rest = path[1:].partition("/")
        target, _, tail = rest.partition("/")
        if kind == "pod" and self.headers.get("Authorization") is not None:
            # RunPod's proxy hands a pod's request, headers and all, to the pod's own server: the
            # account's API key does not belong there (and the proxy needs none).
            with state.lock:
                state.credentials_seen.append(path)
            self._send(400, {"error": "credentials sent to a pod: a pod's proxy needs no Authorization header"})
            return
        with state.lock:
            if kind == "lb":
                if not self._authorized():
                    return
                endpoint = state.endpoints.get(target)
                worker = state.serving_worker(endpoint) if endpoint else None
                port = worker.port if worker else None
            else:
                pod_id, _, pod_port = target.rpartition("-")
                pod = state.pods.get(pod_id)
                if pod is not None and state.workers is None:
                    self._simulated_pod(pod, pod_port, tail)
                    return
                worker = pod.worker if pod else None
                port = worker.port if worker and pod_port.isdigit() and pod_serves(pod, int(pod_port)) else None
        if port is None:
            self._send(502 if kind == "pod" else 503, {"error": f"no worker serves {target} now"})
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
        query = urlsplit(self.path).query
        try:
            answer = requests.request(self.command, f"http://127.0.0.1:{port}/{tail}" + (f"?{query}" if query else ""),
                                      data=body, headers=headers, timeout=300)
        except requests.RequestException as exc:
            self._send(502, {"error": f"the worker did not answer: {type(exc).__name__}"})
            return
        self._send(answer.status_code, answer.content, answer.headers.get("Content-Type", "application/json"))

    def _simulated_pod(self, pod: PodState, port: str, tail: str) -> None:
        """Without Docker: the pod starts for `ready_after` requests, then its server's /metadata
        names the version its image's label says (read from the registry, as a pull would)."""
        if not port.isdigit() or not pod_serves(pod, int(port)):
            self._send(502, {"error": f"nothing serves port {port} of pod {pod.id}"})
            return
        pod.requests_since_restart += 1
        if pod.requests_since_restart <= self.state.ready_after:
            self._send(502, {"error": f"pod {pod.id} is starting"})
            return
        version = image_version(pod.image)
        if tail != "metadata" or version is None:
            self._send(404 if version else 502, {"error": f"pod {pod.id} has nothing at /{tail}"})
            return
        self._send(200, {"status": "ready", "version": version})


def pod_serves(pod: PodState, port: int) -> bool:
    """RunPod's proxy reaches only exposed HTTP ports, and the pod's server listens on PORT (8000 unset)."""
    return port in exposed_http(pod.ports) and port == int(pod.env.get("PORT") or 8000)


def image_version(image: str) -> str | None:
    """The io.builder.manifest.version label of REGISTRY/REPO@DIGEST, from the registry (None: unreadable)."""
    match = re.fullmatch(r"([^/]+)/(.+)@(sha256:[0-9a-f]{64})", image)
    if not match:
        return None
    host, repo, digest = match.groups()
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    try:
        manifest = requests.get(f"http://{host}/v2/{repo}/manifests/{digest}", headers={"Accept": accept}, timeout=10)
        config = requests.get(f"http://{host}/v2/{repo}/blobs/{manifest.json()['config']['digest']}", timeout=10)
        return config.json()["config"]["Labels"]["io.builder.manifest.version"]
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None


class RunPodStandIn:
    def __init__(self, api_key: str = "rp_test_key", ready_after: int = 2, docker: Any = None) -> None:
        self.state = RunPodState(api_key=api_key, ready_after=ready_after)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.state.url = self.url
        # The runpod SDK's fitness checks dial 8.8.8.8 before a queue worker takes jobs: tests send
        # nothing beyond loopback, so the stand-in turns them off (RunPod's own workers run them).
        quiet = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"}
        self.state.workers = DockerWorkers(docker, quiet) if docker is not None else None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """What points the runpod SDK, and builder's pod checks, here."""
        return {"RUNPOD_API_BASE_URL": self.url, "RUNPOD_ENDPOINT_BASE_URL": f"{self.url}/v2",
                "RUNPOD_API_KEY": self.state.api_key, "RUNPOD_POD_PROXY_URL": f"{self.url}/pod/{{pod_id}}-{{port}}"}

    def add_endpoint(self, endpoint_id: str, image: str, env: dict[str, str] | None = None,
                     registry_auth: str | None = None, type: str = "QB",  # noqa: A002 - RunPod's name
                     gpu_ids: str = "AMPERE_24", ports: str | None = None) -> str:
        """An endpoint as the console makes one; `ports` defaults to exposing the PORT and
        PORT_HEALTH that `env` sets (as RunPod asks), none when it sets neither."""
        env = dict(env or {})
        if ports is None:
            wanted = [env[name] for name in ("PORT", "PORT_HEALTH") if env.get(name)]
            ports = ",".join(f"{number}/http" for number in dict.fromkeys(wanted))
        with self.state.lock:
            template = self.state.save_template({
                "name": f"{endpoint_id}-initial", "imageName": image, "isServerless": True, "ports": ports,
                "env": [{"key": k, "value": v} for k, v in env.items()],
                "containerRegistryAuthId": registry_auth})
            self.state.endpoints[endpoint_id] = EndpointState(endpoint_id, endpoint_id, template["id"], type, gpu_ids,
                                                              polls_since_switch=10**6)
        return template["id"]

    def add_pod(self, pod_id: str, image: str, env: dict[str, str] | None = None, ports: str = "8000/http",
                gpu: str = "RTX A5000") -> None:
        with self.state.lock:
            pod = PodState(pod_id, pod_id, image, dict(env or {}), ports, gpu)
            self.state.pods[pod_id] = pod
            if self.state.workers is not None:
                pod.worker = self.state.workers.start(Worker(pod_id, image, "http", dict(pod.env)))

    def image_of(self, endpoint_id: str) -> str:
        with self.state.lock:
            return self.state.templates[self.state.endpoints[endpoint_id].template_id]["imageName"]

    def lb_url(self, endpoint_id: str) -> str:
        return f"{self.url}/lb/{endpoint_id}"

    def queue_url(self, endpoint_id: str) -> str:
        return f"{self.url}/v2/{endpoint_id}"

    def pod_url(self, pod_id: str, port: int = 8000) -> str:
        return f"{self.url}/pod/{pod_id}-{port}"

    def workers_of(self, endpoint_id: str) -> list[Worker]:
        with self.state.lock:
            return list(self.state.endpoints[endpoint_id].workers)

    def _supervise(self) -> None:
        while not self._stop.wait(0.3):
            with self.state.lock:
                workers = self.state.live_workers()
            for worker in workers:  # outside the lock: a probe may wait on a slow worker
                self.state.workers.probe(worker)
            with self.state.lock:
                self.state.reconcile()

    def __enter__(self) -> "RunPodStandIn":
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        if self.state.workers is not None:
            threading.Thread(target=self._supervise, name="standin-supervisor", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self.state.workers is not None:
            self.state.workers.close()
