"""A predictor's output as the caller receives it: the task's JSON body (base64 media and
metadata), or the raw media file when the HTTP caller asked for it by Accept. The HTTP route
and the queue handler both answer with this body, so a job's result equals the route's JSON."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from server.encode import png_bytes
from server.loaders import AudioOutput, EmbeddingOutput, ImageOutput, TextOutput, VideoOutput
from server.media import encode_mp4, encode_wav
from server.schemas import (
    EmbeddingResponse,
    LipSyncResponse,
    TextGenerationResponse,
    TextToImageResponse,
    TextToSpeechResponse,
    Timings,
)


@dataclass(frozen=True)
class RawMedia:
    content: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def respond(output: Any, waited: float, accept: str = "") -> BaseModel | RawMedia:
    """Encode once (MP4 encoding takes a while: call it off the event loop)."""
    timings = Timings(queue_seconds=round(waited, 4), inference_seconds=round(output.inference_seconds, 4))
    if isinstance(output, ImageOutput):
        png = png_bytes(output.pixels)
        if "image/png" in accept:
            return RawMedia(png, "image/png", {"X-Seed": str(output.seed)})
        height, width = output.pixels.shape[:2]
        return TextToImageResponse(image=base64.b64encode(png).decode(), width=width, height=height,
                                   seed=output.seed, timings=timings)
    if isinstance(output, TextOutput):
        return TextGenerationResponse(text=output.text, tokens=output.tokens, seed=output.seed, timings=timings)
    if isinstance(output, EmbeddingOutput):
        return EmbeddingResponse(embeddings=output.vectors.tolist(), dim=int(output.vectors.shape[1]), timings=timings)
    if isinstance(output, AudioOutput):
        wav = encode_wav(output.samples, output.sample_rate)
        if "audio/wav" in accept:
            return RawMedia(wav, "audio/wav", {"X-Seed": str(output.seed)})
        return TextToSpeechResponse(audio=base64.b64encode(wav).decode(), sample_rate=output.sample_rate,
                                    seconds=round(output.samples.size / output.sample_rate, 3), seed=output.seed,
                                    timings=timings)
    if isinstance(output, VideoOutput):
        mp4 = encode_mp4(output.frames, output.fps, output.audio)
        if "video/mp4" in accept:
            return RawMedia(mp4, "video/mp4")
        count, height, width = output.frames.shape[:3]
        return LipSyncResponse(video=base64.b64encode(mp4).decode(), frames=count, width=width, height=height,
                               fps=output.fps, timings=timings)
    raise TypeError(f"the predictor returned a {type(output).__name__}")
