"""How long a request will take, from its own size, so that one that cannot finish before its
timeout is refused up front instead of holding the GPU.

A request's work units depend on its task (work_units); WorkRate learns seconds per unit from
the inferences that finished, as seconds = overhead + rate * units, fitted by least squares over
the recent ones (each older one weighs DECAY times less), so that a small first request, mostly
fixed overhead (text encoding, VAE decode), does not make every larger one look hopeless. Until
an inference has finished there is no estimate and nothing is refused.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

DECAY = 0.9  # about the last ten inferences count

# What one work unit is, per task (reported by /metadata).
WORK_UNIT = {
    "text-to-image": "steps x width x height",
    "identity-to-image": "steps x width x height",
    "text-generation": "max_new_tokens",
    "feature-extraction": "characters of the inputs",
    "text-to-speech": "characters of text",
    "lip-sync": "video frames (audio seconds x fps)",
}


def work_units(task: str, request: Any) -> float | None:
    """The request's size in its task's work units; None when it cannot be told cheaply."""
    if task in ("text-to-image", "identity-to-image"):
        return float(request.num_inference_steps * request.width * request.height)
    if task == "text-generation":
        return float(request.max_new_tokens)
    if task == "feature-extraction":
        return float(sum(len(text) for text in request.inputs))
    if task == "text-to-speech":
        return float(len(request.text))
    if task == "lip-sync":
        seconds = wav_seconds(request.audio)
        return None if seconds is None else seconds * request.fps
    return None


def wav_seconds(encoded: str) -> float | None:
    """A base64 PCM WAV's length from its header and size alone (no decoding of the samples);
    None when the header is not the usual RIFF/WAVE one with fmt first. The units must mean the
    same thing for every request, so an unreadable file gets no estimate rather than another unit."""
    try:
        header = base64.b64decode(encoded[:64], validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(header) < 44 or header[:4] != b"RIFF" or header[8:16] != b"WAVEfmt ":
        return None
    (byte_rate,) = struct.unpack_from("<I", header, 28)
    if byte_rate == 0:
        return None
    size = len(encoded) * 3 // 4 - encoded[-2:].count("=")
    return max(size - 44, 0) / byte_rate


class WorkRate:
    """seconds = overhead + rate * units, from decayed sums (constant memory, refined by each
    finished inference)."""

    def __init__(self) -> None:
        self._scale = 0.0  # the first request's units: keeps the sums of squares well-conditioned
        self._n = self._u = self._s = self._uu = self._us = 0.0

    def observe(self, units: float, seconds: float) -> None:
        if units <= 0 or seconds < 0:
            return
        if not self._scale:
            self._scale = units
        u = units / self._scale
        self._n, self._u, self._s = self._n * DECAY + 1, self._u * DECAY + u, self._s * DECAY + seconds
        self._uu, self._us = self._uu * DECAY + u * u, self._us * DECAY + u * seconds

    def fit(self) -> tuple[float, float] | None:
        """(overhead seconds, seconds per unit); None before the first inference."""
        if not self._n:
            return None
        mean_u, mean_s = self._u / self._n, self._s / self._n
        spread = self._uu / self._n - mean_u * mean_u
        if spread > 1e-6 * mean_u * mean_u:  # sizes varied: the overhead can be told from the rate
            slope = (self._us / self._n - mean_u * mean_s) / spread
            overhead = mean_s - slope * mean_u
            if slope > 0 and overhead >= 0:
                return overhead, slope / self._scale
            if slope > 0:  # noise put the overhead below zero: a rate through the origin
                return 0.0, self._us / self._uu / self._scale
        return 0.0, mean_s / mean_u / self._scale  # one size only (or noise): seconds per unit, overhead included

    def estimate(self, units: float | None) -> float | None:
        fitted = self.fit()
        if fitted is None or units is None:
            return None
        overhead, rate = fitted
        return overhead + rate * units

    def facts(self) -> dict[str, float | None]:
        fitted = self.fit()
        return {"overhead_seconds": fitted[0] if fitted else None, "seconds_per_unit": fitted[1] if fitted else None}
