"""`builder changed`: which manifests to build (the CI build matrix).

- `--base REF` (pull requests): what a change affects. A change to the builder's own code, the
  templates, the server that goes into every image, or the project's configuration affects every
  manifest; otherwise only the manifests whose files changed (and still exist).
- `--unbuilt` (pushes to main): the manifests whose version has no image in the registry yet. A
  version tag is pushed only after the image's smoke passed, so it is the record of the last
  build that succeeded, per manifest. Diffing from the previous push instead (GitHub's
  `event.before`) loses a push whose run GitHub cancelled as a newer one queued in the same
  concurrency group: its manifests would never be built. The registry is asked by HEAD (on
  Docker Hub a HEAD is not counted as a pull).
"""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

from builder.errors import InputError, ManifestError

EVERYTHING = ("builder/", "templates/", "server/")
EVERYTHING_FILES = ("pyproject.toml", "manifests/manifest.schema.json")
NULL_SHA = "0" * 40


def changed_files(root: Path, base: str, head: str = "HEAD") -> list[str] | None:
    """Files changed between the merge base of base and head, and head; None: compare nothing (all)."""
    if not base or base == NULL_SHA:  # a new branch pushed: there is nothing to compare with
        return None
    result = subprocess.run(["git", "-C", str(root), "diff", "--name-only", "--no-renames", f"{base}...{head}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise InputError(f"--base {base}: git cannot compare it with {head} ({' '.join(result.stderr.split())[:160]}): "
                         "fetch the history (actions/checkout with fetch-depth: 0)")
    return [line for line in result.stdout.splitlines() if line]


def affected(root: Path, base: str, head: str = "HEAD", exclude: tuple[str, ...] = ()) -> list[str]:
    """Affected manifest names; `exclude` globs drop some (the demo and the stand-ins, whose repositories
    exist only on the loopback Hub)."""
    names_present = [p.stem for p in present(root, exclude)]
    files = changed_files(root, base, head)
    if files is None or any(f.startswith(EVERYTHING) or f in EVERYTHING_FILES for f in files):
        return names_present
    names = {Path(f).stem for f in files if f.startswith("manifests/") and f.endswith(".yaml")}
    return sorted(n for n in names if n in names_present)


def present(root: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    return sorted(p for p in (root / "manifests").glob("*.yaml")
                  if not any(fnmatch.fnmatchcase(p.stem, pattern) for pattern in exclude))


def unbuilt(root: Path, client, exclude: tuple[str, ...] = ()) -> list[str]:
    """Manifest names whose current version is not in the registry (`client`: a RegistryClient)."""
    from builder.manifest import load_manifest

    names = []
    for path in present(root, exclude):
        manifest = load_manifest(path)
        if manifest.name != path.stem:
            raise ManifestError(f"{path}: name {manifest.name!r} differs from the file name: rename one of them")
        if client.manifest_digest(manifest.name, manifest.version) is None:
            names.append(manifest.name)
    return names
