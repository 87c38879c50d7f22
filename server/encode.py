"""Outputs to bytes."""

from __future__ import annotations

import io

import numpy as np


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    array = (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)
    if array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
