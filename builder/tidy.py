"""`builder tidy`: free a build host's disk between builds, keeping what the next build needs.

A self-hosted GPU runner keeps every image it built and all of BuildKit's cache; each FLUX
version leaves tens of GB, and the disk fills. What goes, and what stays:
- model images under the registry (`REGISTRY/NAME:VERSION`): the newest `keep` versions of each
  model stay (MAJOR.MINOR.PATCH compared as numbers, other versions by when they were built),
  the older tags go; a tag an image still in use by a container holds stays;
- untagged (dangling) images go;
- BuildKit cache records of the types that only speed up a rebuild (`regular` layers,
  `source.local` build contexts, `source.git.checkout`) go once unused for `cache_hours`; cache
  mounts (`exec.cachemount`) never go: the weights cache (`builder-weights-v1`, section 4a) and
  pip's cache are mounts, and losing them means downloading every model again;
- images named as a manifest's base (`runtime.base_image`) stay, whatever their name.
Docker's build prune filters match `type` by equality only (moby's toBuildkitPruneInfo turns
`type=X` into `type==X`), so each prunable type is one call. What was freed is what the engine's
`system df` says before and after, plus what each prune reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRUNED_CACHE_TYPES = ("regular", "source.local", "source.git.checkout")
_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass
class TidyReport:
    removed: list[str] = field(default_factory=list)  # image tags removed
    kept: list[str] = field(default_factory=list)  # model image tags kept
    held: list[str] = field(default_factory=list)  # tags that would go but an image in use holds
    image_bytes: int = 0
    cache_bytes: int = 0

    @property
    def freed(self) -> int:
        return self.image_bytes + self.cache_bytes


def base_images(manifests_dir: Path) -> set[str]:
    """Every manifest's runtime.base_image, read leniently: a broken manifest must not stop the
    housekeeping (the build reports it)."""
    bases = set()
    for path in sorted(manifests_dir.glob("*.yaml")):
        try:
            base = (yaml.safe_load(path.read_text()) or {}).get("runtime", {}).get("base_image")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if isinstance(base, str):
            bases.add(base)
    return bases


def _order(tag: str, created: str) -> tuple:
    """Newest first when sorted descending: semantic versions by number, after them anything else by date."""
    match = _SEMVER.fullmatch(tag.rpartition(":")[2])
    return (1, tuple(int(part) for part in match.groups()), created) if match else (0, (), created)


def stale(tags: list[tuple[str, str]], keep: int) -> list[str]:
    """Of (REPOSITORY:TAG, created) pairs, the tags beyond the newest `keep` of each repository."""
    by_repository: dict[str, list[tuple[str, str]]] = {}
    for tag, created in tags:
        by_repository.setdefault(tag.rpartition(":")[0], []).append((tag, created))
    old = []
    for entries in by_repository.values():
        entries.sort(key=lambda entry: _order(*entry), reverse=True)
        old.extend(tag for tag, _ in entries[keep:])
    return sorted(old)


def _used_bytes(client: Any) -> tuple[int, int]:
    usage = client.df()
    cache = sum(int(record.get("Size") or 0) for record in usage.get("BuildCache") or [])
    return int(usage.get("LayersSize") or 0), cache


def model_tags(client: Any, registry: str, protected: set[str]) -> list[tuple[str, str]]:
    """(REGISTRY/NAME:TAG, created) of the model images under `registry`, bases left out."""
    prefix = registry.rstrip("/") + "/"
    found = []
    for image in client.images.list():
        for tag in image.tags:
            if tag.startswith(prefix) and tag not in protected:
                found.append((tag, str(image.attrs.get("Created") or "")))
    return found


def tidy(client: Any, registry: str, keep: int, protected: set[str], cache_hours: float) -> TidyReport:
    """Free what the next build does not need (`client`: a Docker SDK client)."""
    from docker.errors import APIError

    report = TidyReport()
    layers_before, _ = _used_bytes(client)
    tags = model_tags(client, registry, protected)
    old = set(stale(tags, keep))
    report.kept = sorted(tag for tag, _ in tags if tag not in old)
    for tag in sorted(old):
        try:
            client.images.remove(tag, noprune=False)
            report.removed.append(tag)
        except APIError:  # a container still uses it (409): it stays, said so
            report.held.append(tag)
    client.images.prune(filters={"dangling": True})
    for kind in PRUNED_CACHE_TYPES:
        answer = client.api.prune_builds(filters={"type": kind, "until": f"{int(cache_hours * 3600)}s"}, all=True)
        report.cache_bytes += int((answer or {}).get("SpaceReclaimed") or 0)
    layers_after, _ = _used_bytes(client)
    report.image_bytes = max(layers_before - layers_after, 0)
    return report
