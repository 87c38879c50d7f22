"""Release gates: what may be deployed where.

Any target: only an image whose smoke test passed (recorded in the registry beside it, or in this
host's ledger) and that was built from a locked, non-experimental manifest (its labels say so).
A production target (declared by --production or by `deploy.production_targets` in the builder
configuration): only a version promoted to production, and the manifest's licence approval must
hold. `--force --reason "..."` overrides; the reason is printed and kept in the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.errors import BuilderError, InputError
from builder.ledger import Ledger
from builder.manifest import Manifest
from builder.promote import check_image, check_licence, labels_of, smoke_passed, stage_history
from builder.registry import RegistryClient


@dataclass(frozen=True)
class Release:
    """What is about to be deployed, and where."""

    name: str
    version: str | None
    digest: str
    target: str
    production: bool
    gpus: tuple[tuple[str, float | None], ...] = ()  # the GPU types the target may run on, memory in GB


def problems(client: RegistryClient, ledger: Ledger, release: Release,
             manifest: tuple[Manifest, str] | None) -> list[str]:
    """Every gate this release fails (empty: it may go)."""
    found: list[str] = []
    reference = f"{client.ref.repository(release.name)}:{release.version or '?'} ({release.digest[:19]})"
    if not smoke_passed(client, ledger, release.name, release.digest):
        found.append(f"no passed smoke test is recorded for {reference}: build it with "
                     f"`python -m builder build {release.name}`")
    labels = labels_of(client, release.name, release.digest)
    try:
        check_image(labels, reference)
    except InputError as exc:
        found.append(str(exc))
    found.extend(_gpu_problems(labels, release, reference))
    if not release.production:
        return found
    if not any(entry.digest == release.digest for entry in stage_history(client, release.name, "production")):
        found.append(f"{release.target} serves production and {reference} was never promoted to production: "
                     f"`python -m builder promote {release.name} {release.version or 'VERSION'} --to production` first")
    if manifest is None:
        found.append(f"{release.target} serves production and there is no manifest for {release.name} here to check "
                     f"its licence approval: run from the project that holds manifests/{release.name}.yaml")
    else:
        try:
            check_licence(manifest[0], manifest[1], "production", labels.get("io.builder.license.commercial"))
        except BuilderError as exc:
            found.append(str(exc))
    return found


def _gpu_problems(labels: dict[str, str], release: Release, reference: str) -> list[str]:
    """A target whose GPUs have less memory than the image's serving policy needs."""
    try:
        needed = float(labels.get("io.builder.min_gpu_memory_gb") or 0)
    except ValueError:
        return []
    if not needed or not release.gpus:
        return []
    small = [f"{name} ({gb:g} GB)" for name, gb in release.gpus if gb is not None and gb < needed]
    unknown = [name for name, gb in release.gpus if gb is None]
    problems = []
    if small:
        problems.append(f"{release.target} may run on {', '.join(small)} and {reference} needs at least {needed:g} GB "
                        f"(serving.memory.min_gpu_memory_gb): choose GPU types with more memory for the target")
    if unknown:
        problems.append(f"{release.target} may run on GPU types whose memory RunPod did not list ({', '.join(unknown)}) "
                        f"and {reference} needs at least {needed:g} GB")
    return problems


def enforce(found: list[str], force: bool, reason: str | None) -> str | None:
    """Refuse on the first problem unless forced; the reason to record when a gate was overridden."""
    if force and not (reason or "").strip():
        raise InputError("--force needs --reason \"...\": say why the release gates may be overridden (it is recorded)")
    if not found:
        return None
    if not force:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise InputError(f"{found[0]}{more}; to deploy anyway: --force --reason \"why\"")
    return f"{reason.strip()} [overrode: {'; '.join(found)}]"
