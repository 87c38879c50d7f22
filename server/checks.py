"""What a real output looks like. Shared by the smoke test and the tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from server.loaders import AudioOutput, EmbeddingOutput, ImageOutput, TextOutput, VideoOutput


def image_problem(pixels: np.ndarray, width: int, height: int) -> str | None:
    """None when `pixels` (H x W x C floats in [0, 1], as the pipeline made them) is a real
    image of the asked size; otherwise why not."""
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        return f"output is not an image: array of shape {pixels.shape}"
    h, w = pixels.shape[:2]
    if (w, h) != (width, height):
        return f"image is {w}x{h}, expected {width}x{height}"
    if not np.isfinite(pixels).all():
        return "image has NaN or infinite values (a dtype overflow, often float16 on an unsupported device)"
    if float(pixels.max() - pixels.min()) < 1.0 / 255 or float(pixels.std()) < 0.5 / 255:
        return f"image is blank: constant value {float(pixels.mean()):.3f}"
    return None


def text_problem(text: str, min_chars: int) -> str | None:
    if len(text.strip()) < min_chars:
        return f"text output has {len(text.strip())} characters, expected at least {min_chars}"
    return None


def embedding_problem(vectors: np.ndarray, count: int, dim: int | None) -> str | None:
    if vectors.ndim != 2 or vectors.shape[0] != count:
        return f"embeddings have shape {vectors.shape}, expected {count} rows"
    if dim is not None and vectors.shape[1] != dim:
        return f"embeddings have {vectors.shape[1]} dimensions, expected {dim}"
    if not np.isfinite(vectors).all():
        return "embeddings have NaN or infinite values"
    if float(vectors.std()) < 1e-6:
        return "embeddings are constant"
    return None


def audio_problem(samples: np.ndarray, sample_rate: int, expect: dict[str, Any]) -> str | None:
    """None when `samples` (mono floats) is plausible speech for the smoke's text; otherwise why not."""
    if samples.ndim != 1:
        return f"audio is not mono: array of shape {samples.shape}"
    if samples.size == 0:
        return "audio is empty"
    if sample_rate != expect["sample_rate"]:
        return f"audio is at {sample_rate} Hz, the model's rate is {expect['sample_rate']} Hz"
    seconds = samples.size / sample_rate
    if not expect["min_seconds"] <= seconds <= expect["max_seconds"]:
        return f"audio lasts {seconds:.2f} s, expected {expect['min_seconds']:g} to {expect['max_seconds']:g} s"
    if not np.isfinite(samples).all():
        return "audio has NaN or infinite samples"
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if rms < 1e-3 or float(np.abs(samples).max()) < 1e-2:
        return f"audio is silent: RMS {rms:.2e}"
    if float(np.abs(np.diff(samples)).max()) < 1e-4:
        return "audio is a constant offset, not sound"
    return None


def video_problem(frames: np.ndarray, expect: dict[str, Any]) -> str | None:
    """None when `frames` (N x H x W x 3, uint8 or floats in [0, 1]) has the smoke's count and size and moves."""
    if frames.ndim != 4 or frames.shape[3] != 3:
        return f"output is not a sequence of RGB frames: array of shape {frames.shape}"
    count, height, width = frames.shape[:3]
    if count != expect["frames"]:
        return f"{count} frames, expected {expect['frames']}"
    if (width, height) != (expect["width"], expect["height"]):
        return f"frames are {width}x{height}, expected {expect['width']}x{expect['height']}"
    scale = 255.0 if frames.dtype == np.uint8 else 1.0
    for index, frame in enumerate(frames):
        problem = image_problem(frame.astype(np.float32) / scale, width, height)
        if problem is not None:
            return f"frame {index}: {problem}"
    if count > 1 and all(np.array_equal(frames[0], frame) if scale > 1 else
                         float(np.abs(frame - frames[0]).max()) < 1.0 / 255 for frame in frames[1:]):
        return f"all {count} frames are the same: the video does not move"
    return None


def output_problem(output: Any, expect: dict[str, Any], request: Any) -> str | None:
    """Check a predictor's output against the manifest's smoke_test.expect."""
    kind = expect["kind"]
    if kind == "image" and isinstance(output, ImageOutput):
        return image_problem(output.pixels, expect["width"], expect["height"])
    if kind == "text" and isinstance(output, TextOutput):
        return text_problem(output.text, expect.get("min_chars", 1))
    if kind == "embedding" and isinstance(output, EmbeddingOutput):
        return embedding_problem(output.vectors, len(request.inputs), expect.get("dim"))
    if kind == "audio" and isinstance(output, AudioOutput):
        return audio_problem(output.samples, output.sample_rate, expect)
    if kind == "video" and isinstance(output, VideoOutput):
        return video_problem(output.frames, expect)
    return f"expected a {kind} output, got {type(output).__name__}"
