"""What the Hub's answers say about a model: its layout, task, profile, loader class and dtype.

Each decision carries the reason the draft's comment gives. What cannot be decided from the
repository is still given a valid value, so the draft validates and locks, and is listed in
`todo`: the command then exits 3 and the manifest says, at each such line, what to do.
The server's loaders are the reference (server/loaders.py): diffusers pipelines for
text-to-image, transformers causal LMs (text-generation) and encoders (feature-extraction);
anything else is custom-local, a loader function someone writes in server/custom/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from builder.draft.files import Layout
from builder.draft.hub import RepoFacts
from builder.errors import InputError

STANDARD_PROFILES = ("hf-diffusers-standard", "hf-transformers-standard")
# The Hub's pipeline tags -> the server's tasks (server/schemas.py REQUEST_OF_TASK).
TASK_OF_TAG = {
    "text-to-image": "text-to-image",
    "text-generation": "text-generation",
    "feature-extraction": "feature-extraction",
    "sentence-similarity": "feature-extraction",
    "text-to-speech": "text-to-speech",
    "text-to-audio": "text-to-speech",
}
_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class Choice:
    value: Any
    why: str


@dataclass(frozen=True)
class Model:
    layout: Layout
    components: tuple[str, ...]  # the folders model_index.json names (diffusers)
    task: Choice
    profile: Choice
    loader: str  # diffusers, transformers or custom
    target: Choice  # class_name (diffusers, transformers) or function (custom)
    library_profile: str  # the standard profile of its library, to find a similar manifest by
    todo: tuple[str, ...] = field(default=())


def layout_of(facts: RepoFacts) -> Layout:
    index = facts.config("model_index.json")
    if index and isinstance(index.get("_class_name"), str):
        return "diffusers"
    config = facts.config("config.json")
    if config and (config.get("architectures") or config.get("model_type")):
        return "transformers"
    return "other"


def components_of(facts: RepoFacts) -> tuple[str, ...]:
    """The folders a diffusers pipeline loads: model_index.json's entries that name a class."""
    index = facts.config("model_index.json") or {}
    return tuple(key for key, value in index.items()
                 if not key.startswith("_") and isinstance(value, list) and len(value) == 2 and all(value))


def _custom_code(facts: RepoFacts, layout: Layout) -> str | None:
    """Why the repository needs its own code to load (None: the libraries' classes load it)."""
    code = sorted(p for p in facts.files if p.endswith(".py"))
    config = facts.config("config.json") or {}
    if layout == "transformers" and config.get("auto_map"):
        return (f"config.json's auto_map loads the repository's own code ({', '.join(code) or 'remote code'}): "
                f"the transformers loader does not run remote code (trust_remote_code)")
    index = facts.config("model_index.json") or {}
    if layout == "diffusers" and not isinstance(index.get("_class_name"), str):
        return "model_index.json names a custom pipeline: the diffusers loader does not run remote code"
    if code:
        return f"the repository ships its own code ({', '.join(code[:3])}{', ...' if len(code) > 3 else ''})"
    return None


def _task(facts: RepoFacts, layout: Layout, asked: str | None, todo: list[str]) -> Choice:
    if asked:
        return Choice(asked, "as --task asked")
    tag = facts.pipeline_tag
    if tag in TASK_OF_TAG:
        return Choice(TASK_OF_TAG[tag], f"the Hub's pipeline tag is {tag}")
    architectures = (facts.config("config.json") or {}).get("architectures") or []
    guess = ("text-to-image" if layout != "transformers"
             else "text-generation" if any(a.endswith("ForCausalLM") for a in architectures) else "feature-extraction")
    if tag:
        todo.append(f"task: the Hub's pipeline tag {tag} is no task the server serves ({', '.join(sorted(set(TASK_OF_TAG.values())))}); "
                    f"{guess} is a placeholder")
    else:
        todo.append(f"task: the Hub gives no pipeline tag; {guess} is a guess: check it, or draft again with --task")
    return Choice(guess, f"a guess (TODO): {'no' if not tag else 'unsupported'} pipeline tag")


def _standard(facts: RepoFacts, layout: Layout, task: str, custom: str | None) -> tuple[tuple[str, str, Choice] | None, str]:
    """(profile, loader, class) when a standard loader serves it, else None; and why not."""
    if custom:
        return None, custom
    if layout == "diffusers":
        class_name = (facts.config("model_index.json") or {})["_class_name"]
        if task != "text-to-image":
            return None, f"the server's diffusers loader serves text-to-image, not {task}"
        return ("hf-diffusers-standard", "diffusers", Choice(class_name, "model_index.json's _class_name")), ""
    if layout == "transformers":
        architectures = (facts.config("config.json") or {}).get("architectures") or []
        named = ", ".join(architectures) or "none"
        if task == "text-generation":
            if not any(a.endswith("ForCausalLM") for a in architectures):
                return None, f"config.json's architectures ({named}) is no causal language model: AutoModelForCausalLM would not load it"
            return ("hf-transformers-standard", "transformers",
                    Choice("AutoModelForCausalLM", f"config.json's architectures ({named}) is a causal language model")), ""
        if task == "feature-extraction":
            return ("hf-transformers-standard", "transformers",
                    Choice("AutoModel", f"an encoder ({named}): the server mean-pools its last hidden state")), ""
        return None, f"the server's transformers loader serves text-generation and feature-extraction, not {task}"
    return None, "neither a diffusers pipeline (model_index.json) nor a transformers model (config.json with architectures)"


def _module(name: str) -> str:
    module = re.sub(r"[^a-z0-9_]", "_", name)
    return module if module[0].isalpha() else f"model_{module}"


def decide(facts: RepoFacts, name: str, task: str | None, profile: str | None) -> Model:
    """The model's layout, task, profile and entrypoint; InputError when --profile cannot fit."""
    layout = layout_of(facts)
    todo: list[str] = []
    chosen_task = _task(facts, layout, task, todo)
    custom = _custom_code(facts, layout)
    standard, blocker = _standard(facts, layout, chosen_task.value, custom)
    library_profile = {"diffusers": "hf-diffusers-standard", "transformers": "hf-transformers-standard"}.get(layout, "custom-local")
    if profile in STANDARD_PROFILES and (standard is None or standard[0] != profile):
        fits = standard[0] if standard else "custom-local"
        raise InputError(f"--profile {profile} cannot serve {facts.repo_id}: "
                         f"{blocker or f'it is a {fits} model'}; use --profile {fits} (or leave --profile out)")
    if standard is not None and profile != "custom-local":
        name_of_profile, loader, target = standard
        why = "the server's standard loader serves it" if profile is None else f"as --profile asked ({name_of_profile} would serve it)"
        return Model(layout, components_of(facts), chosen_task, Choice(profile or name_of_profile, why), loader, target,
                     library_profile, tuple(todo))
    module = _module(name)
    reason = blocker if profile != "custom-local" else "as --profile asked"
    todo.append(f"entrypoint.function: write load(spec, model_dir, device) in server/custom/{module}.py "
                f"(see server/custom/xtts.py): {reason}")
    function = Choice(f"server.custom.{module}:load", "TODO: a loader to write (see the TODO list at the top)")
    return Model(layout, components_of(facts), chosen_task,
                 Choice(profile or "custom-local", "no standard loader serves it" if profile is None else "as --profile asked"),
                 "custom", function, library_profile, tuple(todo))


def dtype_of(facts: RepoFacts, components: tuple[str, ...], variants: tuple[str, ...]) -> Choice:
    """The serving dtype: a half-precision variant the repository publishes, else its configs' dtype."""
    for variant in ("bf16", "fp16"):
        if variant in variants:
            return Choice(_DTYPES[variant], f"the repository publishes {variant} variant weights for inference "
                                            f"(the CPU falls back to float32)")
    for path in ["config.json", *(f"{c}/config.json" for c in components)]:
        config = facts.config(path) or {}
        value = config.get("torch_dtype") or config.get("dtype")
        if isinstance(value, str) and value in _DTYPES:
            return Choice(_DTYPES[value], f"{path} says {value}")
    return Choice("float32", "no dtype in the configs: full precision")
