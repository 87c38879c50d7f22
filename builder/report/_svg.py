"""Two charts as inline SVG, enough for the report: bars (grouped or stacked, per category) and
lines over time (with an optional dashed target line). No script, no font, no external anything:
the page must open from a file, offline, under a Content-Security-Policy of default-src 'none'.
Every mark carries a <title>, so hovering shows the exact figure.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from html import escape

PALETTE = ("#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e", "#9498a0")
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 12, 64
Fmt = Callable[[float], str]


def _nice_max(value: float) -> float:
    """A round axis top at or above value (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value)


def _frame(label: str, top: float, fmt: Fmt) -> list[str]:
    """The plot's grid and y-axis labels (five steps from 0 to top)."""
    inner_h = HEIGHT - TOP - BOTTOM
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="{escape(label)}" class="chart">']
    for i in range(6):
        y = TOP + inner_h - inner_h * i / 5
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(top * i / 5))}</text>')
    return parts


def _legend(names: Sequence[str], y: float, colors: Sequence[str] = PALETTE) -> list[str]:
    parts, x = [], LEFT
    for i, name in enumerate(names):
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colors[i % len(colors)]}"/>')
        parts.append(f'<text x="{x + 14}" y="{y}">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return parts


def bars(label: str, categories: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], fmt: Fmt,
         stacked: bool = False, colors: Sequence[str] = PALETTE) -> str:
    """One group of bars per category, one bar per series (or one stacked bar per category)."""
    totals = [sum(values[i] for _, values in series) for i in range(len(categories))]
    peaks = totals if stacked else [max((values[i] for _, values in series), default=0) for i in range(len(categories))]
    top = _nice_max(max(peaks, default=0))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / max(len(categories), 1)
    width = slot * 0.7 / (1 if stacked else max(len(series), 1))
    parts = _frame(label, top, fmt)
    for c, category in enumerate(categories):
        base = TOP + inner_h
        for s, (name, values) in enumerate(series):
            height = inner_h * values[c] / top
            x = LEFT + slot * c + slot * 0.15 + (0 if stacked else width * s)
            y = base - height if stacked else TOP + inner_h - height
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" '
                         f'fill="{colors[s % len(colors)]}"><title>{escape(category)} {escape(name)}: '
                         f'{escape(fmt(values[c]))}</title></rect>')
            if stacked:
                base -= height
        parts.append(f'<text x="{LEFT + slot * (c + 0.5):.1f}" y="{TOP + inner_h + 16}" text-anchor="middle">'
                     f'{escape(category)}</text>')
    parts += _legend([name for name, _ in series], HEIGHT - 16, colors)
    return "\n".join(parts + ["</svg>"])


def lines(label: str, days: Sequence[float], series: Sequence[tuple[str, Sequence[float | None]]], fmt: Fmt,
          target: float | None = None, top: float | None = None) -> str:
    """Values per day (Unix time of each day's start), one line per series; a gap where a value is None."""
    peak = max((v for _, values in series for v in values if v is not None), default=0)
    top = top if top is not None else _nice_max(max(peak, target or 0))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max(days[-1] - days[0], 1) if days else 1

    def xy(day: float, value: float) -> tuple[float, float]:
        x = LEFT + inner_w * ((day - days[0]) / span if len(days) > 1 else 0.5)
        return x, TOP + inner_h - inner_h * min(value, top) / top

    parts = _frame(label, top, fmt)
    for day, anchor in ((days[0], "start"), (days[-1], "end")) if len(days) > 1 else ((d, "middle") for d in days):
        x, _ = xy(day, 0)
        stamp = dt.datetime.fromtimestamp(day, dt.timezone.utc).strftime("%Y-%m-%d")
        parts.append(f'<text x="{x:.1f}" y="{TOP + inner_h + 16}" text-anchor="{anchor}">{stamp}</text>')
    if target is not None:
        _, y = xy(days[0] if days else 0, target)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="target">'
                     f'<title>target {escape(fmt(target))}</title></line>')
    for s, (name, values) in enumerate(series):
        color = PALETTE[s % len(PALETTE)]
        points = [(day, v) for day, v in zip(days, values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(d, v) for d, v in points))
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for day, value in points:
            x, y = xy(day, value)
            stamp = dt.datetime.fromtimestamp(day, dt.timezone.utc).strftime("%Y-%m-%d")
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"><title>{escape(name)} {stamp}: '
                         f'{escape(fmt(value))}</title></circle>')
    parts += _legend([name for name, _ in series], HEIGHT - 16)
    return "\n".join(parts + ["</svg>"])
