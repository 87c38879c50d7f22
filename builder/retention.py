"""`builder prune`: delete old version tags through the registry API, never what matters.

Kept, whatever their age: the newest `keep` versions; every version that was ever promoted to
production (so the last known-good is always there to roll back to); whatever staging points
at. The rest, older than the cut-off, is deleted with its smoke record. Deleting is by digest
(the registry API has no tag delete), so a version whose digest a kept tag shares is kept too.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from builder.promote import STAGES, is_version_tag, stage_history
from builder.registry import RegistryClient, smoke_tag


@dataclass(frozen=True)
class Version:
    tag: str
    digest: str
    created: dt.datetime | None


@dataclass
class PrunePlan:
    delete: list[Version]
    keep: list[tuple[Version, str]]  # with the reason


_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?")


def parse_created(text: str | None) -> dt.datetime | None:
    """An image config's `created` (RFC 3339, often with nanoseconds) as an aware datetime."""
    match = _ISO.fullmatch(text or "")
    if not match:
        return None
    fraction = (match.group(2) or "0")[:6].ljust(6, "0")
    zone = match.group(3) or "Z"
    return dt.datetime.fromisoformat(f"{match.group(1)}.{fraction}{'+00:00' if zone == 'Z' else zone}")


def _created(client: RegistryClient, name: str, digest: str) -> dt.datetime | None:
    return parse_created((client.config(name, digest) or {}).get("created"))


def plan_prune(client: RegistryClient, name: str, keep: int, older_than_days: float,
               now: dt.datetime | None = None) -> PrunePlan:
    now = now or dt.datetime.now(dt.timezone.utc)
    versions = []
    for tag in client.tags(name):
        if not is_version_tag(tag):
            continue
        image = client.image(name, tag)
        if image is not None:
            versions.append(Version(tag, image.digest, _created(client, name, image.digest)))
    protected: dict[str, str] = {}
    for entry in stage_history(client, name, "production"):
        protected.setdefault(entry.digest, "was in production")
    for stage in STAGES:
        image = client.image(name, stage)
        if image is not None:
            protected.setdefault(image.digest, f"is in {stage}")
    newest = sorted(versions, key=lambda v: v.created or now, reverse=True)
    recent = {v.digest for v in newest[:keep]}
    cutoff = now - dt.timedelta(days=older_than_days)
    plan = PrunePlan([], [])
    for version in newest:
        if version.digest in protected:
            plan.keep.append((version, protected[version.digest]))
        elif version.digest in recent:
            plan.keep.append((version, f"among the newest {keep}"))
        elif version.created is None or version.created > cutoff:
            plan.keep.append((version, f"younger than {older_than_days:g} days"))
        else:
            plan.delete.append(version)
    kept_digests = {v.digest for v, _ in plan.keep}
    moved = [v for v in plan.delete if v.digest in kept_digests]  # another kept tag shares the digest
    for version in moved:
        plan.delete.remove(version)
        plan.keep.append((version, "shares its image with a kept version"))
    return plan


def apply_prune(client: RegistryClient, name: str, plan: PrunePlan, keep: int, older_than_days: float) -> list[Version]:
    """Delete what the plan says, re-checked against the registry as it is now (a promotion made
    since the plan protects its version); return what was deleted."""
    still = {v.digest for v in plan_prune(client, name, keep, older_than_days).delete}
    deleted = []
    for version in plan.delete:
        if version.digest not in still:
            continue
        deleted.append(version)
        smoke = client.image(name, smoke_tag(version.digest))
        client.delete(name, version.digest)
        if smoke is not None:
            client.delete(name, smoke.digest)
    return deleted
