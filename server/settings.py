"""Server settings, read from the environment the image sets (and RunPod's PORT, PORT_HEALTH)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SERVE_MODES = ("http", "queue")


class SettingsError(ValueError):
    """An environment variable holds a value the server cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    manifest_path: Path
    model_dir: Path
    host: str = "0.0.0.0"  # noqa: S104 - a container's server listens on all its interfaces
    port: int = 8000
    port_health: int | None = None  # RunPod load-balancing endpoints may probe /ping on a port of its own
    serve_mode: str = "http"  # http: the HTTP server (pods, load-balancing endpoints); queue: RunPod's job queue
    ready_file: Path = Path("/tmp/builder-ready")  # noqa: S108 - the queue worker's marker for the HEALTHCHECK
    device: str = "auto"  # auto | cpu | cuda
    max_queue: int = 8  # requests waiting beyond the one running; more get 429
    request_timeout: float = 300.0
    max_body_bytes: int | None = None  # overrides the manifest's serving.max_body_bytes and the task's default

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        mode = environ.get("BUILDER_SERVE_MODE", "") or "http"
        if mode not in SERVE_MODES:
            raise SettingsError(f"BUILDER_SERVE_MODE={mode!r}: expected one of {', '.join(SERVE_MODES)} "
                                "(http serves pods and load-balancing endpoints, queue serves queue-based endpoints)")
        health = environ.get("PORT_HEALTH", "")
        return cls(
            manifest_path=Path(environ.get("BUILDER_MANIFEST", "/app/manifest.json")),
            model_dir=Path(environ.get("BUILDER_MODEL_DIR", "/opt/models/model")),
            host=environ.get("HOST", "0.0.0.0"),  # noqa: S104
            port=_number(environ, "PORT", "8000", int),
            port_health=_number(environ, "PORT_HEALTH", health, int) if health else None,
            serve_mode=mode,
            ready_file=Path(environ.get("BUILDER_READY_FILE", "/tmp/builder-ready")),  # noqa: S108
            device=environ.get("BUILDER_DEVICE", "auto"),
            max_queue=_number(environ, "BUILDER_MAX_QUEUE", "8", int),
            request_timeout=_number(environ, "BUILDER_REQUEST_TIMEOUT", "300", float),
            max_body_bytes=_positive(environ, "BUILDER_MAX_BODY_BYTES"),
        )


def _number(environ: Mapping[str, str], name: str, default: str, kind: type) -> int | float:
    text = environ.get(name, default)
    try:
        return kind(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r}: expected {'an integer' if kind is int else 'a number'}") from None


def _positive(environ: Mapping[str, str], name: str) -> int | None:
    if not environ.get(name):
        return None
    value = _number(environ, name, "", int)
    if value < 1:
        raise SettingsError(f"{name}={environ[name]!r}: expected a positive number of bytes")
    return int(value)
