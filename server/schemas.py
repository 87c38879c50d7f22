"""Request and response bodies of the predict route, one pair per task, and the request model
as one manifest serves it (request_model_for): its serving.request defaults and bounds inside
the hard limits below, its serving.unsupported fields refused by name."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError


class _Request(BaseModel):
    # NaN and Infinity are no sizes or scales: refused by name, whichever door they came in by
    # (Python's json module, the runpod SDK's included, reads NaN, Infinity and 1e999 as floats).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Timings(BaseModel):
    queue_seconds: float = Field(description="Seconds the request waited for the model.")
    inference_seconds: float = Field(description="Seconds the model ran.")


class TextToImageRequest(_Request):
    prompt: str = Field(min_length=1, max_length=4000, description="What to draw.")
    negative_prompt: str | None = Field(default=None, max_length=4000, description="What not to draw.")
    width: int = Field(default=512, ge=64, le=2048, description="Image width in pixels, a multiple of 16.")
    height: int = Field(default=512, ge=64, le=2048, description="Image height in pixels, a multiple of 16.")
    num_inference_steps: int = Field(default=28, ge=1, le=150, description="Denoising steps.")
    guidance_scale: float = Field(default=5.0, ge=0.0, le=30.0, description="Guidance scale.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Seed; random when absent.")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        # 16, not 8: the latent is 8x smaller and transformer pipelines (Flux, Z-Image) pack it in 2x2 patches.
        if value % 16:
            raise ValueError("must be a multiple of 16")
        return value


class TextToImageResponse(BaseModel):
    image: str = Field(description="The PNG, base64-encoded.")
    width: int
    height: int
    seed: int
    timings: Timings


class TextGenerationRequest(_Request):
    prompt: str = Field(min_length=1, max_length=32000, description="The text to continue.")
    max_new_tokens: int = Field(default=128, ge=1, le=4096, description="Most tokens to generate.")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0, description="0 means greedy decoding.")
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Seed; random when absent.")


class TextGenerationResponse(BaseModel):
    text: str = Field(description="The generated continuation (without the prompt).")
    tokens: int = Field(description="Tokens generated.")
    seed: int
    timings: Timings


class EmbeddingRequest(_Request):
    inputs: list[str] = Field(min_length=1, max_length=64, description="Texts to embed.")
    normalize: bool = Field(default=True, description="Scale each vector to unit length.")

    @field_validator("inputs")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if any(not text.strip() for text in value):
            raise ValueError("every input must contain text")
        return value


class EmbeddingResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int
    timings: Timings


# Files travel base64-encoded in JSON; ~28 MB of text is about 20 MB of file.
MAX_FILE_CHARS = 28_000_000


class IdentityToImageRequest(TextToImageRequest):
    face_image: str = Field(min_length=1, max_length=MAX_FILE_CHARS,
                            description="The face to keep: a PNG, JPEG or WebP holding one clearly visible face, base64.")
    identity_strength: float = Field(default=0.8, ge=0.0, le=1.5,
                                     description="How strongly the face's identity steers the image (IP-Adapter scale).")
    pose_strength: float = Field(default=0.8, ge=0.0, le=1.5,
                                 description="How strongly the face's landmarks fix its pose (ControlNet scale).")


class TextToSpeechRequest(_Request):
    text: str = Field(min_length=1, max_length=2000, description="What to say.")
    language: str = Field(default="en", min_length=2, max_length=8, pattern=r"^[a-z]{2}(-[a-z]{2})?$",
                          description="Language code of the text, one the model lists (en, de, fr, zh-cn...).")
    speaker_wav: str = Field(min_length=1, max_length=MAX_FILE_CHARS,
                             description="A clip of the voice to speak with: PCM WAV, 2 to 30 seconds, base64.")
    temperature: float = Field(default=0.75, gt=0.0, le=2.0, description="Sampling temperature.")
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="Seed; random when absent.")


class TextToSpeechResponse(BaseModel):
    audio: str = Field(description="16-bit PCM WAV, base64-encoded.")
    sample_rate: int
    seconds: float
    seed: int
    timings: Timings


class LipSyncRequest(_Request):
    reference: str = Field(min_length=1, max_length=MAX_FILE_CHARS,
                           description="The face to animate: a PNG, JPEG or WebP image, or an MP4/MOV or "
                                       "WebM/Matroska video whose frames are reused in turn, base64.")
    audio: str = Field(min_length=1, max_length=MAX_FILE_CHARS, description="The speech to lip-sync: PCM WAV, base64.")
    fps: int = Field(default=25, ge=1, le=60, description="Output frames per second.")


class LipSyncResponse(BaseModel):
    video: str = Field(description="H.264 MP4 with the audio, base64-encoded.")
    frames: int
    width: int
    height: int
    fps: int
    timings: Timings


REQUEST_OF_TASK: dict[str, type[_Request]] = {
    "text-to-image": TextToImageRequest,
    "identity-to-image": IdentityToImageRequest,
    "text-generation": TextGenerationRequest,
    "feature-extraction": EmbeddingRequest,
    "text-to-speech": TextToSpeechRequest,
    "lip-sync": LipSyncRequest,
}
RESPONSE_OF_TASK: dict[str, type[BaseModel]] = {
    "text-to-image": TextToImageResponse,
    "identity-to-image": TextToImageResponse,
    "text-generation": TextGenerationResponse,
    "feature-extraction": EmbeddingResponse,
    "text-to-speech": TextToSpeechResponse,
    "lip-sync": LipSyncResponse,
}

# Bodies the task's fields can fill: text only, or base64 files as well (MAX_FILE_CHARS each).
TEXT_BODY_BYTES = 1024 * 1024
MEDIA_BODY_BYTES = 64 * 1024 * 1024
MEDIA_TASKS = frozenset({"identity-to-image", "text-to-speech", "lip-sync"})


def max_body_bytes(task: str, serving: Mapping[str, Any]) -> int:
    """The largest body a request may send: the manifest's serving.max_body_bytes, else by task."""
    declared = serving.get("max_body_bytes")
    if declared:
        return int(declared)
    return MEDIA_BODY_BYTES if task in MEDIA_TASKS else TEXT_BODY_BYTES


# -- the request model as one manifest serves it --------------------------------------------------
_BOUND_TYPES = (Ge, Gt, Le, Lt, MinLen, MaxLen)
_BOUND_NAMES = {Ge: "ge", Gt: "gt", Le: "le", Lt: "lt", MinLen: "min_length", MaxLen: "max_length"}


def request_model_for(task: str, serving: Mapping[str, Any] | None = None) -> type[_Request]:
    """The task's request model with the manifest's serving section applied: its defaults replace
    the field defaults (and show in /openapi.json), its min/max are intersected with the hard
    limits above (a manifest narrows, never widens), and each unsupported field is left out of the
    schema and refused by name when sent. ValueError, naming serving.request.FIELD, when the policy
    cannot be applied: an unknown field, bounds on a field that has none, no value left inside the
    hard limits, a default the field refuses."""
    base = REQUEST_OF_TASK[task]
    serving = serving or {}
    policies: Mapping[str, Mapping[str, Any]] = serving.get("request") or {}
    unsupported: tuple[str, ...] = tuple(serving.get("unsupported") or ())
    if not policies and not unsupported:
        return base
    fields: dict[str, Any] = {}
    for name, policy in policies.items():
        fields[name] = _with_policy(base, name, policy)
    for name in unsupported:
        if name not in base.model_fields or base.model_fields[name].is_required():
            raise ValueError(f"serving.unsupported: {name!r} is not an optional request field of {task}")
        fields[name] = (SkipJsonSchema[base.model_fields[name].annotation], Field(default=None))
    validators = {f"_refuse_{name}": field_validator(name, mode="before")(_refuse) for name in unsupported}
    model = create_model(base.__name__, __base__=base, __module__=base.__module__, __doc__=base.__doc__,
                         __validators__=validators, **fields)
    for name, policy in policies.items():
        if policy.get("default") is not None:
            _check_default(model, name, policy["default"])
    return model


def _refuse(cls: type, value: Any, info: ValidationInfo) -> Any:
    # Refused rather than ignored: a caller who sends it expects it to count, and it would not.
    raise PydanticCustomError("unsupported", "this model does not support {field}: leave it out",
                              {"field": info.field_name})


def _with_policy(base: type[_Request], name: str, policy: Mapping[str, Any]) -> tuple[Any, Any]:
    info = base.model_fields.get(name)
    if info is None:
        raise ValueError(f"serving.request.{name}: not a request field ({', '.join(base.model_fields)})")
    kept = [item for item in info.metadata if not isinstance(item, _BOUND_TYPES)]
    bounds = _bounds(info.metadata)
    low, high = policy.get("min"), policy.get("max")
    if low is not None or high is not None:
        if bounds.keys() & {"min_length", "max_length"}:  # text (characters) or a list (items)
            bounds = _narrowed(name, bounds, low, high, "length", integer=True)
        elif bounds.keys() & {"ge", "gt", "le", "lt"}:
            bounds = _narrowed(name, bounds, low, high, "number", integer=int in _types(info.annotation))
        else:
            raise ValueError(f"serving.request.{name}: min and max apply to numbers and text only")
    default = policy.get("default")
    if default is None:
        default = info.default
    annotation = info.annotation
    for item in kept:  # other constraints (a pattern) stay as they were
        annotation = Annotated[annotation, item]
    return annotation, Field(default=default, description=info.description, **bounds)


def _narrowed(name: str, hard: dict[str, Any], low: float | None, high: float | None, kind: str,
              integer: bool) -> dict[str, Any]:
    """The hard bounds intersected with the policy's [low, high]: each side keeps the tighter one."""
    (ge, le), (gt, lt) = _BOUND_KEYS[kind]
    bounds = dict(hard)
    if low is not None:
        low = math.ceil(low) if integer else low
        if low > bounds.get(ge, bounds.get(gt, -math.inf)):
            bounds.pop(gt, None)
            bounds[ge] = low
    if high is not None:
        high = math.floor(high) if integer else high
        if high < bounds.get(le, bounds.get(lt, math.inf)):
            bounds.pop(lt, None)
            bounds[le] = high
    lowest, highest = bounds.get(ge, bounds.get(gt, -math.inf)), bounds.get(le, bounds.get(lt, math.inf))
    if lowest > highest or (lowest == highest and (gt in bounds or lt in bounds)):
        asked = " and ".join(f"{side} {value:g}" for side, value in (("min", low), ("max", high)) if value is not None)
        limits = ", ".join(f"{key} {value}" for key, value in hard.items())
        raise ValueError(f"serving.request.{name}: {asked} leaves no value inside the server's limits ({limits})")
    return bounds


# Per kind of field, the names of its bounds: (inclusive low, high), (exclusive low, high).
_BOUND_KEYS = {"number": (("ge", "le"), ("gt", "lt")), "length": (("min_length", "max_length"), ("", ""))}


def _check_default(model: type[_Request], name: str, default: Any) -> None:
    try:
        model.__pydantic_validator__.validate_assignment(model.model_construct(), name, default)
    except ValidationError as exc:
        problem = exc.errors(include_input=False, include_url=False, include_context=False)[0]["msg"]
        raise ValueError(f"serving.request.{name}.default {default!r}: {problem}") from None


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        for kind, key in _BOUND_NAMES.items():
            if isinstance(item, kind):
                found[key] = getattr(item, key)
    return found


def _types(annotation: Any) -> tuple[Any, ...]:
    return getattr(annotation, "__args__", None) or (annotation,)


def describe_request(model: type[_Request], serving: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What /metadata reports: each optional field's effective default, each field's bounds (in
    pydantic's words: ge, gt, le, lt, min_length, max_length) and the unsupported fields."""
    unsupported = list((serving or {}).get("unsupported") or ())
    defaults, bounds = {}, {}
    for name, info in model.model_fields.items():
        if name in unsupported:
            continue
        if not info.is_required():
            defaults[name] = info.default
        if found := _bounds(info.metadata):
            bounds[name] = found
    return {"defaults": defaults, "bounds": bounds, "unsupported": unsupported}
