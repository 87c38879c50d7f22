"""The manifest: one YAML file per model, the single source of truth for its image.

A strict, frozen pydantic model. Types carry the rules (a 40-hex revision, a 64-hex sha256,
relative paths that cannot climb out, versions that are valid image tags, exact package pins)
so that nothing unsafe reaches the renderer, and one loader turns every problem into a line
that names the file, the line and the field:

    manifests/flux.yaml:14: sources[0].artifacts[2].sha256: expected 64 lowercase hex characters

`manifests/manifest.schema.json` is generated from this model (`python -m builder schema --write`);
a test fails when the two drift.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import json
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from builder.errors import ManifestError

SCHEMA_ID = "https://builder.invalid/manifest.schema.json"

HEX40 = re.compile(r"[0-9a-f]{40}")
HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:\[[A-Za-z0-9._,-]+\])?==[A-Za-z0-9][A-Za-z0-9.+!_-]*")
_DEB = re.compile(r"[a-z0-9][a-z0-9+.-]+(?:=[A-Za-z0-9.+~:-]+)?")
_IMAGE = re.compile(
    r"[a-z0-9][a-z0-9.-]*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
_SPDX = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+-]*")


# -- value rules ----------------------------------------------------------------------------
def _single_line(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must be a single line without control characters")
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _matching(pattern: re.Pattern[str], what: str):
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"expected {what}, got {value!r}")
        return value

    return check


def _relative_path(value: str) -> str:
    """A path inside the model directory: relative, forward slashes, no way out."""
    if not value:
        raise ValueError("must not be empty")
    if "\\" in value:
        raise ValueError("use forward slashes: backslashes are not allowed in paths")
    if value.startswith("/"):
        raise ValueError("must be relative to the model directory, not absolute")
    parts = value.split("/")
    if ".." in parts:
        raise ValueError("must stay inside the model directory: '..' is not allowed")
    if any(part in ("", ".") for part in parts):
        raise ValueError("must not contain empty or '.' path segments")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must not contain control characters")
    return value


def _version(value: str) -> str:
    _matching(_TAG, "an image tag: letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-'")(value)
    if value == "latest":
        raise ValueError("'latest' is a moving tag; give an immutable version such as 1.0.0")
    return value


def _provider(value: Any) -> Any:
    if value == "replicate":
        raise ValueError(
            "replicate is not an allowed provider: extracting weights from Replicate's containers violates "
            "its terms of service; point the source at the model's original repository"
        )
    return value


SingleLine = Annotated[str, AfterValidator(_single_line)]
RelPath = Annotated[str, AfterValidator(_relative_path)]
Sha256 = Annotated[str, AfterValidator(_matching(HEX64, "64 lowercase hex characters"))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- sections -------------------------------------------------------------------------------
class Approval(_Strict):
    """Who allowed this model's licence for production use, and on what record."""

    approved_by: SingleLine = Field(description="Person or team that approved the licence for this use.")
    approved_on: dt.date = Field(description="Date of the approval (YYYY-MM-DD).")
    reference: SingleLine = Field(description="Where the approval is recorded: ticket, contract, e-mail id.")
    note: SingleLine | None = Field(default=None, description="Why the use is allowed, e.g. a commercial licence bought.")


class License(_Strict):
    """The model's licence as the model card states it, and whether it allows commercial use."""

    name: SingleLine = Field(description="The licence as named on the model card.")
    spdx: Annotated[str, AfterValidator(_matching(_SPDX, "an SPDX identifier such as Apache-2.0"))] | None = Field(
        default=None, description="SPDX identifier where one exists (Apache-2.0, MIT...); null for custom licences."
    )
    commercial_use: bool = Field(description="Whether the licence allows commercial use.")
    approval: Approval | None = Field(
        default=None, description="The approval record; promotion to production requires one."
    )


class Artifact(_Strict):
    """One file of a source, pinned by content."""

    path: RelPath = Field(description="Path of the file in the repository; also where it lands under the source's target.")
    sha256: Sha256 | None = Field(
        default=None, description="sha256 of the file's bytes (64 lowercase hex). null: unlocked, fill with `builder lock`."
    )
    size: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="Size in bytes. null: unlocked, fill with `builder lock`."
    )

    @property
    def locked(self) -> bool:
        return self.sha256 is not None and self.size is not None


class Source(_Strict):
    """A repository the model's files come from, at one pinned commit."""

    provider: Annotated[Literal["huggingface"], BeforeValidator(_provider)] = Field(
        default="huggingface", description="Where the files are hosted: a Hub-compatible endpoint."
    )
    repo_id: Annotated[str, AfterValidator(_matching(_REPO_ID, "a repository id such as black-forest-labs/FLUX.1-dev"))] = Field(
        description="Repository id on the Hub: namespace/name."
    )
    repo_type: Literal["model", "dataset", "space"] = Field(default="model", description="Kind of Hub repository.")
    revision: Annotated[str, AfterValidator(_matching(_REF, "a 40-hex commit id (or, before locking, a branch or tag)"))] = Field(
        description="The commit to fetch: 40 lowercase hex characters. A branch or tag is allowed only until `builder lock` resolves it."
    )
    ref: Annotated[str, AfterValidator(_matching(_REF, "a branch or tag name"))] | None = Field(
        default=None,
        description="Branch or tag that `builder lock` resolves into revision; `lock --check` fails when it has moved.",
    )
    include: tuple[Annotated[str, AfterValidator(_single_line)], ...] = Field(
        default=(), description="Glob patterns (fnmatch, on repository paths) of files `builder lock` adds as artifacts."
    )
    exclude: tuple[Annotated[str, AfterValidator(_single_line)], ...] = Field(
        default=(), description="Glob patterns of files the include patterns must not add."
    )
    target: Annotated[str, AfterValidator(lambda v: v if v == "" else _relative_path(v))] = Field(
        default="", description="Directory under the model directory where this source's files land; empty for the top."
    )
    gated: bool = Field(default=False, description="The repository requires accepting its licence and a token to download.")
    artifacts: tuple[Artifact, ...] = Field(
        default=(), description="The files to fetch from this source; `builder lock` adds those the include patterns match."
    )

    @model_validator(mode="after")
    def _some_files(self) -> "Source":
        if not self.artifacts and not self.include:
            raise ValueError("list artifacts, or include patterns for `builder lock` to expand")
        return self

    def unexpanded(self) -> list[str]:
        """Include patterns that no listed artifact matches: `builder lock` has not expanded them."""
        return [p for p in self.include if not any(fnmatch.fnmatchcase(a.path, p) for a in self.artifacts)]

    @property
    def locked(self) -> bool:
        return (bool(HEX40.fullmatch(self.revision)) and bool(self.artifacts)
                and all(a.locked for a in self.artifacts) and not self.unexpanded())

    def destination(self, artifact: Artifact) -> str:
        return str(PurePosixPath(self.target, artifact.path)) if self.target else artifact.path


Scalar = Union[bool, int, float, str, tuple[str, ...]]
_SCALAR_BRANCHES = {"bool", "int", "float", "str", "tuple[str, ...]"}


class Entrypoint(_Strict):
    """How the server loads the model."""

    loader: Literal["diffusers", "transformers", "custom"] = Field(description="Which loader the server uses.")
    class_name: Annotated[str, AfterValidator(_matching(_IDENT, "a Python class name"))] | None = Field(
        default=None, description="diffusers pipeline class or transformers Auto class, e.g. FluxPipeline."
    )
    function: Annotated[str, AfterValidator(_matching(_FUNCTION, "module.path:function"))] | None = Field(
        default=None, description="For the custom loader: module:function in server code that returns the model."
    )
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        default="float32", description="Weights dtype on the GPU; the CPU falls back to float32 for float16."
    )
    options: dict[Annotated[str, AfterValidator(_matching(_IDENT, "an option name (a Python identifier)"))], Scalar] = Field(
        default_factory=dict,
        description="For the custom loader: named settings it reads (component folders, face-analysis backend...).",
    )

    @model_validator(mode="after")
    def _loader_fields(self) -> "Entrypoint":
        if self.loader in ("diffusers", "transformers") and self.class_name is None:
            raise ValueError(f"loader {self.loader} needs class_name")
        if self.loader == "custom" and self.function is None:
            raise ValueError("loader custom needs function (module:function)")
        if self.options and self.loader != "custom":
            raise ValueError(f"options are read only by the custom loader, not by {self.loader}")
        return self


class Runtime(_Strict):
    """What the image is built from."""

    base_image: Annotated[str, AfterValidator(_matching(_IMAGE, "an image reference such as nvidia/cuda:12.4.1-runtime-ubuntu22.04"))] = Field(
        description="Image the build starts from; it must provide python3. Pin by digest for reproducible builds."
    )
    python: Annotated[str, AfterValidator(_matching(re.compile(r"3\.\d{1,2}"), "a Python version such as 3.11"))] = Field(
        description="Python major.minor the base image provides; the build checks it."
    )
    packages: tuple[Annotated[str, AfterValidator(_matching(_PIN, "an exact pin such as diffusers==0.42.1"))], ...] = Field(
        default=(), description="Python packages installed into the image, each pinned exactly (name==version)."
    )
    system_packages: tuple[Annotated[str, AfterValidator(_matching(_DEB, "a Debian package name (optionally =version)"))], ...] = Field(
        default=(), description="apt packages installed into the image."
    )
    large_file_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1,
        description="Files at least this large get a layer of their own, shared by every image holding the same bytes.",
    )


class ImageExpectation(_Strict):
    kind: Literal["image"] = Field(description="The output is an image.")
    width: int = Field(ge=8, le=8192, description="Expected width in pixels.")
    height: int = Field(ge=8, le=8192, description="Expected height in pixels.")


class TextExpectation(_Strict):
    kind: Literal["text"] = Field(description="The output is text.")
    min_chars: int = Field(default=1, ge=1, description="Fewest characters a real answer has.")


class EmbeddingExpectation(_Strict):
    kind: Literal["embedding"] = Field(description="The output is one vector per input.")
    dim: int | None = Field(default=None, ge=1, description="Expected vector length, when known.")


class AudioExpectation(_Strict):
    kind: Literal["audio"] = Field(description="The output is a waveform.")
    sample_rate: int = Field(ge=8000, le=192000, description="The model's output sample rate in Hz.")
    min_seconds: float = Field(gt=0, description="Shortest plausible length of the smoke's speech.")
    max_seconds: float = Field(gt=0, description="Longest plausible length of the smoke's speech.")

    @model_validator(mode="after")
    def _ordered(self) -> "AudioExpectation":
        if self.min_seconds > self.max_seconds:
            raise ValueError("min_seconds is more than max_seconds")
        return self


class VideoExpectation(_Strict):
    kind: Literal["video"] = Field(description="The output is a sequence of frames.")
    frames: int = Field(ge=1, description="Frame count the smoke's inputs must give (audio length x fps).")
    width: int = Field(ge=8, le=8192, description="Expected frame width in pixels.")
    height: int = Field(ge=8, le=8192, description="Expected frame height in pixels.")


class SmokeTest(_Strict):
    """The inference run inside the built image that gates the push."""

    inputs: dict[str, Scalar] = Field(description="Request fields for the predict route (prompt, steps, seed; inputs for embeddings).")
    files: dict[Annotated[str, AfterValidator(_matching(_IDENT, "a request field name"))], RelPath] = Field(
        default_factory=dict,
        description="Request fields filled with a file's bytes, base64-encoded: paths under the project's server/ folder "
                    "(shipped in the image), e.g. assets/smoke/face.jpg.",
    )
    max_seconds: float = Field(gt=0, description="Most seconds the inference may take.")
    load_timeout_seconds: float = Field(default=600, gt=0, description="Most seconds loading the model may take.")
    expect: Annotated[Union[ImageExpectation, TextExpectation, EmbeddingExpectation, AudioExpectation, VideoExpectation],
                      Field(discriminator="kind")] = Field(
        description="What a real output looks like."
    )


class FieldPolicy(_Strict):
    """One request field's default and bounds for this model (inside the server's own hard limits)."""

    default: Scalar | None = Field(default=None, description="Value when the request leaves the field out.")
    min: float | None = Field(default=None, description="Smallest accepted value (for text: fewest characters).")
    max: float | None = Field(default=None, description="Largest accepted value (for text: most characters).")

    @model_validator(mode="after")
    def _ordered(self) -> "FieldPolicy":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        if isinstance(self.default, (int, float)) and not isinstance(self.default, bool):
            if (self.min is not None and self.default < self.min) or (self.max is not None and self.default > self.max):
                raise ValueError(f"default {self.default:g} is outside [{self.min}, {self.max}]")
        return self


class MemoryPolicy(_Strict):
    """How the weights sit on the GPU (diffusers pipelines; other loaders move the whole model)."""

    offload: Literal["none", "model", "sequential", "auto"] = Field(
        default="auto",
        description="none: everything on the GPU; model: one component on the GPU at a time (diffusers' model CPU "
                    "offload); sequential: layer by layer (slowest, least memory); auto: chosen at load from the GPU's "
                    "free memory and each component's weight size.",
    )
    vae_tiling: bool = Field(default=False, description="Decode large images in tiles (less memory, slower).")
    vae_slicing: bool = Field(default=False, description="Decode a batch one image at a time.")
    min_gpu_memory_gb: float | None = Field(
        default=None, gt=0, le=1024,
        description="The smallest GPU (GB, as RunPod lists them) this model serves on under its policy; an image label, "
                    "checked by `builder deploy` against the target's GPU types.",
    )
    headroom_gb: float = Field(default=1.0, ge=0, le=64,
                               description="GPU memory auto keeps free beyond the weights, for activations.")


class Serving(_Strict):
    """How the model is served: request defaults and bounds, unsupported fields, memory, body size."""

    request: dict[Annotated[str, AfterValidator(_matching(_IDENT, "a request field name"))], FieldPolicy] = Field(
        default_factory=dict,
        description="Per request field of the task: default and bounds the model's authors recommend.",
    )
    unsupported: tuple[Annotated[str, AfterValidator(_matching(_IDENT, "a request field name"))], ...] = Field(
        default=(), description="Optional request fields this model would ignore: a request that sends one gets a 422.",
    )
    true_cfg_scale: float | None = Field(
        default=None, gt=1.0, le=30.0,
        description="Negative prompts through true classifier-free guidance at this scale (FLUX.1-dev: its distilled "
                    "guidance ignores negative_prompt otherwise); each step then runs the model twice.",
    )
    memory: MemoryPolicy = Field(default_factory=MemoryPolicy, description="GPU memory policy.")
    max_body_bytes: int | None = Field(
        default=None, ge=1024, le=512 * 1024 * 1024,
        description="Largest request body accepted (413 beyond); default by task: 1 MiB for text, 64 MiB with media.",
    )


Task = Literal["text-to-image", "identity-to-image", "text-generation", "feature-extraction", "text-to-speech", "lip-sync"]
_OUTPUT_OF_TASK = {"text-to-image": "image", "identity-to-image": "image", "text-generation": "text",
                   "feature-extraction": "embedding", "text-to-speech": "audio", "lip-sync": "video"}
_LOADER_OF_PROFILE = {"hf-diffusers-standard": "diffusers", "hf-transformers-standard": "transformers", "custom-local": "custom"}


_OMITTED_WHEN_EMPTY = (("entrypoint", "options"), ("smoke_test", "files"))
_DEFAULT_SERVING = Serving().model_dump(mode="json")


def _check_smoke_within(serving: Serving, smoke: SmokeTest) -> None:
    """The smoke's request must be one the served model accepts."""
    for name in serving.unsupported:
        if name in smoke.inputs:
            raise ValueError(f"smoke_test.inputs.{name}: serving.unsupported lists it")
    for name, policy in serving.request.items():
        value = smoke.inputs.get(name)
        if isinstance(value, str):
            value = len(value)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if (policy.min is not None and value < policy.min) or (policy.max is not None and value > policy.max):
            raise ValueError(f"smoke_test.inputs.{name}: {value:g} is outside serving.request.{name} "
                             f"[{policy.min}, {policy.max}]")


def _check_serving(serving: Serving, task: str) -> None:
    """Fields named in serving must be the task's request fields; bounds only on numbers or text."""
    from server.schemas import REQUEST_OF_TASK  # the request models are the server's: one definition

    model = REQUEST_OF_TASK.get(task)
    if model is None:
        return
    fields = model.model_fields
    for name in [*serving.request, *serving.unsupported]:
        if name not in fields:
            raise ValueError(f"serving: {name!r} is not a request field of {task} ({', '.join(fields)})")
    for name in serving.unsupported:
        if fields[name].is_required():
            raise ValueError(f"serving.unsupported: {name!r} is required by {task}: it cannot be unsupported")
        if name in serving.request:
            raise ValueError(f"serving: {name!r} is both given a policy and unsupported")
    if serving.true_cfg_scale is not None and ("negative_prompt" not in fields or "negative_prompt" in serving.unsupported):
        raise ValueError("serving.true_cfg_scale: only for a task with negative_prompt, and not with it unsupported")
    from server.schemas import request_model_for

    request_model_for(task, serving.model_dump(mode="json"))  # the server's own check: a policy it cannot apply fails here, not at load


class Manifest(_Strict):
    """A model image: what goes in, how it is checked, what it is called."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"$id": SCHEMA_ID})

    name: Annotated[str, AfterValidator(_matching(_NAME, "lowercase letters, digits and . _ - (an image repository name)")), Field(max_length=63)] = Field(
        description="Model name: the image repository name and the manifest's file name."
    )
    version: Annotated[str, AfterValidator(_version)] = Field(
        description="Image tag for this build; immutable once pushed: change it to publish new content."
    )
    profile: Literal["hf-diffusers-standard", "hf-transformers-standard", "custom-local", "experimental"] = Field(
        description="Build profile. Only experimental may be built unlocked or with any loader."
    )
    task: Task = Field(description="What the model does; types the server's predict route.")
    description: SingleLine | None = Field(default=None, description="One line for the image's description label.")
    license: License = Field(description="Licence and approval record.")
    sources: tuple[Source, ...] = Field(min_length=1, description="Repositories the weights come from.")
    entrypoint: Entrypoint = Field(description="Loader, class or function, and dtype the server uses.")
    runtime: Runtime = Field(description="Base image, Python and packages.")
    smoke_test: SmokeTest = Field(description="The gate between a built image and a pushed one.")
    serving: Serving = Field(default_factory=Serving, description="Request defaults and bounds, memory policy.")

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        wanted = _LOADER_OF_PROFILE.get(self.profile)
        if wanted is not None and self.entrypoint.loader != wanted:
            raise ValueError(f"profile {self.profile} needs entrypoint.loader {wanted}, not {self.entrypoint.loader}")
        seen: dict[str, str] = {}
        for i, source in enumerate(self.sources):
            for j, artifact in enumerate(source.artifacts):
                dest = source.destination(artifact)
                where = f"sources[{i}].artifacts[{j}]"
                if dest in seen:
                    raise ValueError(f"{where} lands on {dest}, as {seen[dest]} does: give one of them another target")
                seen[dest] = where
        _check_serving(self.serving, self.task)
        _check_smoke_within(self.serving, self.smoke_test)
        expected = _OUTPUT_OF_TASK.get(self.task)
        if expected is not None and self.smoke_test.expect.kind != expected:
            raise ValueError(f"task {self.task} produces {expected}; smoke_test.expect.kind is {self.smoke_test.expect.kind}")
        return self

    # -- derived facts ------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        return all(source.locked for source in self.sources)

    @property
    def weights_bytes(self) -> int:
        """The bytes of every artifact (one without a size yet, unlocked, counts nothing)."""
        return sum(a.size or 0 for source in self.sources for a in source.artifacts)

    def unlocked_items(self) -> list[str]:
        items = []
        for i, source in enumerate(self.sources):
            if not HEX40.fullmatch(source.revision):
                items.append(f"sources[{i}].revision {source.revision!r}")
            items.extend(f"sources[{i}].include {pattern!r} (matches no artifact yet)" for pattern in source.unexpanded())
            items.extend(f"{source.destination(a)}" for a in source.artifacts if not a.locked)
        return items

    def canonical_json(self) -> str:
        document = self.model_dump(mode="json")
        # Fields added after manifests were first digested are left out while empty, so a manifest
        # that does not use them keeps its digest (and its images are not rebuilt for nothing).
        for section, key in _OMITTED_WHEN_EMPTY:
            if not document[section][key]:
                del document[section][key]
        if document["serving"] == _DEFAULT_SERVING:
            del document["serving"]
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()


# -- loading --------------------------------------------------------------------------------
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise ManifestError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            continue  # a mapping's key failed: the key itself is already in the path
        elif part in ("image", "text", "embedding", "audio", "video") and text.endswith("expect"):
            continue  # the discriminator's branch name is noise to the user
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            match = node.value[part]
        else:
            match = None
        if match is None:
            break
        node, line = match, match.start_mark.line + 1
    return line


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    if error["type"] == "extra_forbidden":
        return "unknown field (check its spelling against manifests/manifest.schema.json)"
    if error["type"] == "missing":
        return "required field is missing"
    if error["type"] == "too_short":
        return f"needs at least {error['ctx']['min_length']} item(s)"
    if error["type"] == "literal_error":
        return f"expected one of {error['ctx']['expected']}"
    return error["msg"]


def parse_manifest(text: str, origin: str = "<manifest>", expected_name: str | None = None) -> Manifest:
    """Validate manifest text; every problem is reported as `origin:line: field: message`."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except ManifestError as exc:
        raise ManifestError(f"{origin}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{origin}{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{origin}: expected a mapping of manifest fields at the top level")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # A list whose item failed is also reported "too short" by pydantic: keep only the item.
        errors = [
            e for e in errors
            if not (e["type"] == "too_short" and any(o is not e and tuple(o["loc"])[: len(e["loc"])] == tuple(e["loc"]) for o in errors))
        ]
        problems = []
        seen_scalars: set[tuple] = set()
        for error in errors:
            loc = tuple(error["loc"])
            if loc and loc[-1] in _SCALAR_BRANCHES:  # one line for a union of scalars, not one per branch
                loc = loc[:-1]
                if loc in seen_scalars:
                    continue
                seen_scalars.add(loc)
                error = {**error, "type": "scalar", "msg": "expected a string, number, boolean or list of strings"}
            line = _line_of(root, loc)
            problems.append(f"{origin}{f':{line}' if line else ''}: {_loc_text(loc)}: {_message(error)}")
        raise ManifestError.with_problems(problems) from None
    if expected_name is not None and manifest.name != expected_name:
        line = _line_of(root, ("name",))
        raise ManifestError(f"{origin}:{line}: name: is {manifest.name!r} but the file is {expected_name}.yaml: make them match")
    return manifest


def load_manifest(path: Path) -> Manifest:
    """The one loader: read, parse and validate a manifest file."""
    origin = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{origin}: no such manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{origin}: cannot read: {exc}") from None
    return parse_manifest(text, origin, expected_name=path.stem)


def json_schema() -> str:
    """The committed manifests/manifest.schema.json, as this model generates it."""
    return json.dumps(Manifest.model_json_schema(), indent=2, sort_keys=False) + "\n"
