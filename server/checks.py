"""What a real output looks like. Shared by the smoke test and the tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from server.loaders import EmbeddingOutput, ImageOutput, TextOutput


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


def output_problem(output: Any, expect: dict[str, Any], request: Any) -> str | None:
    """Check a predictor's output against the manifest's smoke_test.expect."""
    kind = expect["kind"]
    if kind == "image" and isinstance(output, ImageOutput):
        return image_problem(output.pixels, expect["width"], expect["height"])
    if kind == "text" and isinstance(output, TextOutput):
        return text_problem(output.text, expect.get("min_chars", 1))
    if kind == "embedding" and isinstance(output, EmbeddingOutput):
        return embedding_problem(output.vectors, len(request.inputs), expect.get("dim"))
    return f"expected a {kind} output, got {type(output).__name__}"
