"""Deploy and roll back on RunPod, always by digest, through the runpod SDK.

Targets:
- `endpoint:ID`, a serverless endpoint: a new template for `REPO@sha256:...` is created and the
  endpoint switched to it; then the endpoint's health is polled until it runs that template with
  a ready worker and none unhealthy. On timeout the endpoint is switched back to its previous
  template, so the version that was serving stays current, and the failure is recorded as such.
- `template:ID`, a pod template: its image is set to `REPO@sha256:...` and read back (a template
  runs nothing, so there is no health to wait for; pods started from it afterwards get the image).

What rollback needs comes from RunPod (the image a target runs now) and the registry (the
production history, see builder/promote.py), so it works from a fresh CI runner with no ledger.
The SDK reads RUNPOD_API_BASE_URL (GraphQL) and RUNPOD_ENDPOINT_BASE_URL (serverless REST); the
API key comes from RUNPOD_API_KEY.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from builder import reach
from builder.errors import ConfigError, DeployError, InputError
from builder.ledger import Ledger

_TARGET = re.compile(r"(endpoint|template):([A-Za-z0-9_-]{1,64})")
_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})$")


@dataclass(frozen=True)
class Target:
    kind: str
    id: str

    @classmethod
    def parse(cls, text: str) -> "Target":
        match = _TARGET.fullmatch(text.strip())
        if not match:
            raise InputError(f"--target {text!r}: expected endpoint:ID (a serverless endpoint) or template:ID")
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


def digest_of(image: str | None) -> str | None:
    match = _DIGEST.search(image or "")
    return match.group(1) if match else None


def _quote(value: str) -> str:
    return json.dumps(value)  # a GraphQL string literal


class RunPod:
    """The one small module that reaches RunPod."""

    def __init__(self, api_key: str | None = None) -> None:
        try:
            import runpod
        except ImportError:
            raise ConfigError("the runpod SDK is not installed: pip install 'builder[deploy]'") from None
        key = api_key or os.environ.get("RUNPOD_API_KEY")
        if not key:
            raise ConfigError("no RunPod API key: set RUNPOD_API_KEY (a key with access to the endpoint or template)")
        runpod.api_key = key
        self._runpod = runpod

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
            raise DeployError(f"cannot reach RunPod to {what}: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}") from None

    def _query(self, what: str, query: str) -> dict[str, Any]:
        from runpod.api.graphql import run_graphql_query

        return self._call(what, lambda: run_graphql_query(query))["data"]

    def templates(self) -> dict[str, dict[str, Any]]:
        data = self._query("list templates", "query { myself { podTemplates { id name imageName dockerArgs "
                                             "containerDiskInGb volumeInGb volumeMountPath ports isServerless "
                                             "containerRegistryAuthId env { key value } } } }")
        return {t["id"]: t for t in data["myself"]["podTemplates"]}

    def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        endpoints = self._call("list endpoints", self._runpod.get_endpoints)
        for endpoint in endpoints:
            if endpoint["id"] == endpoint_id:
                return endpoint
        raise DeployError(f"RunPod has no serverless endpoint {endpoint_id} for this API key")

    def create_template(self, name: str, image: str, port: int, like: dict[str, Any] | None = None) -> str:
        """A serverless template for image, keeping the settings of `like` (the endpoint's current
        template): its environment, registry credentials and disk sizes."""
        like = like or {}
        env = {item["key"]: item["value"] for item in like.get("env") or []}
        env.setdefault("PORT", str(port))
        template = self._call(f"create a template for {image}", lambda: self._runpod.create_template(
            name=name, image_name=image, is_serverless=True, ports=like.get("ports") or f"{port}/http", env=env,
            container_disk_in_gb=like.get("containerDiskInGb") or 20, volume_in_gb=like.get("volumeInGb"),
            registry_auth_id=like.get("containerRegistryAuthId") or None))
        return template["id"]

    def switch_endpoint(self, endpoint_id: str, template_id: str) -> None:
        self._call(f"switch endpoint {endpoint_id} to template {template_id}",
                   lambda: self._runpod.update_endpoint_template(endpoint_id, template_id))

    def health(self, endpoint_id: str) -> dict[str, Any]:
        return self._call(f"read the health of endpoint {endpoint_id}",
                          lambda: self._runpod.Endpoint(endpoint_id).health(timeout=10), serverless=True)

    def set_template_image(self, template: dict[str, Any], image: str) -> None:
        fields = [f"id: {_quote(template['id'])}", f"name: {_quote(template['name'])}", f"imageName: {_quote(image)}"]
        for key in ("dockerArgs", "volumeMountPath", "ports"):
            if template.get(key) is not None:
                fields.append(f"{key}: {_quote(template[key])}")
        for key in ("containerDiskInGb", "volumeInGb"):
            if template.get(key) is not None:
                fields.append(f"{key}: {int(template[key])}")
        if template.get("isServerless") is not None:
            fields.append(f"isServerless: {'true' if template['isServerless'] else 'false'}")
        if template.get("containerRegistryAuthId"):
            fields.append(f"containerRegistryAuthId: {_quote(template['containerRegistryAuthId'])}")
        env = ", ".join(f"{{ key: {_quote(e['key'])}, value: {_quote(e['value'])} }}" for e in template.get("env") or [])
        fields.append(f"env: [{env}]")  # saveTemplate replaces fields: send back what was there
        self._query(f"update template {template['id']}",
                    f"mutation {{ saveTemplate(input: {{ {', '.join(fields)} }}) {{ id imageName }} }}")

    def current_image(self, target: Target) -> str | None:
        templates = self.templates()
        if target.kind == "template":
            if target.id not in templates:
                raise DeployError(f"RunPod has no template {target.id} for this API key")
            return templates[target.id].get("imageName")
        template_id = self.endpoint(target.id).get("templateId")
        return (templates.get(template_id) or {}).get("imageName")


@dataclass(frozen=True)
class DeployResult:
    target: Target
    image: str
    previous_image: str | None
    seconds: float
    health: dict[str, Any] | None


def _ready(health: dict[str, Any]) -> bool:
    """A worker serving (ready or running) and none unhealthy or still starting. Idle workers are
    not counted: an idle worker may be one the switch has not replaced yet."""
    workers = health.get("workers") or {}
    return (workers.get("ready", 0) + workers.get("running", 0)) >= 1 and workers.get("unhealthy", 0) == 0 \
        and workers.get("initializing", 0) == 0


def deploy(runpod: RunPod, ledger: Ledger, target: Target, model: str, version: str | None, image: str,
           timeout: float, poll: float, say: Callable[[str], None], port: int = 8000,
           sleep: Callable[[float], None] = time.sleep) -> DeployResult:
    """Point target at image (REPO@sha256:...); wait for health; record the truth either way."""
    digest = digest_of(image)
    if digest is None:
        raise InputError(f"{image}: deploys are by digest (REPO@sha256:...), never by a tag")
    started = time.monotonic()
    previous = runpod.current_image(target)
    if target.kind == "template":
        templates = runpod.templates()
        runpod.set_template_image(templates[target.id], image)
        if runpod.current_image(target) != image:
            ledger.record_deployment(model, version, digest, str(target), "failed", digest_of(previous),
                                     "the template did not keep the new image", time.monotonic() - started)
            raise DeployError(f"template {target.id} did not keep {image}: check it in the RunPod console")
        seconds = time.monotonic() - started
        ledger.record_deployment(model, version, digest, str(target), "healthy", digest_of(previous),
                                 "template updated", seconds)
        return DeployResult(target, image, previous, seconds, None)

    endpoint = runpod.endpoint(target.id)
    previous_template = endpoint.get("templateId")
    like = runpod.templates().get(previous_template) if previous_template else None
    name = f"builder-{model}-{version or 'unversioned'}-{digest[7:19]}"
    template_id = runpod.create_template(name, image, port, like)
    say(f"endpoint {target.id}: template {previous_template} -> {template_id} ({image})")
    runpod.switch_endpoint(target.id, template_id)
    health: dict[str, Any] = {}
    outcome, detail = "timeout", ""
    try:
        # Healthy means new workers were seen starting, then one serves: RunPod's health document
        # does not say which template a worker runs, so a worker already ready at the switch
        # proves nothing about the new image.
        saw_start = False
        errors = 0
        while time.monotonic() - started < timeout:
            try:
                health = runpod.health(target.id)
                on_new = runpod.endpoint(target.id).get("templateId") == template_id
                errors = 0
            except DeployError as exc:  # one failed poll is not a failed deploy
                errors += 1
                if errors >= 3:
                    raise
                say(f"health check failed ({exc}); trying again")
                sleep(poll)
                continue
            saw_start = saw_start or (health.get("workers") or {}).get("initializing", 0) > 0
            if on_new and saw_start and _ready(health):
                seconds = time.monotonic() - started
                ledger.record_deployment(model, version, digest, str(target), "healthy", digest_of(previous),
                                         json.dumps(health.get("workers")), seconds)
                return DeployResult(target, image, previous, seconds, health)
            say(f"waiting for endpoint {target.id}: workers {health.get('workers')}")
            sleep(poll)
        detail = json.dumps(health.get("workers"))
    except BaseException as exc:
        outcome, detail = "failed", str(exc) or type(exc).__name__
        reverted = _switch_back(runpod, target, previous_template, say)
        ledger.record_deployment(model, version, digest, str(target), outcome, digest_of(previous), detail,
                                 time.monotonic() - started)
        if isinstance(exc, DeployError):
            where = f"the endpoint is back on template {previous_template}" if reverted else \
                "CHECK THE ENDPOINT: it could not be switched back"
            raise DeployError(f"{exc}; {where}; the new version is recorded as failed") from None
        raise
    # Not healthy in time: put the endpoint back on what it ran, and say so.
    reverted = _switch_back(runpod, target, previous_template, say)
    seconds = time.monotonic() - started
    ledger.record_deployment(model, version, digest, str(target), outcome, digest_of(previous), detail, seconds)
    back = f"the endpoint is back on template {previous_template} ({previous})" if reverted else \
        f"switching back to template {previous_template} FAILED: check the endpoint now" if previous_template else \
        "the endpoint had no template before"
    raise DeployError(
        f"endpoint {target.id} did not become healthy on {image} within {timeout:g}s (workers: "
        f"{health.get('workers')}); {back}; the new version is recorded as failed"
    )


def _switch_back(runpod: RunPod, target: Target, previous_template: str | None, say: Callable[[str], None]) -> bool:
    if not previous_template:
        return False
    try:
        runpod.switch_endpoint(target.id, previous_template)
    except DeployError as exc:
        say(f"could not switch endpoint {target.id} back to template {previous_template}: {exc}")
        return False
    return True


def rollback_image(client, name: str, current_digest: str | None, to_version: str | None) -> tuple[str, str | None]:
    """The image to roll back to: `to_version`, else the newest production promotion older than
    the one the target runs now (so a second rollback goes further back, never forward).
    (REPO@sha256:..., its version.)"""
    from builder.promote import stage_history, version_of

    repository = client.ref.repository(name)
    if to_version:
        image = client.image(name, to_version)
        if image is None:
            raise DeployError(f"{repository}:{to_version} is not in the registry")
        return f"{repository}@{image.digest}", to_version
    if current_digest is None:
        raise DeployError(f"cannot tell which image the target runs (it is not pinned by digest): pass --to VERSION")
    history = stage_history(client, name, "production")
    if not history:
        raise DeployError(f"{repository} has no production history to roll back to: promote a version first")
    running = next((i for i, entry in enumerate(history) if entry.digest == current_digest), None)
    older = history[running + 1:] if running is not None else history
    for entry in older:
        if entry.digest != current_digest:
            return f"{repository}@{entry.digest}", version_of(client, name, entry.digest)
    raise DeployError(f"{repository}: no production version older than the one running now ({current_digest}): "
                      f"nothing earlier to roll back to")
