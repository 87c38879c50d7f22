"""Where a project's manifests, templates and server code live.

The root is the directory holding manifests/, templates/ and server/: `--root`, else
$BUILDER_ROOT, else the current directory when it has a manifests/ folder, else the checkout
this package was installed from (an editable install).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.errors import ConfigError, ManifestError


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def manifests_dir(self) -> Path:
        return self.root / "manifests"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def server_dir(self) -> Path:
        return self.root / "server"

    @classmethod
    def locate(cls, root: str | Path | None = None) -> "Project":
        candidates = [root, os.environ.get("BUILDER_ROOT")]
        for candidate in candidates:
            if candidate:
                project = cls(Path(candidate).resolve())
                project.check()
                return project
        cwd = Path.cwd()
        if (cwd / "manifests").is_dir() and (cwd / "templates").is_dir():
            return cls(cwd)
        project = cls(Path(__file__).resolve().parent.parent)
        project.check()
        return project

    def check(self) -> None:
        missing = [d.name for d in (self.manifests_dir, self.templates_dir, self.server_dir) if not d.is_dir()]
        if missing:
            raise ConfigError(
                f"{self.root} is not a builder project (no {', '.join(missing)}/): run from the project's "
                f"checkout or pass --root"
            )

    def manifest_path(self, name_or_path: str) -> Path:
        """NAME means manifests/NAME.yaml; anything with a slash or a .yaml suffix is a path."""
        if "/" in name_or_path or name_or_path.endswith((".yaml", ".yml")):
            return Path(name_or_path)
        path = self.manifests_dir / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(sorted(p.stem for p in self.manifests_dir.glob("*.yaml"))) or "none"
            raise ManifestError(f"no manifest named {name_or_path!r} in {self.manifests_dir} (known: {known})")
        return path

    def all_manifests(self) -> list[Path]:
        return sorted(self.manifests_dir.glob("*.yaml"))

    def git_revision(self) -> str | None:
        """The project's commit, with -dirty when the work tree has changes (for the OCI label)."""
        try:
            head = subprocess.run(
                ["git", "-C", str(self.root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(self.root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, check=True,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
        return f"{head}-dirty" if dirty else head
