"""What a real output looks like. Shared by the smoke test and the tests."""

from __future__ import annotations

import numpy as np


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
