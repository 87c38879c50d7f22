"""The draft as YAML text a reviewer reads: every choice followed by the reason for it.

Assembled line by line rather than dumped, so that each comment sits where it explains; values
are written by PyYAML's emitter (quoting, escaping) and the whole text is validated by the
manifest's one loader before anything is written.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import yaml

from builder.draft.decide import Choice, Model
from builder.draft.files import FilePlan
from builder.draft.hub import RepoFacts
from builder.draft.licences import Licence
from builder.draft.runtime import SimilarRuntime
from builder.draft.smoke import Smoke

_WIDTH = 100
_LISTED = 4  # paths named per reason a file was left out; the rest are counted


@dataclass(frozen=True)
class Draft:
    """Everything the manifest text says, decided."""

    name: str
    facts: RepoFacts
    model: Model
    files: FilePlan
    dtype: Choice
    licence: Licence | None
    runtime: SimilarRuntime
    smoke: Smoke

    @property
    def todo(self) -> tuple[str, ...]:
        licence = () if self.licence else ("license: the model card names no licence: find it, record name and commercial_use",)
        return self.model.todo + self.files.problems + licence + self.smoke.todo


def size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def scalar(value: Any) -> str:
    """One YAML value on one line, quoted where YAML needs it."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def flow(mapping: dict[str, Any]) -> str:
    """A mapping on one line, in flow style (where a comma inside a string must be quoted)."""
    return yaml.safe_dump(mapping, default_flow_style=True, width=10_000, sort_keys=False, allow_unicode=True).strip()


def _comment(text: str, indent: int, prefix: str = "") -> list[str]:
    pad = " " * indent
    return textwrap.wrap(text, _WIDTH, initial_indent=f"{pad}# {prefix}", break_on_hyphens=False,
                         subsequent_indent=f"{pad}#   " if prefix else f"{pad}# ")


def _header(draft: Draft) -> list[str]:
    facts = draft.facts
    lines = _comment(
        f"Drafted by `builder new` from {facts.repo_id}{'' if facts.repo_type == 'model' else f' ({facts.repo_type})'} "
        f"at {facts.asked} on mirror {facts.mirror}. "
        f"Review every line (each choice says why), then: python -m builder build {draft.name}", 0)
    if draft.todo:
        lines += _comment(f"TODO(builder new): {len(draft.todo)} part(s) the repository could not tell; this draft "
                          "does not serve until they are done:", 0)
        for item in draft.todo:
            lines += _comment(item, 0, "- ")
    return lines


def _licence(draft: Draft) -> list[str]:
    card = draft.facts.card
    said = ", ".join(f"{k}: {card[k]}" for k in ("license", "license_name", "license_link") if card.get(k))
    lic = draft.licence
    if lic is None:
        return ["license:", "  # TODO: the model card names no licence.",
                f"  name: {scalar('unknown: the model card names none')}", "  commercial_use: false"]
    lines = ["license:"] + _comment(f"From the model card ({said}): {lic.note}. No approval recorded: promotion to "
                                    "production needs one here (approval:).", 2)
    lines.append(f"  name: {scalar(lic.name)}")
    if lic.spdx:
        lines.append(f"  spdx: {scalar(lic.spdx)}")
    return lines + [f"  commercial_use: {scalar(lic.commercial_use)}"]


def _left_out(draft: Draft) -> list[str]:
    files, plan = draft.facts.files, draft.files
    if not plan.left_out:
        return ["    # Nothing left out: every file of the repository is needed."]
    by_reason: dict[str, list[str]] = defaultdict(list)
    for path, why in plan.left_out:
        by_reason[why].append(path)
    lines = [f"    # Left out: {len(plan.left_out)} files, {size(plan.left_bytes(files))}:"]
    for why, paths in by_reason.items():
        named = ", ".join(paths[:_LISTED]) + (f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else "")
        lines += _comment(f"{named} ({size(sum(files[p].size for p in paths))}): {why}", 4, "- ")
    return lines


def _source(draft: Draft) -> list[str]:
    facts, plan = draft.facts, draft.files
    revision_note = "the commit the draft was made from" if facts.asked == facts.commit else f"{facts.asked} when drafted"
    lines = ["sources:", f"  - repo_id: {scalar(facts.repo_id)}"]
    if facts.repo_type != "model":
        lines.append(f"    repo_type: {facts.repo_type}")
    lines.append(f"    revision: {scalar(facts.commit)}  # {revision_note}")
    if facts.gated:
        lines += _comment(f"Gated: builds need HF_TOKEN of an account that accepted the licence at {facts.page}", 4)
        lines.append("    gated: true")
    what = {"diffusers": "model_index.json and the components it names",
            "transformers": "the files transformers' from_pretrained reads at the root",
            "other": "the model's files"}[draft.model.layout]
    lines += _comment(f"Fetched: {what}, {len(plan.kept)} files, {size(plan.kept_bytes(facts.files))}; "
                      "`builder lock` pinned them below.", 4)
    lines += _left_out(draft)
    lines.append("    include:")
    lines += [f"      - {scalar(p.pattern)}  # {p.why}" for p in plan.include]
    if plan.exclude:
        lines.append("    exclude:")
        lines += [f"      - {scalar(p.pattern)}  # {p.why} (see above)" for p in plan.exclude]
    return lines


def _entrypoint(draft: Draft) -> list[str]:
    model = draft.model
    key = "function" if model.loader == "custom" else "class_name"
    return ["entrypoint:", f"  loader: {model.loader}", f"  {key}: {scalar(model.target.value)}  # {model.target.why}",
            f"  dtype: {draft.dtype.value}  # {draft.dtype.why}"]


def _runtime(draft: Draft) -> list[str]:
    similar = draft.runtime
    runtime = similar.runtime
    extra = "; add the packages the loader you write needs" if draft.model.loader == "custom" else ""
    lines = ["runtime:"] + _comment(f"Copied from manifests/{similar.manifest}.yaml ({similar.why}), so the draft "
                                    f"builds with the packages this project pins and tests{extra}.", 2)
    lines += [f"  base_image: {scalar(runtime.base_image)}", f"  python: {scalar(runtime.python)}"]
    for key in ("packages", "system_packages"):
        values = getattr(runtime, key)
        if values:
            lines.append(f"  {key}:")
            lines += [f"    - {scalar(v)}" for v in values]
    if runtime.large_file_bytes != type(runtime).model_fields["large_file_bytes"].default:
        lines.append(f"  large_file_bytes: {runtime.large_file_bytes}")
    return lines


def _smoke(draft: Draft) -> list[str]:
    smoke = draft.smoke
    lines = ["smoke_test:"] + _comment("The smallest request that runs every component once: a gate on loading "
                                       "and output shape, not on quality.", 2)
    lines.append(f"  inputs: {flow(smoke.inputs)}")
    if smoke.files:
        lines.append(f"  files: {flow(smoke.files)}")
    lines += [f"  max_seconds: {smoke.max_seconds}", f"  load_timeout_seconds: {smoke.load_timeout_seconds}"]
    for note in smoke.notes:
        lines += _comment(note, 2)
    return lines + [f"  expect: {flow(smoke.expect)}"]


def _serving(draft: Draft) -> list[str]:
    weights = size(draft.files.kept_bytes(draft.facts.files))
    return [""] + _comment(
        f"How it is served (as_built.md 8d). Memory: auto decides at load from the GPU's free memory and each "
        f"component's size ({weights} of files here). Add request defaults and bounds from the model card, and "
        "min_gpu_memory_gb once measured.", 0) + ["serving:", "  memory: {offload: auto}"]


def manifest_text(draft: Draft) -> str:
    model = draft.model
    library = model.loader if model.loader != "custom" else "custom loader"
    description = f"{draft.facts.repo_id} {model.task.value}, {library} {str(model.target.value).split(':')[0]}, {draft.dtype.value}"
    lines = _header(draft) + [
        f"name: {scalar(draft.name)}",
        'version: "1.0.0"  # the image tag: a new tag for every change that should be published',
        f"profile: {model.profile.value}  # {model.profile.why}",
        f"task: {model.task.value}  # {model.task.why}",
        f"description: {scalar(description)}",
    ]
    for section in (_licence, _source, _entrypoint, _runtime, _smoke, _serving):
        lines += section(draft)
    return "\n".join(lines) + "\n"
