"""The model's description as the server needs it, read from the image's manifest.json.

The builder writes that file from its validated manifest (builder/render.py); the server reads
only the fields below and depends on nothing of the builder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ArtifactSpec:
    dest: str
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    task: str
    profile: str
    loader: str
    class_name: str | None
    function: str | None
    dtype: str
    artifacts: tuple[ArtifactSpec, ...]
    sources: tuple[dict[str, Any], ...]
    smoke: dict[str, Any]
    manifest_digest: str
    options: dict[str, Any] = field(default_factory=dict)  # the custom loader's entrypoint.options
    # Request defaults and bounds, unsupported fields, memory policy, body limit (builder/manifest.py
    # Serving); images built before the section existed have none: every default applies.
    serving: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> "ModelSpec":
        artifacts = []
        for source in doc["sources"]:
            target = source.get("target") or ""
            for artifact in source["artifacts"]:
                dest = f"{target}/{artifact['path']}" if target else artifact["path"]
                artifacts.append(ArtifactSpec(dest, artifact.get("size"), artifact.get("sha256")))
        entry = doc["entrypoint"]
        return cls(
            name=doc["name"],
            version=doc["version"],
            task=doc["task"],
            profile=doc["profile"],
            loader=entry["loader"],
            class_name=entry.get("class_name"),
            function=entry.get("function"),
            dtype=entry.get("dtype", "float32"),
            artifacts=tuple(artifacts),
            sources=tuple({"repo_id": s["repo_id"], "revision": s["revision"]} for s in doc["sources"]),
            smoke=doc["smoke_test"],
            manifest_digest=doc.get("manifest_digest", ""),
            options=dict(entry.get("options") or {}),
            serving=dict(doc.get("serving") or {}),
        )

    @classmethod
    def load(cls, path: Path) -> "ModelSpec":
        return cls.from_document(json.loads(path.read_text(encoding="utf-8")))
