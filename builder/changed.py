"""`builder changed --base REF`: which manifests a change affects (the CI build matrix).

A change to the builder's own code, the templates, the server that goes into every image, or
the project's configuration affects every manifest; otherwise only the manifests whose files
changed (and still exist) are affected.
"""

from __future__ import annotations

import fnmatch
import subprocess
from pathlib import Path

from builder.errors import InputError

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
    present = sorted(p.stem for p in (root / "manifests").glob("*.yaml")
                     if not any(fnmatch.fnmatchcase(p.stem, pattern) for pattern in exclude))
    files = changed_files(root, base, head)
    if files is None or any(f.startswith(EVERYTHING) or f in EVERYTHING_FILES for f in files):
        return present
    names = {Path(f).stem for f in files if f.startswith("manifests/") and f.endswith(".yaml")}
    return sorted(n for n in names if n in present)
