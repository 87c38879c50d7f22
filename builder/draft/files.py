"""Which files of a repository a model image needs, and why each other one is left out.

Hub repositories hold more than a loader reads, and the extras are the usual reason a download
is ten times too big or fails: diffusers folders beside the original single-file checkpoints of
the same weights, fp16 variants beside full precision, `.bin` pickles beside `.safetensors`,
ONNX/TF/Flax exports, sample images. The rules follow what `from_pretrained` reads:

- diffusers: model_index.json and the folders it names (a component set to null is not
  loaded); nothing else at the root but the card and the licence;
- transformers: the files at the root; subfolders (onnx/, original/...) are other exports;
- in each weights folder one set of weights: safetensors over `.bin`, the non-variant files
  (the manifest has no `variant` and the server's loaders pass none: diffusers and transformers
  read `model.fp16.safetensors` only when asked for variant="fp16");
- custom code: every file but documentation, media and the duplicates above.

The choice becomes the source's include and exclude patterns, each with its reason; `builder
lock` expands them into pinned artifacts.
"""

from __future__ import annotations

import fnmatch
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from builder.draft.hub import HubFile

Layout = Literal["diffusers", "transformers", "other"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".onnx", ".onnx_data", ".h5", ".msgpack", ".ot",
                   ".gguf", ".tflite", ".mlmodel", ".pb", ".npz")
# The weight files from_pretrained reads, by name: stem, optional shard, optional variant, format.
_WEIGHTS = re.compile(r"(?P<stem>diffusion_pytorch_model|model|pytorch_model)(?P<shard>-\d{5}-of-\d{5})?"
                      r"(?:\.(?P<variant>[A-Za-z0-9_]+))?\.(?P<ext>safetensors|bin)")
_INDEX = re.compile(r"(?P<stem>diffusion_pytorch_model|model|pytorch_model)\.(?P<ext>safetensors|bin)\.index"
                    r"(?:\.(?P<variant>[A-Za-z0-9_]+))?\.json")
_DOCS = (".md", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".mp4", ".webm", ".mp3", ".pdf", ".ipynb", ".svg")
_KEPT_DOCS = re.compile(r"(README|LICEN[CS]E)(\.[A-Za-z]+)?", re.I)

# Reasons, one phrase each: they become the comments on the exclude patterns.
WHY_BIN = "pickle (.bin) copy of the safetensors weights kept beside it: loading a pickle can run code"
WHY_OTHER_FORMAT = "another export of the weights (ONNX, TF, Flax, GGUF...) that the loader does not read"
WHY_SINGLE_FILE = ("original single-file checkpoint: the same weights as the component folders, for tools such as "
                   "ComfyUI; the pipeline loads the folders")
WHY_NOT_COMPONENT = "not a component model_index.json names: the pipeline does not load it"
WHY_NOT_ROOT = "a subfolder: transformers' from_pretrained reads the repository root"
WHY_DOCS = "documentation or media: not read by the loader"
WHY_ORIGINAL = "not a weights file from_pretrained reads (an original-format checkpoint of the same model)"


def why_variant(variant: str) -> str:
    return (f"{variant} variant of the same weights: the manifest cannot ask for a variant (no `variant` field, the "
            f"server's loader passes none), so the loader reads the full-precision files and casts them")


@dataclass(frozen=True)
class Pattern:
    pattern: str
    why: str


@dataclass(frozen=True)
class FilePlan:
    include: tuple[Pattern, ...]
    exclude: tuple[Pattern, ...]
    kept: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]  # (path, why) for every file not fetched
    variants: tuple[str, ...]  # the precision variants the repository publishes (fp16, bf16...)
    problems: tuple[str, ...]  # what the loader would fail on: the draft needs work

    def kept_bytes(self, files: dict[str, HubFile]) -> int:
        return sum(files[p].size for p in self.kept)

    def left_bytes(self, files: dict[str, HubFile]) -> int:
        return sum(files[p].size for p, _ in self.left_out)


def _folder(path: str) -> str:
    parent = str(PurePosixPath(path).parent)
    return "" if parent == "." else parent


def _is_doc(path: str) -> bool:
    name = PurePosixPath(path).name
    return name.lower().endswith(_DOCS) and not _KEPT_DOCS.fullmatch(name)


def _pick_weights(paths: list[str], folder: str, strict: bool) -> tuple[dict[str, str], set[str], str | None]:
    """One set of weights in one folder: ({dropped path: why}, the variants seen, a problem or None).
    strict: only the names from_pretrained reads are weights (not so for custom code's files)."""
    readable: dict[tuple[str, str | None], list[str]] = defaultdict(list)  # (ext, variant) -> files
    dropped: dict[str, str] = {}
    for path in paths:
        name = PurePosixPath(path).name
        match = _WEIGHTS.fullmatch(name) or _INDEX.fullmatch(name)
        if match:
            readable[(match["ext"], match["variant"])].append(path)
        elif strict and name.endswith(WEIGHT_SUFFIXES):
            dropped[path] = WHY_ORIGINAL if name.endswith((".safetensors", ".bin", ".pth", ".pt", ".ckpt")) else WHY_OTHER_FORMAT
    variants = {variant for _, variant in readable if variant}
    if not readable:
        return dropped, variants, None
    chosen_ext = "safetensors" if any(ext == "safetensors" and v is None for ext, v in readable) else (
        "bin" if ("bin", None) in readable else None)
    problem = None
    if chosen_ext is None:  # only variants: keep the best one, and say that it will not load as is
        chosen_variant = sorted(variants)[0]
        chosen_ext = "safetensors" if ("safetensors", chosen_variant) in readable else "bin"
        problem = (f"{folder or 'the root'} has only {chosen_variant} variant weights, which the loader does not read "
                   f"without variant support: convert them, or add `variant` to the manifest and the server's loader")
    else:
        chosen_variant = None
    for (ext, variant), group in readable.items():
        if (ext, variant) == (chosen_ext, chosen_variant):
            continue
        why = why_variant(variant) if variant and variant != chosen_variant else WHY_BIN
        for path in group:
            dropped[path] = why
    return dropped, variants, problem


def _leave_out(layout: Layout, files: dict[str, HubFile], components: list[str]) -> dict[str, str]:
    """Why each file outside the wanted folders, or of no use to the loader, is left out."""
    out: dict[str, str] = {}
    for path in files:
        folder = _folder(path)
        top = path.split("/", 1)[0]
        if _is_doc(path):
            out[path] = WHY_DOCS
        elif layout == "diffusers" and not folder:
            if path.endswith(WEIGHT_SUFFIXES):
                out[path] = WHY_SINGLE_FILE
            elif path != "model_index.json" and not _KEPT_DOCS.fullmatch(path):
                out[path] = WHY_NOT_COMPONENT
        elif layout == "diffusers" and top not in components:
            out[path] = WHY_NOT_COMPONENT
        elif layout == "transformers" and folder:
            out[path] = WHY_NOT_ROOT
    return out


def _globs(path: str) -> list[str]:
    """Patterns that could stand for a left-out file, widest first: `*.fp16.safetensors`,
    `unet/*.fp16.safetensors`, then the path itself."""
    name = PurePosixPath(path).name
    folder = _folder(path)
    match = _WEIGHTS.fullmatch(name) or _INDEX.fullmatch(name)
    if match:
        suffix = name[len(match["stem"]) + len(match.groupdict().get("shard") or ""):]
    elif name.endswith(WEIGHT_SUFFIXES):
        suffix = PurePosixPath(name).suffix
    else:
        return [path]
    return [f"*{suffix}"] + ([f"{folder}/*{suffix}"] if folder else []) + [path]


def _include(layout: Layout, kept: list[str], components: list[str]) -> list[Pattern]:
    patterns: list[Pattern] = []
    roots = sorted(p for p in kept if "/" not in p)
    for path in roots:
        patterns.append(Pattern(path, _why_root(path, layout)))
    if layout == "diffusers":
        for folder in components:
            if any(p.startswith(folder + "/") for p in kept):
                patterns.append(Pattern(f"{folder}/*", f"component {folder}"))
    else:
        for folder in sorted({p.split("/", 1)[0] for p in kept if "/" in p}):
            patterns.append(Pattern(f"{folder}/*", f"folder {folder}"))
    return _shard_series(patterns)


_ROOT_ROLES = (
    (re.compile(r"model_index\.json"), "the pipeline: which class loads which folder"),
    (re.compile(r"config\.json"), "the architecture"),
    (re.compile(r".*\.index\.json"), "which shard holds which tensor"),
    (re.compile(r"generation_config\.json"), "generation defaults"),
    (re.compile(r"(tokenizer.*|vocab.*|merges\.txt|spiece\.model|.*\.tiktoken|special_tokens_map\.json|added_tokens\.json)"),
     "tokenizer"),
    (re.compile(r".*\.jinja"), "chat template"),
    (re.compile(r"(preprocessor|processor|feature_extractor)_config\.json"), "input preprocessing"),
    (re.compile(r".*\.py"), "the repository's own code"),
    (re.compile(r".*\.(safetensors|bin)"), "weights"),
)


def _why_root(path: str, layout: Layout) -> str:
    if _KEPT_DOCS.fullmatch(path):
        return "the model card and licence travel with the weights"
    for pattern, role in _ROOT_ROLES:
        if pattern.fullmatch(path):
            return role
    return "read by the loader" if layout != "other" else "a file of the model"


def _shard_series(patterns: list[Pattern]) -> list[Pattern]:
    """`model-00001-of-00030.safetensors` ... as one `model-*-of-00030.safetensors`."""
    out: list[Pattern] = []
    seen: set[str] = set()
    for pattern in patterns:
        match = re.fullmatch(r"(.*)-\d{5}(-of-\d{5}\..*)", pattern.pattern)
        if match is None:
            out.append(pattern)
            continue
        series = f"{match[1]}-*{match[2]}"
        if series not in seen:
            seen.add(series)
            out.append(Pattern(series, "weights, in shards"))
    return out


def label(why: str) -> str:
    """A reason's first clause, for the comment beside a pattern (the whole reason is above it)."""
    return why.split(":", 1)[0]


def _exclude(include: list[Pattern], kept: set[str], dropped: dict[str, str], files: dict[str, HubFile]) -> list[Pattern]:
    """The fewest patterns that take the dropped files back out of what include matches: the
    variants first (`*.fp16.bin`), so that `*.bin` may then cover the rest."""
    matched = {p for p in files if any(fnmatch.fnmatchcase(p, i.pattern) for i in include)}
    todo = sorted((p for p in matched if p in dropped), key=lambda p: (-PurePosixPath(p).name.count("."), p))
    patterns: list[Pattern] = []
    covered: set[str] = set()
    for path in todo:
        if path in covered:
            continue
        for glob in _globs(path):
            hits = {p for p in matched if fnmatch.fnmatchcase(p, glob)}
            if hits & kept or any(h not in covered and dropped[h] != dropped[path] for h in hits):
                continue  # too wide: it would take out a kept file, or files left out for another reason
            patterns.append(Pattern(glob, label(dropped[path])))
            covered |= hits
            break
    return patterns


def plan_files(layout: Layout, files: dict[str, HubFile], components: list[str]) -> FilePlan:
    """The files to fetch for this layout, as include/exclude patterns with reasons."""
    dropped = _leave_out(layout, files, components)
    variants: set[str] = set()
    problems: list[str] = []
    by_folder: dict[str, list[str]] = defaultdict(list)
    for path in files:
        if path not in dropped:
            by_folder[_folder(path)].append(path)
    for folder, paths in sorted(by_folder.items()):
        out, seen, problem = _pick_weights(paths, folder, strict=layout != "other")
        dropped.update(out)
        variants |= seen
        if problem:
            problems.append(problem)
    kept = sorted(p for p in files if p not in dropped)
    problems += [f"model_index.json names {c}, but the repository has no {c}/ folder: the pipeline will not load"
                 for c in components if not any(p.startswith(c + "/") for p in kept)]
    include = _include(layout, kept, components)
    exclude = _exclude(include, set(kept), dropped, files)
    selected = sorted(p for p in files if any(fnmatch.fnmatchcase(p, i.pattern) for i in include)
                      and not any(fnmatch.fnmatchcase(p, e.pattern) for e in exclude))
    if selected != kept:  # the patterns must say exactly what was decided; a difference is a bug here
        raise RuntimeError(f"file patterns select {sorted(set(selected) ^ set(kept))[:5]} wrongly")
    return FilePlan(tuple(include), tuple(exclude), tuple(kept),
                    tuple(sorted((p, why) for p, why in dropped.items())), tuple(sorted(variants)), tuple(problems))
