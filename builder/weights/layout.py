"""Where each weights file goes in the image, and which layer carries it.

    /opt/weights/sha256/HEX           a large file (at least runtime.large_file_bytes), alone in
                                      its own layer, named by its content
    /opt/models/NAME/...              one layer: every small file, plus a relative symlink per
                                      large file, so loaders see the repository's layout

The plan holds only what decides the weights' bytes (a version bump or a code change leaves it
as it is). Unpinned files (experimental manifests) always go into the small layer: their
content, and so a layer of their own, is known only once fetched.
"""

from __future__ import annotations

import posixpath
from dataclasses import asdict, dataclass
from typing import Any
from pathlib import PurePosixPath

from builder.fetch import PlannedFile
from builder.manifest import Manifest

MODELS_ROOT = PurePosixPath("/opt/models")
BLOB_DIR = PurePosixPath("/opt/weights/sha256")
SMALL = "small"


@dataclass(frozen=True)
class PlannedLayer:
    name: str  # "small" or "sha256-<hex>"
    size: int  # bytes of file content it carries
    files: tuple[str, ...]  # destinations under the model directory


@dataclass(frozen=True)
class WeightsPlan:
    model: str
    model_dir: PurePosixPath
    files: tuple[PlannedFile, ...]
    layers: tuple[PlannedLayer, ...]  # the large files' layers, largest first, then the small layer

    def blob_path(self, sha256: str) -> PurePosixPath:
        return BLOB_DIR / sha256

    def in_model(self, dest: str) -> PurePosixPath:
        return self.model_dir / dest

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "model_dir": str(self.model_dir), "files": [asdict(f) for f in self.files]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "WeightsPlan":
        files = tuple(PlannedFile(**entry) for entry in data["files"])
        return cls(data["model"], PurePosixPath(data["model_dir"]), files, _layers(files))

    def link_target(self, dest: str, sha256: str) -> str:
        """The relative symlink from a file's place in the model directory to its blob."""
        return posixpath.relpath(str(self.blob_path(sha256)), str(self.in_model(dest).parent))


def model_dir(manifest: Manifest) -> PurePosixPath:
    return MODELS_ROOT / manifest.name


def weights_plan(manifest: Manifest) -> WeightsPlan:
    threshold = manifest.runtime.large_file_bytes
    files = []
    for source in manifest.sources:
        for artifact in source.artifacts:
            large = artifact.locked and artifact.size is not None and artifact.size >= threshold
            files.append(PlannedFile(source.repo_id, source.repo_type, source.revision, artifact.path,
                                     source.destination(artifact), artifact.sha256, artifact.size,
                                     f"sha256-{artifact.sha256}" if large else SMALL))
    return WeightsPlan(manifest.name, model_dir(manifest), tuple(files), _layers(tuple(files)))


def _layers(files: tuple[PlannedFile, ...]) -> tuple[PlannedLayer, ...]:
    blobs: dict[str, PlannedLayer] = {}
    small: list[str] = []
    small_size = 0
    for item in files:
        if item.layer != SMALL:
            previous = blobs.get(item.layer)
            blobs[item.layer] = PlannedLayer(item.layer, item.size or 0, (previous.files if previous else ()) + (item.dest,))
        else:
            small.append(item.dest)
            small_size += item.size or 0
    # Largest first: pushed first, which gives the best progress estimate; the order is fixed by
    # the manifest, so the layers' chain (what a pull reuses) stays the same between versions.
    layers = sorted(blobs.values(), key=lambda layer: (-layer.size, layer.name))
    layers.append(PlannedLayer(SMALL, small_size, tuple(small)))
    return tuple(layers)
