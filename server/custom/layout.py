"""Where a custom model's parts lie under the model directory: entrypoint.options name the
folders (each a source's target), with the defaults the production manifests use."""

from __future__ import annotations

from pathlib import Path

from server.errors import LoadError
from server.spec import ModelSpec


def part(spec: ModelSpec, model_dir: Path, option: str, default: str) -> Path:
    return model_dir / str(spec.options.get(option, default))


def require(model: str, *paths: Path) -> None:
    """Each file is there, or one line naming the first that is not and where to look."""
    for path in paths:
        if not path.is_file():
            raise LoadError(f"{model}: {path} is missing: check entrypoint.options against the sources' targets")
