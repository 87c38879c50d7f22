"""`builder outdated [NAME...]`: which manifests' tracked branches or tags moved upstream, and what
changed. Nothing is written: `builder lock NAME` takes the new commit (the scheduled workflow
.github/workflows/outdated.yml does that, bumps the minor version and opens a pull request).

For each source with a `ref`, the approved mirrors are asked, in the order a build tries them,
for the ref's current commit (builder/draft/hub.py's reader: each mirror probed, the first that
answers asked from then on). When it is not the pinned revision:
- the files the manifest takes (its artifacts, and what its include patterns match less its
  exclude patterns) are compared between the pinned commit and the new one as the Hub lists
  them: an LFS file by its sha256 and size, a file kept in plain git by its git blob id and
  size (the Hub gives no sha256 for those; `lock` downloads and hashes them);
- the licence the model card names is compared between the two commits, and the repository's
  gating now with the manifest's `gated`.
A pinned commit the Hub no longer has (a force-push) is compared with the manifest's own pins
instead, which carry the sha256 of every file.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from builder.draft.hub import HubFile, HubReader
from builder.errors import BuilderError, InputError
from builder.fetch import FetchConfig
from builder.manifest import Manifest, Source, display_path, load_manifest


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # added | removed | changed
    before: dict[str, Any] | None  # {"size", "sha256"} or {"size", "blob_id"}; None when added
    after: dict[str, Any] | None  # None when removed


@dataclass
class SourceUpdate:
    index: int
    repo_id: str
    ref: str
    pinned: str
    current: str
    files: list[FileChange] = field(default_factory=list)
    licence: tuple[str | None, str | None] | None = None  # (at the pinned commit, now) when it changed
    gated: tuple[bool, bool] | None = None  # (the manifest's, the Hub's now) when they differ
    note: str | None = None

    @property
    def moved(self) -> bool:
        return self.current != self.pinned


@dataclass
class ManifestUpdate:
    name: str
    version: str
    path: str
    status: str  # moved | current | untracked | error
    sources: list[SourceUpdate] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = markdown(self) if self.status == "moved" else None
        return data


# -- comparing ---------------------------------------------------------------------------------
def _wanted(source: Source, files: dict[str, Any]) -> dict[str, Any]:
    """The files the manifest takes from this listing: its artifacts, and what include matches."""
    listed = {a.path for a in source.artifacts}
    return {path: entry for path, entry in files.items()
            if path in listed or (any(fnmatch.fnmatchcase(path, p) for p in source.include)
                                  and not any(fnmatch.fnmatchcase(path, p) for p in source.exclude))}


def _identity(entry: HubFile) -> dict[str, Any]:
    return {"size": entry.size, "sha256": entry.sha256} if entry.sha256 else {"size": entry.size, "blob_id": entry.blob_id}


def _differs(before: dict[str, Any], after: dict[str, Any]) -> bool:
    if before["size"] != after["size"]:
        return True
    for key in ("sha256", "blob_id"):
        if before.get(key) and after.get(key):
            return before[key] != after[key]
    return False  # one LFS, one plain, same size: the Hub gives nothing to compare them by


def compare_files(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[FileChange]:
    changes = [FileChange(p, "added", None, after[p]) for p in sorted(after.keys() - before.keys())]
    changes += [FileChange(p, "removed", before[p], None) for p in sorted(before.keys() - after.keys())]
    changes += [FileChange(p, "changed", before[p], after[p]) for p in sorted(before.keys() & after.keys())
                if _differs(before[p], after[p])]
    return sorted(changes, key=lambda c: c.path)


def _licence(card: dict[str, Any]) -> str | None:
    value = card.get("license")
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or None
    return str(value) if value else None


def _card(info: Any) -> dict[str, Any]:
    card = getattr(info, "card_data", None)
    if card is None:
        return {}
    return card.to_dict() if hasattr(card, "to_dict") else dict(card)


def check_source(manifest: Manifest, index: int, config: FetchConfig, token: str | None) -> SourceUpdate:
    source = manifest.sources[index]
    reader = HubReader(config, token, source.repo_id, source.repo_type)
    info = reader.info(source.ref)
    update = SourceUpdate(index, source.repo_id, source.ref, source.revision, info.sha)
    gated = bool(getattr(info, "gated", False))
    if gated != source.gated:
        update.gated = (source.gated, gated)
    if not update.moved:
        return update
    after = {path: _identity(entry) for path, entry in _wanted(source, reader.tree(info.sha)).items()}
    try:
        old_info = reader.info(source.revision)
        before = {path: _identity(entry) for path, entry in _wanted(source, reader.tree(source.revision)).items()}
        old_licence = _licence(_card(old_info))
    except InputError:  # the Hub no longer has the pinned commit: the manifest's pins say what it was
        update.note = (f"{source.revision[:12]} is no longer on the Hub: compared with the manifest's pins; a file kept "
                       "in plain git whose size did not change cannot be told apart (`builder lock` hashes it)")
        before = {a.path: {"size": a.size, "sha256": a.sha256} for a in source.artifacts}
        after = {path: ({"size": entry["size"], "sha256": before[path]["sha256"]}
                        if path in before and "blob_id" in entry and entry["size"] == before[path]["size"] else entry)
                 for path, entry in after.items()}  # a plain git file of the same size: only `lock` can tell
        old_licence = None
    new_licence = _licence(_card(info))
    if old_licence != new_licence and (old_licence is not None or update.note is None):
        update.licence = (old_licence, new_licence)
    update.files = compare_files(before, after)
    return update


def check_manifest(path: Path, config: FetchConfig, token: str | None) -> ManifestUpdate:
    origin = display_path(path)
    try:
        manifest = load_manifest(path)
    except BuilderError as exc:
        return ManifestUpdate(path.stem, "?", origin, "error", error=str(exc))
    result = ManifestUpdate(manifest.name, manifest.version, origin, "untracked")
    tracked = [i for i, s in enumerate(manifest.sources) if s.ref and s.provider == "huggingface"]
    try:
        result.sources = [check_source(manifest, i, config, token) for i in tracked]
    except BuilderError as exc:
        result.status, result.error = "error", str(exc)
        return result
    if result.sources:
        result.status = "moved" if any(s.moved for s in result.sources) else "current"
    return result


def check_manifests(paths: list[Path], config: FetchConfig, token: str | None,
                    log: Callable[[str], None] = lambda line: None) -> list[ManifestUpdate]:
    results = []
    for path in paths:
        log(f"asking the Hub about {display_path(path)}")
        results.append(check_manifest(path, config, token))
    return results


# -- telling -----------------------------------------------------------------------------------
def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, step in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= step:
            return f"{n / step:.1f} {unit}"
    return f"{n} B"


def _what(identity: dict[str, Any] | None) -> str:
    if identity is None:
        return "-"
    if identity.get("sha256"):
        return f"{_size(identity['size'])}, sha256 {identity['sha256'][:12]}"
    return f"{_size(identity['size'])}, git blob {str(identity.get('blob_id'))[:12]}"


def source_lines(update: SourceUpdate) -> list[str]:
    lines = [f"sources[{update.index}] {update.repo_id} {update.ref}: "
             + (f"{update.pinned[:12]} -> {update.current[:12]}" if update.moved else f"still {update.pinned[:12]}")]
    if update.note:
        lines.append(f"  ({update.note})")
    for change in update.files:
        detail = {"added": _what(change.after), "removed": _what(change.before),
                  "changed": f"{_what(change.before)} -> {_what(change.after)}"}[change.change]
        lines.append(f"  {change.change} {change.path}: {detail}")
    if update.moved and not update.files:
        lines.append("  no file the manifest takes changed")
    if update.licence:
        lines.append(f"  licence on the model card: {update.licence[0] or 'none'} -> {update.licence[1] or 'none'}")
    if update.gated:
        lines.append(f"  gating: the manifest says {'gated' if update.gated[0] else 'public'}, the Hub now "
                     f"{'gated' if update.gated[1] else 'public'}")
    return lines


def text_lines(result: ManifestUpdate) -> list[str]:
    head = f"{result.status} {result.name} {result.version} ({result.path})"
    if result.status == "error":
        return [f"{head}: {result.error}"]
    if result.status == "untracked":
        return [f"{head}: no source follows a branch or tag (add `ref: main` to a source to track it)"]
    lines = [f"{head}:"] + [f"  {line}" for s in result.sources for line in source_lines(s)]
    if result.status == "moved":
        lines.append(f"  next: python -m builder lock {result.name} && python -m builder bump {result.name} --part minor")
    return lines


def markdown(result: ManifestUpdate) -> str:
    """The pull request's body: what moved upstream, file by file, and what the request does."""
    out = [f"`builder outdated` found that **{result.name}** ({result.path}, version {result.version}) moved upstream.", ""]
    for s in result.sources:
        out.append(f"### sources[{s.index}] `{s.repo_id}` ({s.ref})")
        out.append(f"- commit: `{s.pinned}` -> `{s.current}`" if s.moved else f"- commit: `{s.pinned}` (unchanged)")
        if s.note:
            out.append(f"- {s.note}")
        if s.licence:
            out.append(f"- **licence on the model card changed**: `{s.licence[0]}` -> `{s.licence[1]}`: check the "
                       "manifest's `license` and its approval before merging")
        if s.gated:
            out.append(f"- **gating changed**: the manifest says {'gated' if s.gated[0] else 'public'}, the Hub now "
                       f"{'gated' if s.gated[1] else 'public'}: set `gated` in the manifest (and HF_TOKEN in CI)")
        if s.files:
            out += ["", "| file | change | before | after |", "|---|---|---|---|"]
            out += [f"| `{c.path}` | {c.change} | {_what(c.before)} | {_what(c.after)} |" for c in s.files]
        elif s.moved:
            out.append("- no file the manifest takes changed")
        out.append("")
    out.append(f"This pull request re-locks the manifest (`python -m builder lock {result.name}`) and bumps its minor "
               "version (`python -m builder bump --part minor`). The image is built and smoke-tested when it merges.")
    return "\n".join(out) + "\n"
