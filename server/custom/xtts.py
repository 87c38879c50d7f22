"""XTTS-v2 (coqui/XTTS-v2): multilingual text-to-speech in the voice of a reference clip -> WAV.

The model code is coqui-tts's (`TTS.tts.models.xtts.Xtts`, pinned in the manifest's runtime);
this module only checks the folder, validates requests and drives the documented API:
`Xtts.init_from_config`, `load_checkpoint(config, checkpoint_dir=...)`,
`get_conditioning_latents(audio_path=[...])`, `inference(text, language, ...)`.

Validation runs before the model: the language must be one config.json lists, the speaker
clip a PCM WAV of 2 to 30 seconds that is not silent. Each failure is a 422 naming the field.

entrypoint.options: `checkpoint`, the folder holding config.json, model.pth and vocab.json
(default: the model directory itself); `languages`, the ones to serve, a subset of those
config.json lists (default: all). coqui-tts needs extras for some (ja: cutlet, ko, zh-cn:
pypinyin): serve those only where the image has them.

Long text is split into sentences by coqui-tts (`enable_text_splitting`), as XTTS's GPT reads
at most 400 tokens at a time.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import InputError, LoadError
from server.loaders import AudioOutput
from server.media import decode_wav, encode_wav
from server.spec import ModelSpec

REQUIRED = ("config.json", "model.pth", "vocab.json")
SPEAKER_SECONDS = (2.0, 30.0)


@dataclass(frozen=True)
class XttsConfigFacts:
    """What the server needs from XTTS's config.json before the model loads."""

    languages: tuple[str, ...]
    output_sample_rate: int

    @classmethod
    def read(cls, path: Path) -> "XttsConfigFacts":
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
            languages = tuple(config["languages"])
            rate = int(config["audio"]["output_sample_rate"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LoadError(f"XTTS: {path} is not an XTTS config (languages, audio.output_sample_rate): {exc}") from None
        if config.get("model") != "xtts":
            raise LoadError(f"XTTS: {path} describes model {config.get('model')!r}, not xtts")
        return cls(languages, rate)


def served_facts(spec: ModelSpec, checkpoint: Path) -> XttsConfigFacts:
    """config.json's facts, its languages narrowed to entrypoint.options.languages when given."""
    facts = XttsConfigFacts.read(checkpoint / "config.json")
    wanted = spec.options.get("languages")
    if wanted is None:
        return facts
    wanted = (wanted,) if isinstance(wanted, str) else tuple(wanted)
    unknown = [language for language in wanted if language not in facts.languages]
    if unknown:
        raise LoadError(f"XTTS: entrypoint.options.languages {', '.join(unknown)} not in config.json's "
                        f"{', '.join(facts.languages)}")
    return XttsConfigFacts(wanted, facts.output_sample_rate)


@dataclass(frozen=True)
class SpeechJob:
    text: str
    language: str
    speaker: np.ndarray  # mono float32
    speaker_rate: int
    seed: int
    temperature: float


def prepare(request: Any, facts: XttsConfigFacts) -> SpeechJob:
    """Validate a request against the model's config: InputError (422) before any model work."""
    if request.language not in facts.languages:
        raise InputError(f"language: {request.language!r} is not one this model speaks: {', '.join(facts.languages)}")
    text = " ".join(request.text.split())
    if not text:
        raise InputError("text: nothing to say (only whitespace)")
    speaker, rate = decode_wav("speaker_wav", request.speaker_wav, *SPEAKER_SECONDS)
    if float(np.sqrt(np.mean(np.square(speaker, dtype=np.float64)))) < 1e-3:
        raise InputError("speaker_wav: the clip is silent; send a recording of the voice to clone")
    seed = request.seed if request.seed is not None else int(np.random.default_rng().integers(2**31))
    return SpeechJob(text, request.language, speaker, rate, seed, request.temperature)


class Xtts:
    def __init__(self, spec: ModelSpec, model_dir: Path, device: str) -> None:
        checkpoint = model_dir / str(spec.options.get("checkpoint", "."))
        missing = [name for name in REQUIRED if not (checkpoint / name).is_file()]
        if missing:
            raise LoadError(f"XTTS: {checkpoint} lacks {', '.join(missing)}")
        self.facts = served_facts(spec, checkpoint)
        try:
            import torch
            from TTS.tts.configs.xtts_config import XttsConfig
            from TTS.tts.models.xtts import Xtts as CoquiXtts
        except ImportError as exc:
            raise LoadError(f"XTTS needs coqui-tts in the image (pin coqui-tts in runtime.packages): {exc}") from None
        config = XttsConfig()
        config.load_json(str(checkpoint / "config.json"))
        self.model = CoquiXtts.init_from_config(config)
        self.model.load_checkpoint(config, checkpoint_dir=str(checkpoint), eval=True, use_deepspeed=False)
        self.model.to(device)
        self.device, self.dtype = device, "float32"
        self._torch = torch

    def predict(self, request: Any) -> AudioOutput:
        job = prepare(request, self.facts)
        torch = self._torch
        started = time.perf_counter()
        torch.manual_seed(job.seed)
        with tempfile.NamedTemporaryFile(suffix=".wav") as clip:  # coqui-tts reads the reference from a path
            clip.write(encode_wav(job.speaker, job.speaker_rate))
            clip.flush()
            with torch.inference_mode():
                latent, speaker = self.model.get_conditioning_latents(audio_path=[clip.name])
                out = self.model.inference(job.text, job.language, latent, speaker, temperature=job.temperature,
                                           enable_text_splitting=True)
        samples = np.asarray(out["wav"].cpu() if hasattr(out["wav"], "cpu") else out["wav"], dtype=np.float32).reshape(-1)
        return AudioOutput(samples, self.facts.output_sample_rate, job.seed, time.perf_counter() - started)


def load(spec: ModelSpec, model_dir: Path, device: str) -> Xtts:
    return Xtts(spec, model_dir, device)
