"""`builder new NAME --from ORG/REPO[@REVISION]`: a manifest drafted from what the Hub says.

    Hub (HfApi over the approved mirrors): commit, files, card, model_index.json, config.json
      -> decide.py  layout, task, profile, loader class, dtype      files.py  what to fetch, why not the rest
      -> licences.py, smoke.py, runtime.py (the most similar manifest's runtime)
      -> text.py    YAML with a reason beside each choice -> parse_manifest (must validate)
      -> builder lock (the same lock_manifest) in a temporary folder -> load_manifest
      -> manifests/NAME.yaml, created only now and never over an existing file

What the repository cannot tell gets a valid placeholder marked TODO, so the draft still
validates and locks; `todo` lists them and the command exits 3. Refusals (a bad name, a taken
name, a repository or revision that is not there, a gated one without access) are one line,
exit 2, before anything is written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from builder.draft.decide import decide, dtype_of
from builder.draft.files import plan_files
from builder.draft.hub import read_repo
from builder.draft.licences import licence_from_card
from builder.draft.runtime import similar_runtime
from builder.draft.smoke import smoke_for
from builder.draft.text import Draft, manifest_text, size
from builder.errors import BuilderError, InputError, ManifestError
from builder.fetch import FetchConfig
from builder.lock import lock_manifest
from builder.manifest import Manifest, Source, display_path, load_manifest, parse_manifest
from builder.project import Project

__all__ = ["NewRequest", "NewResult", "draft_manifest", "parse_source"]


@dataclass(frozen=True)
class NewRequest:
    name: str
    source: str  # ORG/REPO[@REVISION]
    repo_type: str = "model"
    task: str | None = None
    profile: str | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class NewResult:
    path: Path  # where the manifest was (or, with dry_run, would be) written
    text: str  # the locked manifest
    todo: tuple[str, ...]  # what needs work (empty: the draft should build as it is)
    written: bool
    summary: str


def _check(model: type[Any], field: str, value: str, what: str) -> str:
    info = model.model_fields[field]
    try:
        return TypeAdapter(Annotated[info.annotation, *info.metadata]).validate_python(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        reason = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        raise InputError(f"{what} {value!r}: {reason}") from None


def parse_source(value: str) -> tuple[str, str]:
    """ORG/REPO[@REVISION] -> (repo id, revision; main when none is given)."""
    repo_id, _, revision = value.partition("@")
    _check(Source, "repo_id", repo_id, "--from")
    if revision:
        _check(Source, "revision", revision, "--from revision")
    return repo_id, revision or "main"


def _destination(project: Project, name: str) -> Path:
    _check(Manifest, "name", name, "NAME")
    path = project.manifests_dir / f"{name}.yaml"
    if path.exists():
        raise InputError(f"{display_path(path)} exists: choose another NAME, or edit that manifest "
                         f"(`python -m builder lock {name}` re-pins it)")
    return path


def draft_manifest(request: NewRequest, project: Project, config: FetchConfig, token: str | None,
                   log: Callable[[str], None]) -> NewResult:
    path = _destination(project, request.name)
    origin = display_path(path)
    repo_id, revision = parse_source(request.source)
    log(f"asking the Hub about {repo_id}@{revision}")
    facts = read_repo(repo_id, request.repo_type, revision, config, token)
    model = decide(facts, request.name, request.task, request.profile)
    files = plan_files(model.layout, facts.files, model.components)
    weights = files.kept_bytes(facts.files)
    similar_profile = model.profile.value if model.loader != "custom" else model.library_profile
    runtime = similar_runtime(project.all_manifests(), similar_profile, str(model.target.value), model.task.value)
    if runtime is None:
        raise ManifestError(f"no valid manifest in {display_path(project.manifests_dir)} to copy a runtime from: "
                            "add one (see manifests/ in the builder repository) and draft again")
    draft = Draft(request.name, facts, model, files, dtype_of(facts, model.components, files.variants),
                  licence_from_card(facts.card), runtime,
                  smoke_for(model.task.value, facts.config("config.json") or {}, weights, project.server_dir))
    text = manifest_text(draft)
    try:
        parse_manifest(text, origin, expected_name=request.name)
    except ManifestError as exc:  # every value was chosen to validate: this is a bug in builder/draft
        raise BuilderError(f"the draft for {repo_id} does not validate ({exc}): a bug in builder/draft; "
                           "please report it with the repository id") from None
    with tempfile.TemporaryDirectory(prefix="builder-new-") as tmp:
        unlocked = Path(tmp) / path.name
        unlocked.write_text(text, encoding="utf-8")
        log(f"locking {len(files.kept)} files at {facts.commit[:12]}")
        lock_manifest(unlocked, origin, config, token, check=False, log=log)
        load_manifest(unlocked)
        locked = unlocked.read_text(encoding="utf-8")
    if not request.dry_run:
        with path.open("x", encoding="utf-8") as out:  # "x": never over a manifest that appeared meanwhile
            out.write(locked)
    target = str(model.target.value)
    summary = (f"{model.profile.value}, {model.loader} {target}, {draft.dtype.value}, {len(files.kept)} files "
               f"({size(weights)}) locked at {facts.commit[:12]}; left out {len(files.left_out)} files "
               f"({size(files.left_bytes(facts.files))})")
    return NewResult(path, locked, draft.todo, not request.dry_run, summary)
