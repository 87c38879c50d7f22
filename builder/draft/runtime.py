"""The runtime of a draft: copied from the most similar manifest already in the project.

A draft is built with the packages this project pins and tests (server code and loaders are
written against them), so its runtime block is not invented: it is the one of the manifest
closest to the draft. Closest means, in order: a base image that exists outside this machine
(`builder-local/` images are made by `make env` for the CPU tests), the same class or loader
function, the same task, the same profile; ties go to the first name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.errors import ManifestError
from builder.manifest import Manifest, Runtime, load_manifest

LOCAL_ONLY = "builder-local/"


@dataclass(frozen=True)
class SimilarRuntime:
    runtime: Runtime
    manifest: str  # the manifest's name
    why: str


def similar_runtime(manifests: list[Path], profile: str, target: str, task: str) -> SimilarRuntime | None:
    """The runtime of the project's manifest most like a draft of `profile` loading `target` for `task`."""
    candidates: list[tuple[tuple[bool, bool, bool, bool], str, Manifest]] = []
    for path in manifests:
        try:
            manifest = load_manifest(path)
        except ManifestError:
            continue  # a broken manifest is its own command's problem, not a template
        entry = manifest.entrypoint
        key = (not manifest.runtime.base_image.startswith(LOCAL_ONLY), target in (entry.class_name, entry.function),
               manifest.task == task, manifest.profile == profile)
        candidates.append((key, manifest.name, manifest))
    if not candidates:
        return None
    key, _, best = sorted(candidates, key=lambda c: (tuple(not k for k in c[0]), c[1]))[0]
    alike = [what for what, same in zip(("", f"{target}", f"task {task}", f"profile {profile}"), key) if same and what]
    why = f"the same {', '.join(alike)}" if alike else "no manifest alike: the nearest one"
    return SimilarRuntime(best.runtime, best.name, why)
