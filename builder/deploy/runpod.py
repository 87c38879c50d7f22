"""The one small module that reaches RunPod: its GraphQL API, the serverless health API, and a
pod's HTTP proxy.

Through the runpod SDK where it has the call (templates, endpoint switch, health), and through
the SDK's GraphQL transport where it has none: pods (`pod`, `podEditJob`, which the SDK lacks),
an endpoint's type, template deletion. The SDK reads RUNPOD_API_BASE_URL (GraphQL) and
RUNPOD_ENDPOINT_BASE_URL (serverless REST); the key comes from RUNPOD_API_KEY.
"""

from __future__ import annotations

import json
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


def _quote(value: str) -> str:
    return json.dumps(value)  # a GraphQL string literal


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


def _env_literal(env: dict[str, str]) -> str:
    return "[" + ", ".join(f"{{ key: {_quote(k)}, value: {_quote(v)} }}" for k, v in env.items()) + "]"


def _kept_settings(current: dict[str, Any]) -> list[str]:
    """GraphQL input fields that send a template's or pod's settings back unchanged (saveTemplate
    and podEditJob replace what they are not given)."""
    fields = [f"{key}: {_quote(current[key])}" for key in ("dockerArgs", "volumeMountPath", "ports")
              if current.get(key) is not None]
    return fields + [f"{key}: {int(current[key])}" for key in ("containerDiskInGb", "volumeInGb")
                     if current.get(key) is not None]


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

        # The SDK's own defaults, which these variables override (runpod/api/graphql.py, runpod/endpoint).
        address = (os.environ.get("RUNPOD_ENDPOINT_BASE_URL", "https://api.runpod.ai/v2") if serverless
                   else os.environ.get("RUNPOD_API_BASE_URL", "https://api.runpod.io"))
        try:
            with reach.reaching(f"RunPod (to {what})", address, reach.RUNPOD):
                return fn()
        except error.AuthenticationError:
            raise DeployError(f"RunPod refused the API key while trying to {what}: check RUNPOD_API_KEY") from None
        except RuntimeError as exc:  # the SDK's serverless client raises RuntimeError on a 401
            raise DeployError(f"RunPod refused to {what}: {' '.join(str(exc).split())[:200]}") from None
        except error.QueryError as exc:
            raise DeployError(f"RunPod refused to {what}: {' '.join(str(exc).split())[:200]}") from None
        except (OSError, ValueError) as exc:  # requests' errors are OSErrors
            raise DeployError(f"RunPod did not answer (trying to {what}): {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:160]}") from None

    def _query(self, what: str, query: str) -> dict[str, Any]:
        from runpod.api.graphql import run_graphql_query

        return self._call(what, lambda: run_graphql_query(query))["data"]

    # -- templates -----------------------------------------------------------------------------
    def templates(self) -> dict[str, dict[str, Any]]:
        data = self._query("list templates", "query { myself { podTemplates { id name imageName dockerArgs "
                                             "containerDiskInGb volumeInGb volumeMountPath ports isServerless "
                                             "containerRegistryAuthId env { key value } } } }")
        return {t["id"]: t for t in data["myself"]["podTemplates"]}

    def create_template(self, name: str, image: str, env: dict[str, str], like: dict[str, Any] | None,
                        port: int) -> str:
        """A serverless template for image, keeping the settings of `like` (the endpoint's current
        template): its registry credentials and disk sizes; `env` is the whole environment."""
        like = like or {}
        template = self._call(f"create a template for {image}", lambda: self._runpod.create_template(
            name=name, image_name=image, is_serverless=True, ports=like.get("ports") or f"{port}/http", env=env,
            container_disk_in_gb=like.get("containerDiskInGb") or 20, volume_in_gb=like.get("volumeInGb"),
            registry_auth_id=like.get("containerRegistryAuthId") or None))
        return template["id"]

    def set_template_image(self, template: dict[str, Any], image: str) -> None:
        fields = [f"id: {_quote(template['id'])}", f"name: {_quote(template['name'])}", f"imageName: {_quote(image)}",
                  *_kept_settings(template)]
        if template.get("isServerless") is not None:
            fields.append(f"isServerless: {'true' if template['isServerless'] else 'false'}")
        if template.get("containerRegistryAuthId"):
            fields.append(f"containerRegistryAuthId: {_quote(template['containerRegistryAuthId'])}")
        fields.append(f"env: {_env_literal(env_list(template.get('env')))}")  # saveTemplate replaces: send back all
        self._query(f"update template {template['id']}",
                    f"mutation {{ saveTemplate(input: {{ {', '.join(fields)} }}) {{ id imageName }} }}")

    def delete_template(self, name: str) -> None:
        self._query(f"delete template {name}", f"mutation {{ deleteTemplate(templateName: {_quote(name)}) }}")

    # -- endpoints -----------------------------------------------------------------------------
    def endpoints(self) -> list[dict[str, Any]]:
        data = self._query("list endpoints", "query { myself { endpoints { id name templateId type gpuIds "
                                             "workersMin workersMax } } }")
        return list(data["myself"]["endpoints"])

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        for endpoint in self.endpoints():
            if endpoint["id"] == endpoint_id:
                return endpoint
        raise DeployError(f"RunPod has no serverless endpoint {endpoint_id} for this API key")

    def switch_endpoint(self, endpoint_id: str, template_id: str) -> None:
        self._call(f"switch endpoint {endpoint_id} to template {template_id}",
                   lambda: self._runpod.update_endpoint_template(endpoint_id, template_id))

    def health(self, endpoint_id: str) -> dict[str, Any]:
        return self._call(f"read the health of endpoint {endpoint_id}",
                          lambda: self._runpod.Endpoint(endpoint_id).health(timeout=10), serverless=True)

    # -- pods ----------------------------------------------------------------------------------
    def pod(self, pod_id: str) -> dict[str, Any]:
        data = self._query(f"read pod {pod_id}",
                           f"query {{ pod(input: {{ podId: {_quote(pod_id)} }}) {{ id name imageName env ports "
                           "dockerArgs containerDiskInGb volumeInGb volumeMountPath desiredStatus "
                           "runtime { uptimeInSeconds } machine { gpuDisplayName } } }")
        if not data.get("pod"):
            raise DeployError(f"RunPod has no pod {pod_id} for this API key")
        return data["pod"]

    def set_pod_image(self, pod: dict[str, Any], image: str) -> None:
        """podEditJob: the pod restarts on the new image, with its settings and environment kept."""
        fields = [f"podId: {_quote(pod['id'])}", f"imageName: {_quote(image)}", *_kept_settings(pod)]
        fields.append(f"env: {_env_literal(env_list(pod.get('env')))}")
        self._query(f"change the image of pod {pod['id']}",
                    f"mutation {{ podEditJob(input: {{ {', '.join(fields)} }}) {{ id imageName }} }}")

    def pod_status(self, pod_id: str, port: int, timeout: float = 5) -> PodStatus:
        """What the pod's server says through RunPod's proxy: /metadata names the version and state."""
        import requests

        url = os.environ.get("RUNPOD_POD_PROXY_URL", POD_PROXY_URL).format(pod_id=pod_id, port=port)
        try:
            response = requests.get(f"{url}/metadata", headers={"Authorization": f"Bearer {self._key}"},
                                    timeout=timeout)
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
        types = self._call("list GPU types", self._runpod.get_gpus)
        memory: dict[str, float] = {}
        for gpu in types or []:
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
