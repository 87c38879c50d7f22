"""XTTS-v2 (coqui/XTTS-v2): multilingual text-to-speech in the voice of a reference clip -> WAV.

The model code is coqui-tts's (`TTS.tts.models.xtts.Xtts`, pinned in the manifest's runtime);
this module only checks the folder, validates requests and drives coqui-tts's API:
`Xtts(config)`, `load_checkpoint(config, checkpoint_dir=...)`, `get_speaker_embedding` and
`get_gpt_cond_latents` on the voice clip as a tensor, `inference(text, language, ...)`.

Validation runs before the model: the language must be one config.json lists, the speaker
clip a PCM WAV of 2 to 30 seconds that is not silent. Each failure is a 422 naming the field.

entrypoint.options: `checkpoint`, the folder holding config.json, model.pth and vocab.json
(default: the model directory itself); `languages`, the ones to serve, a subset of those
config.json lists (default: all). coqui-tts needs extras for some (ja: cutlet, ko, zh-cn:
pypinyin): serve those only where the image has them.

Where coqui-tts 0.28 differs from its older examples (checked on the tiny stand-in):
- the clip is decoded here and handed over as a tensor, not as a file path: coqui-tts reads
  paths with `torchaudio.load`, which from torchaudio 2.9 on needs torchcodec and FFmpeg's
  shared libraries, neither of which the model needs otherwise;
- long text is split here (`split_text`), not by `inference(enable_text_splitting=True)`:
  that needs spaCy, which coqui-tts does not install. XTTS's GPT reads at most 400 tokens, and
  the tokenizer's per-language `char_limits` (250 characters of English) bound a sentence;
- sampling settings other than the request's temperature come from config.json, as
  coqui-tts's own `synthesize` takes them (`inference`'s defaults differ: repetition_penalty 10).
"""

from __future__ import annotations

import json
import re
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.errors import InputError, LoadError
from server.loaders import AudioOutput
from server.media import decode_wav
from server.spec import ModelSpec

REQUIRED = ("config.json", "model.pth", "vocab.json")
SPEAKER_SECONDS = (2.0, 30.0)
CONDITIONING_RATE = 22050  # the rate coqui-tts's get_conditioning_latents reads a clip at
SAMPLING = ("length_penalty", "repetition_penalty", "top_k", "top_p")
_SENTENCE_END = re.compile(r"(?<=[.!?;\u3002\uff01\uff1f])\s+")


def split_text(text: str, limit: int) -> list[str]:
    """Sentences packed, in order, into pieces of at most `limit` characters; a longer sentence
    is wrapped at spaces (a longer word is cut). Joined with spaces, the pieces are the text."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        if not sentence:
            continue
        if len(sentence) > limit:
            pieces.extend(textwrap.wrap(sentence, width=limit, break_on_hyphens=False))
        elif pieces and len(pieces[-1]) + 1 + len(sentence) <= limit:
            pieces[-1] = f"{pieces[-1]} {sentence}"
        else:
            pieces.append(sentence)
    return pieces


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
            import torchaudio
            from TTS.tts.configs.xtts_config import XttsConfig
            from TTS.tts.models.xtts import Xtts as CoquiXtts
        except ImportError as exc:
            raise LoadError(f"XTTS needs coqui-tts in the image (pin coqui-tts in runtime.packages): {exc}") from None
        config = XttsConfig()
        config.load_json(str(checkpoint / "config.json"))
        self.config = config
        self.model = CoquiXtts(config)
        self.model.load_checkpoint(config, checkpoint_dir=str(checkpoint), eval=True, use_deepspeed=False)
        self.model.to(device)
        self.device, self.dtype = device, "float32"
        self._torch, self._resample = torch, torchaudio.functional.resample

    def _voice(self, job: SpeechJob) -> tuple[Any, Any]:
        """GPT conditioning latents and speaker embedding, as get_conditioning_latents makes them
        from one file, but from the decoded clip."""
        config = self.config
        audio = self._torch.from_numpy(np.ascontiguousarray(job.speaker, dtype=np.float32))[None]
        if job.speaker_rate != CONDITIONING_RATE:
            audio = self._resample(audio, job.speaker_rate, CONDITIONING_RATE)
        audio = audio[:, : CONDITIONING_RATE * int(config.max_ref_len)].clamp(-1.0, 1.0).to(self.device)
        if config.sound_norm_refs:
            audio = audio / audio.abs().max() * 0.75
        speaker = self.model.get_speaker_embedding(audio, CONDITIONING_RATE)
        latent = self.model.get_gpt_cond_latents(audio, CONDITIONING_RATE, length=int(config.gpt_cond_len),
                                                 chunk_length=int(config.gpt_cond_chunk_len))
        return latent, speaker

    def pieces(self, job: SpeechJob) -> list[str]:
        limit = self.model.tokenizer.char_limits.get(job.language.split("-")[0], 250)
        return split_text(job.text, limit)

    def predict(self, request: Any) -> AudioOutput:
        job = prepare(request, self.facts)
        torch = self._torch
        started = time.perf_counter()
        torch.manual_seed(job.seed)
        settings = {key: self.config[key] for key in SAMPLING}
        waves = []
        with torch.inference_mode():
            latent, speaker = self._voice(job)
            for piece in self.pieces(job):
                out = self.model.inference(piece, job.language, latent, speaker, temperature=job.temperature,
                                           enable_text_splitting=False, **settings)
                wav = out["wav"]
                waves.append(np.asarray(wav.cpu() if hasattr(wav, "cpu") else wav, dtype=np.float32).reshape(-1))
        samples = np.concatenate(waves)
        return AudioOutput(samples, self.facts.output_sample_rate, job.seed, time.perf_counter() - started)


def load(spec: ModelSpec, model_dir: Path, device: str) -> Xtts:
    return Xtts(spec, model_dir, device)
