"""Switch a RunPod target to an image by digest, wait until it serves it, and put it back if not.

- `endpoint:ID`, a serverless endpoint, load-balancing or queue-based (RunPod's endpoint type,
  or --endpoint-type): a new template (a unique name per deploy) for `REPO@sha256:...`, with the
  environment its type needs (BUILDER_SERVE_MODE, PORT, PORT_HEALTH) over the old template's,
  PORT and PORT_HEALTH exposed as HTTP ports whatever the old template exposed, and the endpoint
  switched to it; then RunPod's health document is polled until the endpoint runs
  that template with a serving worker and none unhealthy or starting. On timeout the endpoint is
  switched back to its previous template. Templates builder made that no endpoint uses any more
  are deleted beyond the newest `keep_templates`.
- `pod:ID`: podEditJob sets the pod's image (the pod restarts on it); the pod's own server is then
  asked, through RunPod's proxy, until it reports the new version ready. On timeout the pod is set
  back to its previous image.
- `template:ID`: its image is set and read back (a template runs nothing: no health to wait for).
Every outcome is recorded in the ledger, the true one: healthy, timeout or failed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from builder.deploy.runpod import RunPod, env_list, http_port, ports_for
from builder.errors import DeployError, InputError
from builder.ledger import Ledger

_TARGET = re.compile(r"(pod|endpoint|template):([A-Za-z0-9_-]{1,64})")
_DIGEST = re.compile(r"@(sha256:[0-9a-f]{64})$")
TEMPLATE_PREFIX = "builder-"
ENDPOINT_TYPES = {"LB": "lb", "LOAD_BALANCER": "lb", "QB": "queue", "QUEUE": "queue", "SERVERLESS": "queue"}
Say = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    kind: str
    id: str

    @classmethod
    def parse(cls, text: str) -> "Target":
        match = _TARGET.fullmatch(text.strip())
        if not match:
            raise InputError(f"--target {text!r}: expected pod:ID, endpoint:ID (a serverless endpoint) or template:ID")
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class Plan:
    """One deploy: what goes where, and how long to wait for it."""

    target: Target
    model: str
    version: str | None
    image: str  # REPO@sha256:...
    timeout: float
    poll: float
    endpoint_type: str = "auto"  # auto | lb | queue
    port: int = 8000
    keep_templates: int = 3
    forced_reason: str | None = None


@dataclass(frozen=True)
class DeployResult:
    target: Target
    image: str
    previous_image: str | None
    seconds: float
    health: dict[str, Any] | None
    mode: str | None = None  # how the image serves there: http | queue (None for a template)
    version: str | None = None


def digest_of(image: str | None) -> str | None:
    match = _DIGEST.search(image or "")
    return match.group(1) if match else None


def endpoint_mode(endpoint: dict[str, Any], given: str) -> str:
    """http (load-balancing) or queue, from --endpoint-type or RunPod's endpoint type."""
    if given in ("lb", "queue"):
        return "http" if given == "lb" else "queue"
    kind = ENDPOINT_TYPES.get(str(endpoint.get("type") or "").upper())
    if kind is None:
        raise InputError(f"RunPod does not say whether endpoint {endpoint['id']} is load-balancing or queue-based "
                         f"(type {endpoint.get('type')!r}): pass --endpoint-type lb or --endpoint-type queue")
    return "http" if kind == "lb" else "queue"


def serving_env(base: dict[str, str], mode: str, port: int) -> dict[str, str]:
    """The template's environment for a serving mode: the old one's, plus what this mode needs.
    RunPod routes a load-balancing endpoint's requests to PORT and health checks to PORT_HEALTH."""
    env = dict(base)
    env["BUILDER_SERVE_MODE"] = mode
    if mode == "http":
        env.setdefault("PORT", str(port))
        env.setdefault("PORT_HEALTH", env["PORT"])
    else:
        env.pop("PORT_HEALTH", None)
    return env


def template_ports(like: dict[str, Any] | None, env: dict[str, str], mode: str) -> str:
    """What the new template exposes. A load-balancing worker is reached only on exposed ports:
    PORT (requests) and PORT_HEALTH (/ping) as N/http, whatever the old template listed (one with
    `80/http` and no PORT would have RunPod probe 80 while the server listens on 8000)."""
    old = (like or {}).get("ports") or ""
    if mode != "http":
        return old
    ports = []
    for name in ("PORT", "PORT_HEALTH"):
        value = env.get(name) or env["PORT"]
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise InputError(f"the endpoint's template sets {name}={value!r}: set it to a port number "
                             "(or remove it) in the RunPod console, then deploy again")
        ports.append(int(value))
    return ports_for(old, *ports)


def template_name(plan: Plan, now: dt.datetime | None = None) -> str:
    """Unique per deploy (RunPod refuses a name twice, and a rollback redeploys an old version)."""
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%S%fZ")
    digest = digest_of(plan.image) or "sha256:unknown"
    return f"{TEMPLATE_PREFIX}{plan.model}-{plan.version or 'unversioned'}-{digest[7:19]}-{stamp}"


def deploy(runpod: RunPod, ledger: Ledger, plan: Plan, say: Say, sleep: Callable[[float], None] = time.sleep) -> DeployResult:
    """Point the target at plan.image (REPO@sha256:...); wait for health; record the truth either way."""
    digest = digest_of(plan.image)
    if digest is None:
        raise InputError(f"{plan.image}: deploys are by digest (REPO@sha256:...), never by a tag")
    if plan.target.kind == "template":
        return _deploy_template(runpod, ledger, plan, digest)
    if plan.target.kind == "pod":
        return _deploy_pod(runpod, ledger, plan, digest, say, sleep)
    return _deploy_endpoint(runpod, ledger, plan, digest, say, sleep)


def _record(ledger: Ledger, plan: Plan, digest: str, outcome: str, previous: str | None, detail: str,
            started: float) -> float:
    seconds = time.monotonic() - started
    ledger.record_deployment(plan.model, plan.version, digest, str(plan.target), outcome, digest_of(previous), detail,
                             seconds, plan.forced_reason)
    return seconds


def _deploy_template(runpod: RunPod, ledger: Ledger, plan: Plan, digest: str) -> DeployResult:
    started = time.monotonic()
    previous = runpod.current_image(plan.target)
    runpod.set_template_image(runpod.templates()[plan.target.id], plan.image)
    if runpod.current_image(plan.target) != plan.image:
        _record(ledger, plan, digest, "failed", previous, "the template did not keep the new image", started)
        raise DeployError(f"template {plan.target.id} did not keep {plan.image}: check it in the RunPod console")
    seconds = _record(ledger, plan, digest, "healthy", previous, "template updated", started)
    return DeployResult(plan.target, plan.image, previous, seconds, None, None, plan.version)


# -- pods ------------------------------------------------------------------------------------------
def _deploy_pod(runpod: RunPod, ledger: Ledger, plan: Plan, digest: str, say: Say,
                sleep: Callable[[float], None]) -> DeployResult:
    started = time.monotonic()
    pod = runpod.pod(plan.target.id)
    previous = pod.get("imageName")
    if env_list(pod.get("env")).get("BUILDER_SERVE_MODE", "http") != "http":
        raise InputError(f"pod {plan.target.id} sets BUILDER_SERVE_MODE to queue: a pod serves HTTP; remove it")
    port = http_port(pod.get("ports"), plan.port)
    say(f"pod {plan.target.id}: {previous} -> {plan.image} (it restarts on the new image)")
    runpod.set_pod_image(pod, plan.image)
    status = None
    try:
        while time.monotonic() - started < plan.timeout:
            status = runpod.pod_status(plan.target.id, port)
            # The version, not only readiness: right after the switch the old server may still answer.
            if status.ready and (plan.version is None or status.version == plan.version):
                seconds = _record(ledger, plan, digest, "healthy", previous, status.detail, started)
                return DeployResult(plan.target, plan.image, previous, seconds, None, "http", plan.version)
            say(f"waiting for pod {plan.target.id}: {status.detail}")
            sleep(plan.poll)
    except BaseException as exc:
        back = _set_pod_back(runpod, pod, previous, say)
        _record(ledger, plan, digest, "failed", previous, str(exc) or type(exc).__name__, started)
        if isinstance(exc, DeployError):
            raise DeployError(f"{exc}; {back}; the new version is recorded as failed") from None
        raise
    back = _set_pod_back(runpod, pod, previous, say)
    _record(ledger, plan, digest, "timeout", previous, status.detail if status else "", started)
    raise DeployError(f"pod {plan.target.id} did not serve {plan.image} within {plan.timeout:g}s "
                      f"({status.detail if status else 'no answer'}); {back}; the new version is recorded as failed")


def _set_pod_back(runpod: RunPod, pod: dict[str, Any], previous: str | None, say: Say) -> str:
    if not previous:
        return "the pod had no image before"
    try:
        runpod.set_pod_image(pod, previous)
    except DeployError as exc:
        say(f"could not set pod {pod['id']} back to {previous}: {exc}")
        return f"setting the pod back to {previous} FAILED: check the pod now"
    return f"the pod is back on {previous}"


# -- serverless endpoints ----------------------------------------------------------------------------
def _ready(health: dict[str, Any]) -> bool:
    """A worker serving (ready or running) and none unhealthy or still starting. Idle workers are
    not counted: an idle worker may be one the switch has not replaced yet."""
    workers = health.get("workers") or {}
    return (workers.get("ready", 0) + workers.get("running", 0)) >= 1 and workers.get("unhealthy", 0) == 0 \
        and workers.get("initializing", 0) == 0


def _deploy_endpoint(runpod: RunPod, ledger: Ledger, plan: Plan, digest: str, say: Say,
                     sleep: Callable[[float], None]) -> DeployResult:
    started = time.monotonic()
    endpoint = runpod.endpoint(plan.target.id)
    mode = endpoint_mode(endpoint, plan.endpoint_type)
    templates = runpod.templates()
    previous_template = endpoint.get("templateId")
    like = templates.get(previous_template) if previous_template else None
    previous = (like or {}).get("imageName")
    env = serving_env(env_list((like or {}).get("env")), mode, plan.port)
    template_id = runpod.create_template(template_name(plan), plan.image, env, like, template_ports(like, env, mode))
    kind = "load-balancing" if mode == "http" else "queue"
    say(f"endpoint {plan.target.id} ({kind}): template {previous_template} -> {template_id} ({plan.image})")
    runpod.switch_endpoint(plan.target.id, template_id)
    try:
        health, serving = _wait_for_endpoint(runpod, plan, template_id, say, sleep, started)
    except BaseException as exc:
        reverted = _switch_back(runpod, plan.target, previous_template, say)
        _record(ledger, plan, digest, "failed", previous, str(exc) or type(exc).__name__, started)
        if isinstance(exc, DeployError):
            where = f"the endpoint is back on template {previous_template}" if reverted else \
                "CHECK THE ENDPOINT: it could not be switched back"
            raise DeployError(f"{exc}; {where}; the new version is recorded as failed") from None
        raise
    if serving:
        seconds = _record(ledger, plan, digest, "healthy", previous, json.dumps(health.get("workers")), started)
        _tidy_templates(runpod, plan.keep_templates, say)
        return DeployResult(plan.target, plan.image, previous, seconds, health, mode, plan.version)
    # Not healthy in time: put the endpoint back on what it ran, and say so.
    reverted = _switch_back(runpod, plan.target, previous_template, say)
    _record(ledger, plan, digest, "timeout", previous, json.dumps(health.get("workers")), started)
    back = f"the endpoint is back on template {previous_template} ({previous})" if reverted else \
        f"switching back to template {previous_template} FAILED: check the endpoint now" if previous_template else \
        "the endpoint had no template before"
    raise DeployError(
        f"endpoint {plan.target.id} did not become healthy on {plan.image} within {plan.timeout:g}s (workers: "
        f"{health.get('workers')}); {back}; the new version is recorded as failed"
    )


def _wait_for_endpoint(runpod: RunPod, plan: Plan, template_id: str, say: Say, sleep: Callable[[float], None],
                       started: float) -> tuple[dict[str, Any], bool]:
    """(the last health document, whether the endpoint serves the new template) at success or timeout.

    Healthy means new workers were seen starting, then one serves: RunPod's health document does
    not say which template a worker runs, so a worker already ready at the switch proves nothing."""
    saw_start = False
    errors = 0
    health: dict[str, Any] = {}
    while time.monotonic() - started < plan.timeout:
        try:
            health = runpod.health(plan.target.id)
            on_new = runpod.endpoint(plan.target.id).get("templateId") == template_id
            errors = 0
        except DeployError as exc:  # one failed poll is not a failed deploy
            errors += 1
            if errors >= 3:
                raise
            say(f"health check failed ({exc}); trying again")
            sleep(plan.poll)
            continue
        saw_start = saw_start or (health.get("workers") or {}).get("initializing", 0) > 0
        if on_new and saw_start and _ready(health):
            return health, True
        say(f"waiting for endpoint {plan.target.id}: workers {health.get('workers')}")
        sleep(plan.poll)
    return health, False


def _switch_back(runpod: RunPod, target: Target, previous_template: str | None, say: Say) -> bool:
    if not previous_template:
        return False
    try:
        runpod.switch_endpoint(target.id, previous_template)
    except DeployError as exc:
        say(f"could not switch endpoint {target.id} back to template {previous_template}: {exc}")
        return False
    return True


def _tidy_templates(runpod: RunPod, keep: int, say: Say) -> None:
    """Delete templates builder created that no endpoint uses, beyond the newest `keep`. Never one
    in use; a failure here is reported, not fatal (the deploy itself succeeded)."""
    try:
        used = {e.get("templateId") for e in runpod.endpoints()}
        ours = [t for t in runpod.templates().values()
                if (t.get("name") or "").startswith(TEMPLATE_PREFIX) and t.get("isServerless") and t["id"] not in used]
        ours.sort(key=lambda t: t["name"].rsplit("-", 1)[-1], reverse=True)  # the name ends with its UTC time
        for template in ours[keep:]:
            runpod.delete_template(template["name"])
            say(f"deleted unused template {template['name']}")
    except DeployError as exc:
        say(f"could not tidy old templates: {exc}")


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
        raise DeployError("cannot tell which image the target runs (it is not pinned by digest): pass --to VERSION")
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
