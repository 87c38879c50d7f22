"""Stages and the records a fresh CI runner needs, kept in the registry itself.

The registry is the durable truth (DESIGN.md), so every fact a promotion or a rollback relies on
is a tag in the model's repository, readable by any registry tool, with no ledger needed:

- `VERSION`                      the image, immutable (builder never moves a version tag);
- `sha256-HEX.smoke`             the smoke result of image HEX, a small JSON OCI artifact pushed
                                 right after the image (the cosign-style `sha256-HEX.sig` naming);
- `staging`, `production`        the image currently in each stage (moving tags);
- `production-20261126T043000123456Z`  one immutable tag per promotion: the stage's history, from
                                 which rollback picks the last known-good version.

Labels cannot carry a stage (they are part of the image and would change its digest), and OCI
annotations on a separate manifest need the referrers API, which registries such as
Distribution 2.8 do not offer; tags work on every registry and survive any runner.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass

from builder.errors import InputError, RegistryError
from builder.ledger import Ledger
from builder.manifest import Manifest
from builder.registry import RegistryClient, smoke_tag

STAGES = ("staging", "production")
_HISTORY = re.compile(r"^(staging|production)-(\d{8}T\d{12}Z)$")
_TIME = "%Y%m%dT%H%M%S%fZ"


def is_version_tag(tag: str) -> bool:
    return tag not in STAGES and not _HISTORY.match(tag) and not tag.endswith(".smoke")


def actor() -> str | None:
    return os.environ.get("GITHUB_ACTOR") or os.environ.get("USER")


def smoke_passed(client: RegistryClient, ledger: Ledger, name: str, digest: str) -> bool:
    """A passed smoke for this digest, from the registry (any runner) or this host's ledger."""
    document = client.get_document(name, smoke_tag(digest))
    return bool(document and document.get("passed")) or ledger.passed_smoke(digest)


@dataclass(frozen=True)
class StageEntry:
    stage: str
    at: dt.datetime
    tag: str
    digest: str


def stage_history(client: RegistryClient, name: str, stage: str = "production") -> list[StageEntry]:
    """Every promotion to stage, newest first. One HEAD per history tag (the digest is all it
    needs): on Docker Hub a manifest GET counts against the pull rate limit, a HEAD does not."""
    entries = []
    for tag in client.tags(name):
        match = _HISTORY.match(tag)
        if match and match.group(1) == stage:
            digest = client.manifest_digest(name, tag)
            if digest is not None:
                at = dt.datetime.strptime(match.group(2), _TIME).replace(tzinfo=dt.timezone.utc)
                entries.append(StageEntry(stage, at, tag, digest))
    return sorted(entries, key=lambda e: e.at, reverse=True)


def labels_of(client: RegistryClient, name: str, digest: str) -> dict[str, str]:
    config = client.config(name, digest) or {}
    return dict((config.get("config") or {}).get("Labels") or {})


def version_of(client: RegistryClient, name: str, digest: str) -> str | None:
    return labels_of(client, name, digest).get("io.builder.manifest.version")


def check_image(labels: dict[str, str], reference: str) -> None:
    """Only verified images move past experimental: an image from an experimental or unlocked
    manifest may hold files whose bytes were never checked."""
    if labels.get("io.builder.profile") == "experimental" or labels.get("io.builder.locked") == "false":
        raise InputError(
            f"{reference} was built from an experimental or unlocked manifest (its files were not all verified): "
            f"lock the manifest, build a new version and promote that"
        )


def check_licence(manifest: Manifest, origin: str, stage: str, image_commercial: str | None = None) -> None:
    """Production needs a recorded approval; a non-commercial licence (by the manifest, or by the
    image's own label, whichever is stricter) needs it to say why."""
    if stage != "production":
        return
    licence = manifest.license
    commercial = licence.commercial_use and image_commercial != "false"
    if licence.approval is None:
        raise InputError(
            f"{origin}: promoting to production needs the licence approval recorded in license.approval "
            f"(approved_by, approved_on, reference); {licence.name} has none"
        )
    if not commercial and not licence.approval.note:
        raise InputError(
            f"{origin}: {licence.name} does not allow commercial use: license.approval.note must say why this "
            f"production use is allowed (for example, the commercial licence bought and its reference)"
        )


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    digest: str
    stage: str
    history_tag: str


def promote(client: RegistryClient, ledger: Ledger, manifest: Manifest, origin: str, version: str, stage: str,
            now: dt.datetime | None = None) -> Promotion:
    if stage not in STAGES:
        raise InputError(f"--to {stage}: expected one of {', '.join(STAGES)}")
    name = manifest.name
    repository = client.ref.repository(name)
    image = client.image(name, version)
    if image is None:
        raise RegistryError(f"{repository}:{version} is not in the registry: build and push it first")
    if not smoke_passed(client, ledger, name, image.digest):
        raise InputError(
            f"no passed smoke test is recorded for {repository}:{version} ({image.digest}) in the registry or the "
            f"ledger: build it with `python -m builder build {name}`"
        )
    labels = labels_of(client, name, image.digest)
    check_image(labels, f"{repository}:{version}")
    check_licence(manifest, origin, stage, labels.get("io.builder.license.commercial"))
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime(_TIME)
    history_tag = f"{stage}-{stamp}"
    client.tag(name, image.digest, history_tag)  # the record first: a moved stage tag always has its history
    client.tag(name, image.digest, stage)
    ledger.record_stage(name, version, image.digest, stage, actor())
    return Promotion(name, version, image.digest, stage, history_tag)
