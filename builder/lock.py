"""`builder lock NAME`: pin a manifest like a lock file, and `--check` that the pin still holds.

For each source: the revision (or `ref`, a branch or tag) is resolved to its 40-hex commit; the
wanted files (the listed artifacts plus whatever the include patterns match at that commit) get
sha256 and size from the Hub's metadata: the LFS oid is the sha256 of an LFS file, so those are
not downloaded; files kept in plain git have only a git blob id there, so they are downloaded
through the fetch engine and hashed. The manifest is rewritten with ruamel.yaml's round trip,
so comments, key order and quoting stay, and each added artifact is one flow-style line: a
lock shows up in a pull request as a short, readable diff.
"""

from __future__ import annotations

import fnmatch
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder import reach
from builder.errors import ConfigError, DownloadError, ManifestError, Unreachable
from builder.fetch import ContentCache, FetchConfig, FetchEngine, Mirror, PlannedFile
from builder.manifest import HEX40, Manifest, Source, load_manifest, parse_manifest


@dataclass(frozen=True)
class LockedFile:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class LockedSource:
    index: int
    commit: str
    ref: str | None
    files: tuple[LockedFile, ...]


@dataclass
class LockReport:
    changes: list[str] = field(default_factory=list)  # what a lock would change (empty: up to date)


def _refusal(exc: Exception, mirror: Mirror, token: str | None) -> str | None:
    """The Hub's answer as one phrase, or None for an exception that is not an answer (a bug)."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, GatedRepoError):
        hint = "no token was passed: set HF_TOKEN" if token is None else "the token passed has no access"
        return f"{mirror.name}: gated ({hint}; accept the licence on the model page)"
    if isinstance(exc, RevisionNotFoundError):
        return f"{mirror.name}: revision not found"
    if isinstance(exc, RepositoryNotFoundError):
        return f"{mirror.name}: repository not found (or private)"
    if isinstance(exc, (HfHubHTTPError, OSError)):
        return f"{mirror.name}: {' '.join(str(exc).split())[:160]}"
    return None


class _Hub:
    """The Hub's metadata through huggingface_hub, over the approved mirrors in order."""

    def __init__(self, config: FetchConfig, token: str | None) -> None:
        self.config = config
        self.token = token
        self._probed: dict[str, str | None] = {}  # mirror url -> why it cannot be connected to (None: it can)

    def _each_mirror(self, what: str, call: Callable[[Mirror], object]) -> object:
        failures = []
        unreached = []
        for mirror in self.config.mirrors:
            if mirror.url not in self._probed:
                self._probed[mirror.url] = reach.probe(mirror.url)
            if self._probed[mirror.url] is not None:
                unreached.append(f"{mirror.name} {mirror.display_url} ({self._probed[mirror.url]})")
                continue
            try:
                return call(mirror)
            except Exception as exc:  # noqa: BLE001 - sorted below: a failure to connect, or the Hub's answer
                reason = reach.connection_failure(exc)
                if reason is None:
                    failure = _refusal(exc, mirror, self.token)
                    if failure is None:
                        raise
                    failures.append(failure)
                else:
                    unreached.append(f"{mirror.name} {mirror.display_url} ({reason})")
        if not failures:
            raise Unreachable(f"{what}: cannot reach the Hub at {'; '.join(unreached)}: check {reach.HUB}")
        raise DownloadError(f"{what}: {'; '.join(failures + [f'{u}: unreachable' for u in unreached])}")

    def commit(self, source: Source, ref: str) -> str:
        from huggingface_hub import HfApi

        def call(mirror: Mirror) -> str:
            api = HfApi(endpoint=mirror.url, token=self.token or False)
            info = api.repo_info(source.repo_id, revision=ref, repo_type=source.repo_type)
            return info.sha

        return str(self._each_mirror(f"cannot resolve {source.repo_id}@{ref}", call))

    def tree(self, source: Source, commit: str) -> dict[str, object]:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        def call(mirror: Mirror) -> dict[str, object]:
            api = HfApi(endpoint=mirror.url, token=self.token or False)
            entries = api.list_repo_tree(source.repo_id, revision=commit, recursive=True, repo_type=source.repo_type)
            return {e.path: e for e in entries if isinstance(e, RepoFile)}

        return self._each_mirror(f"cannot list {source.repo_id}@{commit[:12]}", call)  # type: ignore[return-value]


def _wanted(source: Source, tree: dict[str, object], origin: str) -> list[str]:
    for pattern in source.include:
        if not any(fnmatch.fnmatchcase(path, pattern) for path in tree):
            raise ManifestError(f"{origin}: include pattern {pattern!r} matches no file in {source.repo_id}: fix or remove it")
    paths = [a.path for a in source.artifacts]
    for path in sorted(tree):
        if path in paths:
            continue
        if any(fnmatch.fnmatchcase(path, p) for p in source.include) and not any(
            fnmatch.fnmatchcase(path, p) for p in source.exclude
        ):
            paths.append(path)
    return paths


def resolve(manifest: Manifest, config: FetchConfig, token: str | None, log: Callable[[str], None]) -> list[LockedSource]:
    """What the manifest's sources are at the Hub now: commits, files, hashes and sizes."""
    hub = _Hub(config, token)
    locked: list[LockedSource] = []
    with tempfile.TemporaryDirectory(prefix="builder-lock-") as tmp:
        engine = FetchEngine(config, token, ContentCache(Path(tmp)), manifest.name, log=log)
        for index, source in enumerate(manifest.sources):
            ref = source.ref or (None if HEX40.fullmatch(source.revision) else source.revision)
            commit = hub.commit(source, ref) if ref else source.revision
            tree = hub.tree(source, commit)
            files = []
            for path in _wanted(source, tree, manifest.name):
                entry = tree.get(path)
                if entry is None:
                    raise ManifestError(f"{manifest.name}: {path} is not in {source.repo_id}@{commit[:12]}: fix the artifact's path")
                lfs = getattr(entry, "lfs", None)
                if lfs is not None:
                    files.append(LockedFile(path, lfs.sha256, lfs.size))
                    continue
                # Plain git file: the Hub knows only its git blob id, so hash the bytes ourselves.
                fetched = engine.fetch_one(PlannedFile(source.repo_id, source.repo_type, commit, path, path, None,
                                                       getattr(entry, "size", None), "small"))
                files.append(LockedFile(path, fetched.sha256, fetched.size))
            if not files:
                raise ManifestError(f"{manifest.name}: sources[{index}] matches no file in {source.repo_id}@{commit[:12]}")
            locked.append(LockedSource(index, commit, ref, tuple(files)))
    return locked


def compare(manifest: Manifest, locked: list[LockedSource]) -> list[str]:
    """Every way the manifest differs from what the Hub says now (empty: the lock holds)."""
    changes = []
    for result in locked:
        source = manifest.sources[result.index]
        where = f"sources[{result.index}] {source.repo_id}"
        if source.revision != result.commit:
            moved = f"{result.ref} is now {result.commit}" if result.ref else f"resolves to {result.commit}"
            changes.append(f"{where}: revision {source.revision} -> {result.commit} ({moved})")
        if result.ref and source.ref != result.ref:
            changes.append(f"{where}: ref -> {result.ref}")
        current = {a.path: a for a in source.artifacts}
        for file in result.files:
            artifact = current.get(file.path)
            if artifact is None:
                changes.append(f"{where}: new artifact {file.path} (matched by include)")
            elif (artifact.sha256, artifact.size) != (file.sha256, file.size):
                changes.append(f"{where}: {file.path}: sha256/size {artifact.sha256}/{artifact.size} -> {file.sha256}/{file.size}")
    return changes


def rewrite(text: str, locked: list[LockedSource]) -> str:
    """The manifest text with the lock applied; comments, order and quoting kept."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    data = yaml.load(text)
    for result in locked:
        source = data["sources"][result.index]
        source["revision"] = result.commit
        if result.ref and source.get("ref") != result.ref:
            keys = list(source.keys())
            source.insert(keys.index("revision") + 1, "ref", result.ref)
        if "artifacts" not in source:
            source["artifacts"] = CommentedSeq()
        artifacts = source["artifacts"]
        by_path = {a["path"]: a for a in artifacts}
        for file in result.files:
            entry = by_path.get(file.path)
            if entry is None:
                entry = CommentedMap()
                entry.fa.set_flow_style()
                entry["path"] = file.path
                artifacts.append(entry)
            entry["size"] = file.size
            entry["sha256"] = file.sha256
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def lock_manifest(path: Path, origin: str, config: FetchConfig, token: str | None, check: bool,
                  log: Callable[[str], None]) -> LockReport:
    manifest = load_manifest(path)
    if any(s.provider != "huggingface" for s in manifest.sources):
        raise ConfigError(f"{origin}: only huggingface sources can be locked")
    locked = resolve(manifest, config, token, log)
    report = LockReport(compare(manifest, locked))
    if check or not report.changes:
        return report
    text = rewrite(path.read_text(encoding="utf-8"), locked)
    relocked = parse_manifest(text, origin, expected_name=path.stem)  # never write an invalid manifest
    if not relocked.locked:
        raise ManifestError(f"{origin}: still unlocked after locking: {', '.join(relocked.unlocked_items())}")
    path.write_text(text, encoding="utf-8")
    return report
