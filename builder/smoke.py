"""The smoke gate: the model loads and answers inside the image, with no network, before any tag.

Three ways to put the image in front of the smoke, each running the image's own
`python3 -m server.smoke` and reading its one JSON line:

- mounts (a build that pushes, on a local engine): the code image the engine built, with every
  weights file bind-mounted read-only from the host's cache at its path in the image: the same
  bytes at the same paths as the image's layers, and not one byte written. The template's marked
  step has checked that nothing below the weights holds their paths, and only the server code and
  manifest.json lie above them, so what the smoke sees is what a pod pulls;
- the image itself, loaded into the engine (`--no-push`, or an engine on another machine, which
  cannot see this host's files): one write of the weights into the engine;
- the image pulled by digest (`builder smoke REF@sha256:...`, on a GPU host, after another host
  assembled and pushed it without a tag).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from builder.docker import Docker
from builder.errors import ConfigError, InputError, RegistryError, SmokeTestFailed
from builder.ledger import Ledger
from builder.manifest import Manifest
from builder.registry import RegistryRef


def run_smoke(docker: Docker, image: str, manifest: Manifest, gpus: bool,
              mounts: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    smoke = manifest.smoke_test
    timeout = smoke.load_timeout_seconds + smoke.max_seconds + 60
    code, stdout, stderr = docker.run_to_completion(
        image, ["python3", "-m", "server.smoke"], timeout=timeout, gpus=gpus,
        environment={"BUILDER_DEVICE": "cuda" if gpus else "cpu"}, mounts=mounts,
    )
    result: dict[str, Any] | None = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    if result is None:
        last = (stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise SmokeTestFailed(
            f"{manifest.name}: smoke test crashed (exit {code}) without a result: {last}; nothing was tagged or pushed"
        )
    if code != 0 and result.get("passed"):
        result = {**result, "passed": False, "reason": f"the smoke exited with code {code}"}
    return result


def require_pass(manifest: Manifest, smoke: dict[str, Any]) -> None:
    if not smoke.get("passed"):
        raise SmokeTestFailed(
            f"{manifest.name}: smoke test failed: {smoke.get('reason') or 'no reason given'}; nothing was tagged or pushed"
        )


def smoke_summary(smoke: dict[str, Any]) -> str:
    parts = [f"device {smoke.get('device')}"]
    if smoke.get("load_seconds") is not None:
        parts.append(f"load {smoke['load_seconds']:.1f}s")
    if smoke.get("inference_seconds") is not None:
        parts.append(f"inference {smoke['inference_seconds']:.2f}s")
    if smoke.get("peak_rss_mb") is not None:
        parts.append(f"peak RSS {smoke['peak_rss_mb']:.0f} MB")
    if smoke.get("peak_gpu_mb") is not None:
        parts.append(f"peak GPU {smoke['peak_gpu_mb']:.0f} MB")
    return ", ".join(parts)


@dataclass
class Tagged:
    reference: str  # REGISTRY/NAME@sha256:...
    tag: str  # REGISTRY/NAME:VERSION
    smoke: dict[str, Any]
    already_tagged: bool = False


def parse_digest_reference(text: str) -> tuple[RegistryRef, str, str]:
    """REGISTRY[/NAMESPACE]/NAME@sha256:HEX -> (registry, name, digest)."""
    repository, at, digest = text.partition("@")
    if not at or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest) or "/" not in repository:
        raise InputError(f"{text}: expected REGISTRY[/NAMESPACE]/NAME@sha256:<64 hex>, as `builder build "
                         "--assemble-only` prints it")
    registry, _, name = repository.rpartition("/")
    return RegistryRef.parse(registry), name, digest


def smoke_and_tag(reference: str, manifest: Manifest, origin: str, docker: Docker, ledger: Ledger, gpus_wanted: str,
                  say: Callable[[str], None]) -> Tagged:
    """Pull an image that was assembled elsewhere, by digest; run its smoke; record it; and only
    then give it the version's tag (the tag is refused if it names another image)."""
    from builder import __version__
    from builder.registry import RegistryClient, smoke_tag

    registry, name, digest = parse_digest_reference(reference)
    if name != manifest.name:
        raise InputError(f"{reference} is an image of {name}, not of {manifest.name} ({origin})")
    client = RegistryClient(registry)
    config = client.config(name, digest)
    if config is None:
        raise RegistryError(f"{reference} is not in the registry: assemble it first (`builder build {name} --assemble-only`)")
    labels = (config.get("config") or {}).get("Labels") or {}
    if labels.get("io.builder.manifest.digest") != manifest.digest:
        raise InputError(f"{reference} was assembled from another version of {origin} (its manifest digest is "
                         f"{labels.get('io.builder.manifest.digest')}): check out that commit, or assemble again")
    gpus = gpus_wanted != "none" and docker.has_gpu_runtime()
    if gpus_wanted == "all" and not gpus:
        raise ConfigError("--gpus all: this Docker engine has no NVIDIA runtime: install nvidia-container-toolkit or use --gpus auto")
    build_id = uuid.uuid4().hex
    ledger.start_build(build_id, manifest.name, manifest.version, manifest.digest, __version__,
                       labels.get("org.opencontainers.image.revision"))
    repository = registry.repository(name)
    try:
        say(f"pull {repository}@{digest[:19]}")
        image_id = docker.pull(f"{repository}@{digest}")
        say(f"smoke test in the image ({'GPU' if gpus else 'CPU'}, no network)")
        started = time.perf_counter()
        smoke = run_smoke(docker, image_id, manifest, gpus)
        ledger.record_smoke(build_id, image_id, smoke)
        require_pass(manifest, smoke)
        say(f"smoke passed in {time.perf_counter() - started:.1f}s: {smoke_summary(smoke)}")
        existing = client.image(name, manifest.version)
        if existing is not None and existing.digest != digest:
            raise RegistryError(f"{repository}:{manifest.version} already names another image ({existing.digest}); "
                                f"versions are immutable: bump version in {origin} and assemble again")
        client.record_smoke(name, digest, {"passed": True, "smoke": smoke, "image_id": image_id, "digest": digest,
                                           "version": manifest.version, "manifest_digest": manifest.digest,
                                           "build_id": build_id, "builder_version": __version__,
                                           "git_commit": labels.get("org.opencontainers.image.revision")})
        if existing is None:
            client.tag(name, digest, manifest.version)
        ledger.record_push(build_id, repository, manifest.version, digest,
                           "already_present" if existing is not None else "pushed")
    except BaseException as exc:
        ledger.finish_build(build_id, "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed",
                            error=str(exc) or type(exc).__name__)
        raise
    ledger.finish_build(build_id, "pushed", image_id=image_id, repository=repository, digest=digest)
    return Tagged(f"{repository}@{digest}", f"{repository}:{manifest.version}", smoke, existing is not None)
