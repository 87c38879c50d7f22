"""A loopback stand-in for RunPod's API, for the deploy and rollback tests.

The runpod SDK talks to it unmodified: GraphQL at `$RUNPOD_API_BASE_URL/graphql` (the SDK
interpolates its arguments into the query text; graphql-core parses, validates and executes it
against the subset of RunPod's schema below, so a field the real API lacks fails here too), and
the serverless REST API at `$RUNPOD_ENDPOINT_BASE_URL/{endpoint_id}/health`.

What it models, as RunPod documents it: templates (`saveTemplate` creates one, or updates it
when given an `id`), serverless endpoints (`updateEndpointTemplate` switches an endpoint to a
template; its workers then initialise again), `myself { endpoints podTemplates }`, a Bearer API
key (401 without the right one, which the SDK raises as AuthenticationError), GraphQL errors in
the standard `{"errors": [{"message": ...}]}` shape (the SDK raises QueryError), and the health
document `{"jobs": {...}, "workers": {"idle", "initializing", "ready", "running", "throttled",
"unhealthy"}}`.

What it simulates, for the tests: after a template switch an endpoint's worker is
`initializing` for `ready_after` health polls, then `ready`; with an image listed in
`broken_images` it stays `unhealthy`. Every GraphQL operation is logged.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from graphql import GraphQLError, build_schema, graphql_sync

SCHEMA = build_schema("""
type Query {
  myself: User!
}

type Mutation {
  saveTemplate(input: SaveTemplateInput): PodTemplate
  updateEndpointTemplate(input: UpdateEndpointTemplateInput): Endpoint
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
  containerDiskInGb: Int
  volumeInGb: Int
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
""")


@dataclass
class EndpointState:
    id: str
    name: str
    template_id: str
    polls_since_switch: int = 0
    old_workers: int = 0  # polls after a switch during which the old ready worker is still reported


@dataclass
class RunPodState:
    api_key: str
    ready_after: int = 2
    linger_polls: int = 0  # after a switch, the old worker still shows as ready for this many polls
    failing_health_polls: int = 0  # the next N health requests answer 500
    broken_images: set[str] = field(default_factory=set)
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    operations: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    ids: Any = field(default_factory=lambda: itertools.count(1))

    # -- resolvers -----------------------------------------------------------------------------
    def myself(self) -> dict[str, Any]:
        return {
            "id": "user-1",
            "endpoints": [self._endpoint(e) for e in self.endpoints.values()],
            "podTemplates": list(self.templates.values()),
        }

    def _endpoint(self, endpoint: EndpointState) -> dict[str, Any]:
        return {"id": endpoint.id, "name": endpoint.name, "templateId": endpoint.template_id, "gpuIds": "AMPERE_24",
                "workersMin": 0, "workersMax": 3, "workersStandby": 0, "gpuCount": 1, "env": [], "type": "SERVERLESS",
                "userId": "user-1", "version": 1, "scalerType": "QUEUE_DELAY", "scalerValue": 4, "idleTimeout": 5}

    def save_template(self, data: dict[str, Any]) -> dict[str, Any]:
        template_id = data.get("id")
        if template_id is not None and template_id not in self.templates:
            raise GraphQLError(f"Template {template_id} not found")
        template_id = template_id or f"tpl{next(self.ids):04d}"
        template = {"id": template_id, "name": data["name"], "imageName": data["imageName"],
                    "dockerArgs": data.get("dockerArgs", ""), "containerDiskInGb": data.get("containerDiskInGb", 10),
                    "volumeInGb": data.get("volumeInGb", 0), "volumeMountPath": data.get("volumeMountPath"),
                    "ports": data.get("ports", ""), "env": data.get("env") or [],
                    "isServerless": data.get("isServerless", False),
                    "containerRegistryAuthId": data.get("containerRegistryAuthId") or None}
        self.templates[template_id] = template
        return template

    def update_endpoint_template(self, endpoint_id: str, template_id: str) -> dict[str, Any]:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            raise GraphQLError(f"Endpoint {endpoint_id} not found")
        if template_id not in self.templates:
            raise GraphQLError(f"Template {template_id} not found")
        endpoint.template_id, endpoint.polls_since_switch = template_id, 0
        endpoint.old_workers = self.linger_polls
        return self._endpoint(endpoint)

    def health(self, endpoint_id: str) -> dict[str, Any] | None:
        endpoint = self.endpoints.get(endpoint_id)
        if endpoint is None:
            return None
        image = self.templates[endpoint.template_id]["imageName"]
        workers = {"idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0, "unhealthy": 0}
        if endpoint.old_workers > 0:  # RunPod replaces workers gradually: the old one still serves
            endpoint.old_workers -= 1
            workers["ready"] = workers["idle"] = 1
            return {"jobs": {}, "workers": workers}
        endpoint.polls_since_switch += 1
        if image in self.broken_images:
            workers["unhealthy"] = 1
        elif endpoint.polls_since_switch <= self.ready_after:
            workers["initializing"] = 1
        else:
            workers["ready"] = workers["idle"] = 1
        return {"jobs": {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}, "workers": workers}


class _Handler(BaseHTTPRequestHandler):
    state: RunPodState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.state.api_key}":
            self._send(401, {"error": "Unauthorized"})
            return False
        return True

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        if self.path != "/graphql":
            self._send(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length) or b"{}")
        if not self._authorized():
            return
        state = self.state
        root = {
            "myself": lambda info: state.myself(),
            "saveTemplate": lambda info, input: state.save_template(input),
            "updateEndpointTemplate": lambda info, input: state.update_endpoint_template(input["endpointId"],
                                                                                         input["templateId"]),
        }
        with state.lock:
            result = graphql_sync(SCHEMA, payload.get("query", ""), root_value=root,
                                  variable_values=payload.get("variables"))
            operation = re.sub(r"\s+", " ", payload.get("query", "")).strip()[:200]
            state.operations.append(operation)
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [{"message": e.message, "path": e.path} for e in result.errors]
        self._send(200, body)

    def do_GET(self) -> None:  # noqa: N802
        match = re.fullmatch(r"/v2/([^/]+)/health", self.path)
        if not match:
            self._send(404, {"error": "not found"})
            return
        if not self._authorized():
            return
        with self.state.lock:
            if self.state.failing_health_polls > 0:
                self.state.failing_health_polls -= 1
                self._send(500, {"error": "internal error"})
                return
            health = self.state.health(match.group(1))
        if health is None:
            self._send(404, {"error": f"endpoint {match.group(1)} not found"})
            return
        self._send(200, health)


class RunPodStandIn:
    def __init__(self, api_key: str = "rp_test_key", ready_after: int = 2) -> None:
        self.state = RunPodState(api_key=api_key, ready_after=ready_after)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """What points the runpod SDK here."""
        return {"RUNPOD_API_BASE_URL": self.url, "RUNPOD_ENDPOINT_BASE_URL": f"{self.url}/v2",
                "RUNPOD_API_KEY": self.state.api_key}

    def add_endpoint(self, endpoint_id: str, image: str, env: dict[str, str] | None = None,
                     registry_auth: str | None = None) -> str:
        with self.state.lock:
            template = self.state.save_template({
                "name": f"{endpoint_id}-initial", "imageName": image,
                "env": [{"key": k, "value": v} for k, v in (env or {}).items()],
                "containerRegistryAuthId": registry_auth})
            self.state.endpoints[endpoint_id] = EndpointState(endpoint_id, endpoint_id, template["id"],
                                                              polls_since_switch=10**6)
        return template["id"]

    def image_of(self, endpoint_id: str) -> str:
        with self.state.lock:
            return self.state.templates[self.state.endpoints[endpoint_id].template_id]["imageName"]

    def __enter__(self) -> "RunPodStandIn":
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
