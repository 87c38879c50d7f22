"""A smoke test per task: the smallest request that runs every component once.

The smoke gates a push; it checks that the image loads the model and answers with an output of
the right kind and shape, not its quality. So the inputs are the stand-ins' (manifests/tiny-*.yaml):
64x64 images in two steps, eight greedy tokens, two short sentences, the voice clip and face
photo shipped under server/assets/smoke/. Timeouts grow with the weights.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1_000_000_000
SPEECH = "assets/smoke/speech.wav"
FACE = "assets/smoke/face.jpg"


@dataclass(frozen=True)
class Smoke:
    inputs: dict[str, Any]
    expect: dict[str, Any]
    max_seconds: int
    load_timeout_seconds: int
    files: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # comments for the manifest
    todo: tuple[str, ...] = ()


_IMAGE = {"prompt": "a red fox sitting in fresh snow, photograph", "width": 64, "height": 64,
          "num_inference_steps": 2, "seed": 0}


def _seconds(path: Path) -> float | None:
    try:
        with wave.open(str(path)) as clip:
            return clip.getnframes() / clip.getframerate()
    except (OSError, wave.Error, ZeroDivisionError):
        return None


def smoke_for(task: str, config: dict[str, Any], weight_bytes: int, server_dir: Path) -> Smoke:
    """The smoke test for `task`; config is the model's config.json (sizes, sample rate) or {}."""
    big = weight_bytes >= GB
    timing = {"max_seconds": 300 if big else 60, "load_timeout_seconds": 1200 if big else 120}
    if task == "text-to-image":
        return Smoke(dict(_IMAGE), {"kind": "image", "width": 64, "height": 64}, **timing)
    if task == "identity-to-image":
        return Smoke(dict(_IMAGE), {"kind": "image", "width": 64, "height": 64}, files={"face_image": FACE}, **timing)
    if task == "text-generation":
        return Smoke({"prompt": "the cat sat on the", "max_new_tokens": 8, "temperature": 0.0, "seed": 0},
                     {"kind": "text", "min_chars": 1}, **timing)
    if task == "feature-extraction":
        dim = config.get("hidden_size") or config.get("d_model")
        expect: dict[str, Any] = {"kind": "embedding"}
        notes: tuple[str, ...] = ()
        if isinstance(dim, int):
            expect["dim"] = dim
            notes = (f"dim: config.json's hidden size ({dim}), the width of the mean-pooled last hidden state",)
        return Smoke({"inputs": ["the cat sat on the mat", "a photo of a dog"], "normalize": True}, expect,
                     notes=notes, **timing)
    if task == "text-to-speech":
        rate = config.get("sample_rate") or config.get("output_sample_rate") or (config.get("audio") or {}).get("output_sample_rate")
        todo = () if isinstance(rate, int) else ("smoke_test.expect.sample_rate: 24000 is a placeholder: "
                                                 "give the model's output rate",)
        return Smoke({"text": "Hello from the smoke test.", "language": "en"},
                     {"kind": "audio", "sample_rate": rate if isinstance(rate, int) else 24000,
                      "min_seconds": 0.5, "max_seconds": 20.0},
                     files={"speaker_wav": SPEECH}, todo=todo, **timing)
    if task == "lip-sync":
        seconds = _seconds(server_dir / SPEECH) or 3.0
        return Smoke({"fps": 25}, {"kind": "video", "frames": round(seconds * 25), "width": 256, "height": 256},
                     files={"reference": FACE, "audio": SPEECH},
                     notes=(f"frames: the {seconds:g} s of {SPEECH} at 25 fps",),
                     todo=("smoke_test.expect width and height: 256x256 is a placeholder: give the model's output size",),
                     **timing)
    raise ValueError(f"no smoke test for task {task}")  # the manifest's Task literal lists every task handled above
