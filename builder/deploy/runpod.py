"""The one small module that reaches RunPod: its GraphQL API, the serverless health API, and a
pod's HTTP proxy.

GraphQL goes out as a query with variables (`{"query": ..., "variables": ...}`, the GraphQL over
HTTP form RunPod's API takes, as RunPod's own runpodctl sends it), never with values pasted into
the query text: the SDK's helpers (create_template, update_endpoint_template, ...) write
`value: "{value}"` unescaped, so one quote, backslash or newline in an inherited environment value
(JSON, a PEM) made every deploy of that endpoint a GraphQL syntax error. The SDK is kept for the
serverless health call (REST). RUNPOD_API_BASE_URL (GraphQL) and RUNPOD_ENDPOINT_BASE_URL
(serverless REST) move them, as the SDK reads them; the key comes from RUNPOD_API_KEY and goes to
those two APIs only, never to a pod.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from builder import reach
from builder.errors import ConfigError, DeployError

# RunPod's HTTP proxy for a pod's port (https://docs.runpod.io/pods/configuration/expose-ports);
# RUNPOD_POD_PROXY_URL replaces it (the test stand-in serves pods on loopback).
POD_PROXY_URL = "https://{pod_id}-{port}.proxy.runpod.net"
GRAPHQL_BASE_URL = "https://api.runpod.io"  # the SDK's default (runpod/api/graphql.py)
SERVERLESS_BASE_URL = "https://api.runpod.ai/v2"
_TEMPLATE_FIELDS = ("id name imageName dockerArgs containerDiskInGb volumeInGb volumeMountPath ports isServerless "
                    "containerRegistryAuthId env { key value }")


def env_list(items: Any) -> dict[str, str]:
    """RunPod's environment, as templates ([{key, value}]) or pods (["KEY=value"]) carry it."""
    env: dict[str, str] = {}
    for item in items or []:
        if isinstance(item, dict) and item.get("key"):
            env[item["key"]] = str(item.get("value") or "")
        elif isinstance(item, str) and "=" in item:
            key, _, value = item.partition("=")
            env[key] = value
    return env


def env_input(env: dict[str, str]) -> list[dict[str, str]]:
    """An environment as RunPod's EnvironmentVariableInput list, for a variable (never query text)."""
    return [{"key": key, "value": value} for key, value in env.items()]


def _kept_settings(current: dict[str, Any]) -> dict[str, Any]:
    """Input fields that send a template's or pod's settings back unchanged (saveTemplate and
    podEditJob replace what they are not given)."""
    kept: dict[str, Any] = {key: current[key] for key in ("dockerArgs", "volumeMountPath", "ports")
                            if current.get(key) is not None}
    kept.update({key: int(current[key]) for key in ("containerDiskInGb", "volumeInGb") if current.get(key) is not None})
    return kept


def ports_for(ports: str | None, *needed: int) -> str:
    """A RunPod ports string ("8000/http,22/tcp") that exposes each of `needed` as HTTP: RunPod
    routes a load-balancing worker's requests and health checks only to exposed ports (unset PORT
    means 80, a custom one must be listed: https://docs.runpod.io/serverless/load-balancing/overview).
    The other entries stay; an entry for a needed port with another protocol becomes /http."""
    items = [item.strip() for item in (ports or "").split(",") if item.strip()]
    kept = [item for item in items if not (item.partition("/")[0] in {str(n) for n in needed})]
    return ",".join([f"{number}/http" for number in dict.fromkeys(needed)] + kept)


def http_port(ports: str | None, default: int = 8000) -> int:
    """The first HTTP port of a RunPod ports string ("8000/http,22/tcp")."""
    for item in (ports or "").split(","):
        number, _, kind = item.strip().partition("/")
        if kind == "http" and number.isdigit():
            return int(number)
    return default


@dataclass(frozen=True)
class PodStatus:
    answering: bool  # the pod's server answered at all
    ready: bool
    version: str | None
    detail: str


class RunPod:
    def __init__(self, api_key: str | None = None) -> None:
        try:
            import runpod
        except ImportError:
            raise ConfigError("the runpod SDK is not installed: pip install 'builder[deploy]'") from None
        key = api_key or os.environ.get("RUNPOD_API_KEY")
        if not key:
            raise ConfigError("no RunPod API key: set RUNPOD_API_KEY (a key with access to the target)")
        runpod.api_key = key
        self._runpod = runpod
        self._key = key

    def _call(self, what: str, fn: Callable[[], Any], serverless: bool = False) -> Any:
        from runpod import error

        address = (os.environ.get("RUNPOD_ENDPOINT_BASE_URL", SERVERLESS_BASE_URL) if serverless
                   else os.environ.get("RUNPOD_API_BASE_URL", GRAPHQL_BASE_URL))
        try:
            with reach.reaching(f"RunPod (to {what})", address, reach.RUNPOD):
                return fn()
        except error.AuthenticationError:
            raise DeployError(f"RunPod refused the API key while trying to {what}: check RUNPOD_API_KEY") from None
        except RuntimeError as exc:  # the SDK's serverless client raises RuntimeError on a 401
            raise DeployError(f"RunPod refused to {what}: {' '.join(str(exc).split())[:200]}") from None
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors
            raise DeployError(f"RunPod did not answer (trying to {what}): {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:160]}") from None

    def _query(self, what: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """One GraphQL operation; every value it carries travels in `variables`."""
        from runpod import error

        def post() -> dict[str, Any]:
            import requests

            url = f"{os.environ.get('RUNPOD_API_BASE_URL', GRAPHQL_BASE_URL)}/graphql"
            response = requests.post(url, json={"query": query, "variables": variables or {}}, timeout=30,
                                     headers={"Authorization": f"Bearer {self._key}"})
            if response.status_code == 401:
                raise error.AuthenticationError("Unauthorized")
            try:
                body = response.json()
            except ValueError:
                raise ValueError(f"HTTP {response.status_code}, not JSON") from None
            if body.get("errors"):
                message = "; ".join(str(e.get("message")) for e in body["errors"] if isinstance(e, dict))
                raise DeployError(f"RunPod refused to {what}: {' '.join(message.split())[:200]}")
            if not isinstance(body.get("data"), dict):
                raise ValueError(f"HTTP {response.status_code} without data")
            return body["data"]

        return self._call(what, post)

    # -- templates -----------------------------------------------------------------------------
    def templates(self) -> dict[str, dict[str, Any]]:
        data = self._query("list templates", f"query Templates {{ myself {{ podTemplates {{ {_TEMPLATE_FIELDS} }} }} }}")
        return {t["id"]: t for t in data["myself"]["podTemplates"]}

    def create_template(self, name: str, image: str, env: dict[str, str], like: dict[str, Any] | None,
                        ports: str) -> str:
        """A serverless template for image, keeping the settings of `like` (the endpoint's current
        template): its registry credentials, disk sizes and start arguments; `env` is the whole
        environment and `ports` what it exposes."""
        like = like or {}
        fields: dict[str, Any] = {"containerDiskInGb": 20, "volumeInGb": 0, "dockerArgs": "", **_kept_settings(like)}
        fields.update(name=name, imageName=image, isServerless=True, ports=ports, env=env_input(env))
        if like.get("containerRegistryAuthId"):
            fields["containerRegistryAuthId"] = like["containerRegistryAuthId"]
        return self._save_template(f"create a template for {image}", fields)["id"]

    def set_template_image(self, template: dict[str, Any], image: str) -> None:
        fields = {"id": template["id"], "name": template["name"], "imageName": image, **_kept_settings(template),
                  "env": env_input(env_list(template.get("env")))}  # saveTemplate replaces: send back all
        if template.get("isServerless") is not None:
            fields["isServerless"] = bool(template["isServerless"])
        if template.get("containerRegistryAuthId"):
            fields["containerRegistryAuthId"] = template["containerRegistryAuthId"]
        self._save_template(f"update template {template['id']}", fields)

    def _save_template(self, what: str, fields: dict[str, Any]) -> dict[str, Any]:
        data = self._query(what, "mutation SaveTemplate($input: SaveTemplateInput!) { saveTemplate(input: $input) "
                                 "{ id imageName } }", {"input": fields})
        return data["saveTemplate"]

    def delete_template(self, name: str) -> None:
        self._query(f"delete template {name}", "mutation DeleteTemplate($name: String!) { "
                                                "deleteTemplate(templateName: $name) }", {"name": name})

    # -- endpoints -----------------------------------------------------------------------------
    def endpoints(self) -> list[dict[str, Any]]:
        data = self._query("list endpoints", "query Endpoints { myself { endpoints { id name templateId type gpuIds "
                                             "workersMin workersMax } } }")
        return list(data["myself"]["endpoints"])

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        for endpoint in self.endpoints():
            if endpoint["id"] == endpoint_id:
                return endpoint
        raise DeployError(f"RunPod has no serverless endpoint {endpoint_id} for this API key")

    def switch_endpoint(self, endpoint_id: str, template_id: str) -> None:
        self._query(f"switch endpoint {endpoint_id} to template {template_id}",
                    "mutation SwitchTemplate($input: UpdateEndpointTemplateInput!) { "
                    "updateEndpointTemplate(input: $input) { id templateId } }",
                    {"input": {"endpointId": endpoint_id, "templateId": template_id}})

    def health(self, endpoint_id: str) -> dict[str, Any]:
        return self._call(f"read the health of endpoint {endpoint_id}",
                          lambda: self._runpod.Endpoint(endpoint_id).health(timeout=10), serverless=True)

    # -- pods ----------------------------------------------------------------------------------
    def pod(self, pod_id: str) -> dict[str, Any]:
        data = self._query(f"read pod {pod_id}",
                           "query Pod($input: PodFilter!) { pod(input: $input) { id name imageName env ports "
                           "dockerArgs containerDiskInGb volumeInGb volumeMountPath desiredStatus "
                           "runtime { uptimeInSeconds } machine { gpuDisplayName } } }", {"input": {"podId": pod_id}})
        if not data.get("pod"):
            raise DeployError(f"RunPod has no pod {pod_id} for this API key")
        return data["pod"]

    def set_pod_image(self, pod: dict[str, Any], image: str) -> None:
        """podEditJob: the pod restarts on the new image, with its settings and environment kept."""
        fields = {"podId": pod["id"], "imageName": image, **_kept_settings(pod),
                  "env": env_input(env_list(pod.get("env")))}
        self._query(f"change the image of pod {pod['id']}",
                    "mutation EditPod($input: PodEditJobInput!) { podEditJob(input: $input) { id imageName } }",
                    {"input": fields})

    def pod_status(self, pod_id: str, port: int, timeout: float = 5) -> PodStatus:
        """What the pod's server says through RunPod's proxy: /metadata names the version and state.
        No credentials go with it: the proxy needs none, and whatever image the pod runs (or
        whatever RUNPOD_POD_PROXY_URL names) would receive the account's API key."""
        import requests

        url = os.environ.get("RUNPOD_POD_PROXY_URL", POD_PROXY_URL).format(pod_id=pod_id, port=port)
        try:
            response = requests.get(f"{url}/metadata", timeout=timeout)
        except requests.RequestException as exc:
            return PodStatus(False, False, None, f"no answer yet ({type(exc).__name__})")
        if response.status_code != 200:
            return PodStatus(False, False, None, f"the proxy answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            return PodStatus(True, False, None, "the server's /metadata is not JSON")
        return PodStatus(True, body.get("status") == "ready", body.get("version"), f"model {body.get('status')}")

    # -- GPUs ----------------------------------------------------------------------------------
    def gpu_types(self) -> dict[str, float]:
        """GPU memory in GB by GPU type id and by display name (RunPod's gpuTypes)."""
        data = self._query("list GPU types", "query GpuTypes { gpuTypes { id displayName memoryInGb } }")
        memory: dict[str, float] = {}
        for gpu in data.get("gpuTypes") or []:
            if gpu.get("memoryInGb"):
                memory[gpu["id"]] = memory[gpu.get("displayName") or gpu["id"]] = float(gpu["memoryInGb"])
        return memory

    def target_gpus(self, target) -> list[tuple[str, float | None]]:
        """The GPUs a target may run on, with their memory in GB (None: unknown); [] for a template."""
        if target.kind == "template":
            return []
        if target.kind == "pod":
            name = (self.pod(target.id).get("machine") or {}).get("gpuDisplayName")
            return [(name, self.gpu_types().get(name))] if name else []
        gpus, memory = [], None
        for token in str(self.endpoint(target.id).get("gpuIds") or "").split(","):
            token = token.strip()
            if not token or token.startswith("-"):  # "-NVIDIA ..." excludes a type from a pool
                continue
            pool = re.fullmatch(r"[A-Z]+_(\d+)(?:_PRO)?", token)  # RunPod's pools: AMPERE_24, ADA_48_PRO, HOPPER_141
            if pool:  # the pool's name says its memory: no need to ask for the GPU types
                gpus.append((token, float(pool.group(1))))
                continue
            memory = memory if memory is not None else self.gpu_types()
            gpus.append((token, memory.get(token)))
        return gpus

    # -- any target ----------------------------------------------------------------------------
    def current_image(self, target) -> str | None:
        if target.kind == "pod":
            return self.pod(target.id).get("imageName")
        templates = self.templates()
        if target.kind == "template":
            if target.id not in templates:
                raise DeployError(f"RunPod has no template {target.id} for this API key")
            return templates[target.id].get("imageName")
        template_id = self.endpoint(target.id).get("templateId")
        return (templates.get(template_id) or {}).get("imageName")
