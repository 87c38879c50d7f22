"""Manifest versions across a change: `builder bump` and `builder bump --check`.

A version is an image tag, and tags are immutable once pushed. A change to builder/, templates/
or server/ changes every image (`builder changed`), so every affected manifest needs a new
version before the change reaches main, or the build job fails with "already exists with other
content". The policy: every manifest a change affects carries a version other than (and, for
MAJOR.MINOR.PATCH versions, newer than) its version at the merge base; a manifest new in the
change needs nothing. The check needs only git, so it runs on pull requests from forks too.

The bump edits the one top-level `version:` line in place, so the file's comments, quoting and
layout stay as they were, and the result must validate before it is written.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from builder.errors import InputError, ManifestError

PARTS = ("patch", "minor", "major")
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
# The top-level key only (column 0): nested `version:` keys (packages, sources) are left alone.
_VERSION_LINE = re.compile(r"""^version:(?P<gap>[ \t]*)(?P<quote>["']?)(?P<value>[A-Za-z0-9_][A-Za-z0-9_.-]*)(?P=quote)(?P<rest>[ \t]*(?:#[^\r\n]*)?)(?=\r?$)""",
                           re.MULTILINE)


@dataclass(frozen=True)
class VersionProblem:
    name: str
    version: str
    base_version: str

    def __str__(self) -> str:
        if self.version == self.base_version:
            return f"{self.name}: version {self.version} is the version at the base; the change makes a new image"
        return f"{self.name}: version {self.version} is older than {self.base_version} at the base"


@dataclass(frozen=True)
class Bumped:
    name: str
    old: str
    new: str


def next_version(version: str, part: str) -> str:
    """1.2.3 -> 1.2.4 (patch), 1.3.0 (minor), 2.0.0 (major)."""
    match = _SEMVER.fullmatch(version)
    if match is None:
        raise InputError(f"version {version!r} is not MAJOR.MINOR.PATCH: edit the manifest's `version:` by hand")
    major, minor, patch = (int(n) for n in match.groups())
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise InputError(f"--part {part!r}: expected one of {', '.join(PARTS)}")


def _is_newer(version: str, base: str) -> bool:
    """Different, and for two MAJOR.MINOR.PATCH versions also greater (a version moved back may
    name an image pushed long ago)."""
    if version == base:
        return False
    ours, theirs = _SEMVER.fullmatch(version), _SEMVER.fullmatch(base)
    if ours is None or theirs is None:
        return True
    return tuple(map(int, ours.groups())) > tuple(map(int, theirs.groups()))


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)


def base_version(root: Path, base: str, head: str, name: str) -> str | None:
    """The manifest's version at the merge base of base and head; None when it did not exist there."""
    merge_base = _git(root, "merge-base", base, head)
    if merge_base.returncode != 0:
        raise InputError(f"--base {base}: git finds no merge base with {head} "
                         f"({' '.join(merge_base.stderr.split())[:160]}): fetch the history (fetch-depth: 0)")
    shown = _git(root, "show", f"{merge_base.stdout.strip()}:manifests/{name}.yaml")
    return _version_of(shown.stdout) if shown.returncode == 0 else None  # None: new in this change


def _version_of(text: str) -> str | None:
    """The top-level version, or None where the YAML is broken (`validate` reports that)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return str(version) if version is not None else None


def _version_at(root: Path, head: str, name: str) -> str | None:
    if head == "HEAD":  # the work tree: what a bump just wrote counts before it is committed
        path = root / "manifests" / f"{name}.yaml"
        return _version_of(path.read_text(encoding="utf-8")) if path.exists() else None
    shown = _git(root, "show", f"{head}:manifests/{name}.yaml")
    return _version_of(shown.stdout) if shown.returncode == 0 else None


def stale_versions(root: Path, names: list[str], base: str, head: str = "HEAD") -> list[VersionProblem]:
    """The affected manifests whose version is not newer than at the base."""
    from builder.changed import NULL_SHA

    if not base or base == NULL_SHA:
        return []  # a branch's first push: nothing to compare with
    problems = []
    for name in names:
        before = base_version(root, base, head, name)
        now = _version_at(root, head, name)
        if before is not None and now is not None and not _is_newer(now, before):
            problems.append(VersionProblem(name, now, before))
    return problems


def stale_affected(root: Path, base: str, head: str = "HEAD", exclude: tuple[str, ...] = ()) -> list[VersionProblem]:
    """What `bump --check` reports and `bump --changed` fixes."""
    from builder.changed import affected

    return stale_versions(root, affected(root, base, head, exclude), base, head)


def bump_text(text: str, origin: str, part: str) -> tuple[str, str, str]:
    """(old version, new version, new text): only the top-level `version:` line changes."""
    lines = list(_VERSION_LINE.finditer(text))
    if len(lines) != 1:
        raise ManifestError(f"{origin}: expected one top-level `version:` line with a plain value, found {len(lines)}: "
                            "edit the version by hand")
    line = lines[0]
    old = line["value"]
    new = next_version(old, part)
    quote = line["quote"] or '"'  # a bare 1.0 would be a float to YAML: quote what was unquoted
    replaced = f"version:{line['gap']}{quote}{new}{quote}{line['rest']}"
    return old, new, text[: line.start()] + replaced + text[line.end():]


def bump_manifest(path: Path, part: str) -> Bumped:
    """Bump one manifest file in place; the new text must validate, with the new version, first."""
    from builder.manifest import display_path, parse_manifest

    origin = display_path(path)
    try:
        text = path.read_bytes().decode("utf-8")  # as it is: CRLF line ends stay CRLF
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{origin}: cannot read: {exc}") from None
    parse_manifest(text, origin, expected_name=path.stem)  # bump only what is valid now
    old, new, bumped = bump_text(text, origin, part)
    manifest = parse_manifest(bumped, origin, expected_name=path.stem)
    if manifest.version != new:
        raise ManifestError(f"{origin}: after the edit the version reads {manifest.version!r}, not {new!r}: "
                            "edit the version by hand")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(bumped)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Bumped(path.stem, old, new)
