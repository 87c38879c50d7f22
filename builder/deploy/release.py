"""`builder deploy` and `builder rollback` as library calls: which image, the gates, then the rollout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.deploy.gates import Release, enforce, problems
from builder.deploy.rollout import DeployResult, Plan, Say, Target, deploy, digest_of, rollback_image
from builder.deploy.runpod import RunPod
from builder.errors import DeployError, ManifestError
from builder.ledger import Ledger
from builder.manifest import Manifest
from builder.registry import RegistryClient


@dataclass(frozen=True)
class DeployOptions:
    timeout: float = 900
    poll: float = 10
    endpoint_type: str = "auto"  # auto | lb | queue
    production: bool = False  # the target serves production (or it is listed in deploy.production_targets)
    force: bool = False
    reason: str | None = None
    keep_templates: int = 3


def _manifest(manifests_dir: Path, name: str) -> tuple[Manifest, str] | None:
    from builder.manifest import display_path, load_manifest

    path = manifests_dir / f"{name}.yaml"
    if not path.exists():
        return None
    try:
        return load_manifest(path), display_path(path)
    except ManifestError:
        return None


def _go(runpod: RunPod, client: RegistryClient, ledger: Ledger, manifests_dir: Path, name: str,
        version: str | None, image: str, target: Target, options: DeployOptions, say: Say) -> DeployResult:
    digest = digest_of(image) or ""
    release = Release(name, version, digest, str(target), options.production, tuple(runpod.target_gpus(target)))
    forced = enforce(problems(client, ledger, release, _manifest(manifests_dir, name)), options.force, options.reason)
    if forced:
        say(f"release gates overridden (--force): {forced}")
    plan = Plan(target, name, version, image, options.timeout, options.poll, options.endpoint_type,
                keep_templates=options.keep_templates, forced_reason=forced)
    return deploy(runpod, ledger, plan, say)


def deploy_version(runpod: RunPod, client: RegistryClient, ledger: Ledger, manifests_dir: Path, name: str,
                   version: str | None, target: Target, options: DeployOptions, say: Say) -> DeployResult:
    """NAME:VERSION (default: what production holds) to target, by digest."""
    from builder.promote import version_of

    reference = version or "production"
    image = client.image(name, reference)
    if image is None:
        raise DeployError(f"{client.ref.repository(name)}:{reference} is not in the registry"
                          + ("" if version else ": promote a version to production, or name one"))
    version = version or version_of(client, name, image.digest)
    ref = f"{client.ref.repository(name)}@{image.digest}"
    return _go(runpod, client, ledger, manifests_dir, name, version, ref, target, options, say)


def roll_back(runpod: RunPod, client: RegistryClient, ledger: Ledger, manifests_dir: Path, name: str,
              to_version: str | None, target: Target, options: DeployOptions, say: Say) -> DeployResult:
    """The last known-good version (the newest production promotion older than what runs now), or to_version."""
    current = runpod.current_image(target)
    image, version = rollback_image(client, name, digest_of(current), to_version)
    say(f"{target} runs {current}; rolling back to {image} ({version})")
    return _go(runpod, client, ledger, manifests_dir, name, version, image, target, options, say)
