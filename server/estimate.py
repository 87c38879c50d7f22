"""How long a request will take, from its own size, so that one that clearly cannot finish before
its timeout is refused up front instead of holding the GPU.

A request's work units depend on its task (work_units); WorkRate learns seconds = overhead +
rate x units from the inferences that finished, by weighted least squares over the last
MAX_SAMPLES (each older one weighs DECAY times less, so a changed cost is followed). A wrong
refusal never corrects itself (a refused request never runs, so nothing new is learned), while
a wrong admission costs one slow inference and teaches the fit; so the refusal is kept for clear
cases only:
- no estimate at all until the samples span two distinct sizes (the largest at least SPREAD
  times the smallest): from one size, overhead and rate cannot be told apart, and a small first
  request, mostly fixed overhead, would make every larger one look hopeless;
- the caller (server/inference.py) leaves out the first inference, which carries the warm-up
  (CUDA context, kernel selection, lazy allocations);
- the refusal uses a lower bound, not the estimate: the one-sided 97.5 % prediction bound of the
  fit (Student's t over the residuals), which needs three samples and widens with noise and with
  distance from the sizes seen. A stray slow sample or a far extrapolation lowers the bound, so it
  admits; only a consistent history says no.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

DECAY = 0.9  # each older inference weighs this much less: about the last ten count
MAX_SAMPLES = 32  # older ones weigh under 0.04: dropped
SPREAD = 1.25  # two sizes are distinct when the larger is at least this many times the smaller
CHARS_PER_TOKEN = 4  # a prompt's tokens, told without its tokenizer (about four characters a token)
# Student's t, one-sided 97.5 %, by degrees of freedom; 1.96 beyond the table.
_T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 12: 2.18,
         15: 2.13, 20: 2.09, 30: 2.04}

# What one work unit is, per task (reported by /metadata).
WORK_UNIT = {
    "text-to-image": "steps x width x height",
    "identity-to-image": "steps x width x height",
    "text-generation": "tokens: max_new_tokens + prompt characters / 4",
    "feature-extraction": "characters of the inputs",
    "text-to-speech": "characters of text",
    "lip-sync": "video frames (audio seconds x fps)",
}


def work_units(task: str, request: Any) -> float | None:
    """The request's size in its task's work units; None when it cannot be told cheaply."""
    if task in ("text-to-image", "identity-to-image"):
        return float(request.num_inference_steps * request.width * request.height)
    if task == "text-generation":  # the prompt is read (prefilled) before a token is generated
        return float(request.max_new_tokens) + len(request.prompt) / CHARS_PER_TOKEN
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


def t_quantile(dof: int) -> float:
    """Between the table's rows, the row below (the larger quantile: the bound stays conservative)."""
    if dof > max(_T975):
        return 1.96
    return _T975[max(row for row in _T975 if row <= max(dof, 1))]


@dataclass(frozen=True)
class Fit:
    overhead: float  # seconds
    rate: float  # seconds per unit
    samples: int
    mean_units: float  # the weighted mean size, where the fit is surest
    spread: float  # weighted sum of squared distances of the sizes from that mean (normalised weights)
    noise: float | None  # the residuals' standard deviation in seconds; None with two samples (no freedom left)

    def estimate(self, units: float) -> float:
        return self.overhead + self.rate * units

    def lower_bound(self, units: float) -> float | None:
        """A time this request will very likely take at least (None: too few samples to say)."""
        if self.noise is None:
            return None
        n = self.samples
        error = self.noise * math.sqrt(1 + 1 / n + (units - self.mean_units) ** 2 / self.spread)
        return self.estimate(units) - t_quantile(n - 2) * error


class WorkRate:
    """seconds = overhead + rate * units over the recent finished inferences (bounded memory)."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)  # newest last

    def observe(self, units: float, seconds: float) -> None:
        if units > 0 and seconds >= 0 and math.isfinite(units) and math.isfinite(seconds):
            self._samples.append((units, seconds))

    def fit(self) -> Fit | None:
        """None until two distinct sizes were seen, or while time does not grow with size."""
        samples = list(self._samples)
        sizes = [u for u, _ in samples]
        if len(samples) < 2 or max(sizes) < SPREAD * min(sizes):
            return None
        n = len(samples)
        raw = [DECAY ** (n - 1 - i) for i in range(n)]
        total = sum(raw)
        weights = [w * n / total for w in raw]  # normalised to sum to n: residual freedom stays n - 2
        mean_u = sum(w * u for w, (u, _) in zip(weights, samples)) / n
        mean_s = sum(w * s for w, (_, s) in zip(weights, samples)) / n
        spread = sum(w * (u - mean_u) ** 2 for w, (u, _) in zip(weights, samples))
        rate = sum(w * (u - mean_u) * (s - mean_s) for w, (u, s) in zip(weights, samples)) / spread
        if rate <= 0:  # noise, or a cost that does not follow the size: nothing to refuse by
            return None
        overhead = mean_s - rate * mean_u
        if overhead < 0:  # noise put the overhead below zero: a rate through the origin
            overhead = 0.0
            rate = sum(w * u * s for w, (u, s) in zip(weights, samples)) / sum(w * u * u for w, (u, _) in
                                                                              zip(weights, samples))
        noise = None
        if n > 2:
            residuals = sum(w * (s - overhead - rate * u) ** 2 for w, (u, s) in zip(weights, samples))
            noise = math.sqrt(residuals / (n - 2))
        return Fit(overhead, rate, n, mean_u, spread, noise)

    def estimate(self, units: float | None) -> float | None:
        fitted = self.fit()
        return None if fitted is None or units is None else fitted.estimate(units)

    def lower_bound(self, units: float | None) -> float | None:
        fitted = self.fit()
        return None if fitted is None or units is None else fitted.lower_bound(units)

    def facts(self) -> dict[str, float | int | None]:
        fitted = self.fit()
        return {"overhead_seconds": fitted.overhead if fitted else None,
                "seconds_per_unit": fitted.rate if fitted else None,
                "noise_seconds": fitted.noise if fitted else None,
                "samples": len(self._samples)}
