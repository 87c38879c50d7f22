"""Server settings, read from the environment the image sets (and RunPod's PORT)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    manifest_path: Path
    model_dir: Path
    host: str = "0.0.0.0"  # noqa: S104 - a container's server listens on all its interfaces
    port: int = 8000
    device: str = "auto"  # auto | cpu | cuda
    max_queue: int = 8  # requests waiting beyond the one running; more get 429
    request_timeout: float = 300.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        return cls(
            manifest_path=Path(environ.get("BUILDER_MANIFEST", "/app/manifest.json")),
            model_dir=Path(environ.get("BUILDER_MODEL_DIR", "/opt/models/model")),
            host=environ.get("HOST", "0.0.0.0"),  # noqa: S104
            port=int(environ.get("PORT", "8000")),
            device=environ.get("BUILDER_DEVICE", "auto"),
            max_queue=int(environ.get("BUILDER_MAX_QUEUE", "8")),
            request_timeout=float(environ.get("BUILDER_REQUEST_TIMEOUT", "300")),
        )
