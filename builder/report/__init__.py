"""`builder report --html FILE`: the dashboard's figures as one self-contained page, for people
without Grafana. The numbers are builder/figures.py's, the ones `stats --prometheus` gives the
dashboard; downloads are drawn per day over the ledger's last HORIZON_DAYS (the rows the mirror
ranking reads), where the dashboard draws a sliding hour.

One HTML file: inline CSS and SVG, no script, no font, no link out; a Content-Security-Policy of
default-src 'none' makes a browser refuse anything that would reach out. Each chart has its
figures in a table under it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from html import escape
from pathlib import Path

from builder import __version__
from builder.figures import BUILD_OUTCOMES, PHASES, Figures, collect
from builder.ledger import Ledger
from builder.ranking import HORIZON_DAYS, TARGET_RATIO, MirrorAttempt
from builder.report._svg import bars, lines

_DAY = 86400
_OUTCOME_ORDER = tuple(sorted(BUILD_OUTCOMES, key=("pushed", "built", "failed", "interrupted").index))
_OUTCOME_COLORS = ("#3ca951", "#4269d0", "#ff725c", "#efb118", "#9498a0")  # pushed, built, failed, interrupted, running
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 780px; color: #1d1d1f; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 32px; }
.chart { width: 100%; height: auto; } .chart text { font-size: 11px; fill: #444; }
.chart .grid { stroke: #e4e4e7; } .chart .target { stroke: #c0392b; stroke-dasharray: 6 4; stroke-width: 1.5; }
table { border-collapse: collapse; font-size: 12px; margin-top: 6px; }
td, th { border-bottom: 1px solid #e4e4e7; padding: 2px 10px 2px 0; text-align: right; }
td:first-child, th:first-child { text-align: left; } .empty, .meta { color: #666; }
"""


def _pct(v: float) -> str:
    return f"{v:.0%}"


def _bytes(v: float) -> str:
    for unit, step in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= step:
            return f"{v / step:.1f} {unit}"
    return f"{v:.0f} B"


def _rate(v: float) -> str:
    return _bytes(v) + "/s"


def _seconds(v: float) -> str:
    return f"{v:.1f} s" if v < 600 else f"{v / 60:.0f} min"


def _count(v: float) -> str:
    return f"{v:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, note: str, chart: str | None, table: str) -> str:
    inner = chart + table if chart else '<p class="empty">Nothing in the ledger yet.</p>'
    return f'<section><h2>{escape(title)}</h2><p class="meta">{escape(note)}</p>{inner}</section>'


# -- the figures, drawn --------------------------------------------------------------------------
def _day(at: float | None) -> str:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%d") if at is not None else "-"


def _per_day(rows: list[MirrorAttempt]) -> tuple[list[float], dict[str, dict[float, list[float]]]]:
    """Days with attempts, and per mirror (and "all mirrors") per day: [ok, tried, ok bytes, ok seconds]."""
    sums: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0.0, 0.0]))
    for row in rows:
        day = float(int(row.at // _DAY) * _DAY)
        for key in (row.mirror, "all mirrors"):
            s = sums[key][day]
            s[1] += 1
            if row.outcome == "ok":
                s[0] += 1
                s[2] += row.bytes
                s[3] += row.seconds
    days = sorted({d for per in sums.values() for d in per})
    return days, sums


def _downloads(rows: list[MirrorAttempt]) -> list[str]:
    days, sums = _per_day(rows)
    names = sorted(k for k in sums if k != "all mirrors") + ["all mirrors"] if sums else []
    ratio = [(n, [sums[n][d][0] / sums[n][d][1] if d in sums[n] else None for d in days]) for n in names]
    speed = [(n, [sums[n][d][2] / sums[n][d][3] if d in sums[n] and sums[n][d][3] > 0 else None for d in days])
             for n in names if n != "all mirrors"]
    totals = {n: [sum(day[i] for day in sums[n].values()) for i in range(4)] for n in names}
    newest = days[-1] if days else None
    table = _table(["mirror", "attempts", "success", f"success on {_day(newest)}" if newest else "newest day",
                    "throughput"],
                   [[n, _count(t[1]), _pct(t[0] / t[1]),
                     _pct(sums[n][newest][0] / sums[n][newest][1]) if newest in sums[n] else "-",
                     _rate(t[2] / t[3]) if t[3] > 0 else "-"] for n, t in totals.items()])
    return [
        _section("Download success ratio", f"Share of attempts that succeeded, per day and mirror, against the "
                 f"{TARGET_RATIO:.0%} target (dashed). A retry counts as a failed attempt; cache hits are no mirror's.",
                 lines("download success ratio", days, ratio, _pct, target=TARGET_RATIO, top=1.0) if days else None,
                 table),
        _section("Download throughput per mirror", "Bytes per second of the successful downloads, per day.",
                 lines("download throughput", days, speed, _rate) if days else None, ""),
    ]


def _builds(f: Figures) -> list[str]:
    models = sorted({m for m, _ in f.builds} | set(f.running))
    outcomes = [(o, [float(f.builds.get((m, o), 0)) for m in models]) for o in _OUTCOME_ORDER]
    outcomes.append(("running", [float(f.running.get(m, 0)) for m in models]))
    phased = sorted({m for m, _ in f.phases})
    means = [(p, [sum(f.phases.get((m, p), [])) / len(f.phases[(m, p)]) if (m, p) in f.phases else 0.0 for m in phased])
             for p in PHASES]
    return [
        _section("Build outcomes per model", "Every build in the ledger: pushed, built (not pushed), failed, "
                 "interrupted, and still running (or killed without a trace).",
                 bars("build outcomes", models, outcomes, _count, stacked=True, colors=_OUTCOME_COLORS)
                 if models else None,
                 _table(["model", *[o for o, _ in outcomes]], [[m, *[_count(v[i]) for _, v in outcomes]]
                                                                for i, m in enumerate(models)])),
        _section("Build phase durations per model", "Mean seconds of each phase over the builds that reached it.",
                 bars("build phase durations", phased, means, _seconds) if phased else None,
                 _table(["model", *PHASES], [[m, *[_seconds(v[i]) for _, v in means]] for i, m in enumerate(phased)])),
    ]


def _versions(f: Figures) -> list[str]:
    smoked = sorted({(m, v) for m, v, _ in f.smoke_seconds})
    smoke = [(p, [f.smoke_seconds.get((m, v, p), 0.0) for m, v in smoked]) for p in ("load", "inference")]
    sized = sorted(set(f.image_bytes) | set(f.weights_bytes))
    sizes = [("image", [float(f.image_bytes.get(k, 0)) for k in sized]),
             ("weights", [float(f.weights_bytes.get(k, 0)) for k in sized])]
    return [
        _section("Smoke test: load and inference time per version", "The newest smoke test of each version.",
                 bars("smoke test times", [f"{m} {v}" for m, v in smoked], smoke, _seconds) if smoked else None,
                 _table(["version", "load", "inference"], [[f"{m} {v}", *[_seconds(vals[i]) for _, vals in smoke]]
                                                           for i, (m, v) in enumerate(smoked)])),
        _section("Image and weights size per version", "The image as the registry lists its layers (weights "
                 "uncompressed, code gzipped), and the weights its manifest pins.",
                 bars("image and weights sizes", [f"{m} {v}" for m, v in sized], sizes, _bytes) if sized else None,
                 _table(["version", "image", "weights"], [[f"{m} {v}", *[_bytes(vals[i]) for _, vals in sizes]]
                                                          for i, (m, v) in enumerate(sized)])),
    ]


def _pushes(f: Figures) -> str:
    shown = f.pushes[-20:]
    labels = [f"{p.model} {p.version}" for p in shown]
    usual = {m: f.usual_push_speed(m) for m in {p.model for p in shown}}
    return _section("Push speed", "Image bytes per second of the newest pushes (layers already in the registry count: "
                    "how fast a version reaches it); a model's usual speed is the median of its pushes before the newest.",
                    bars("push speed", labels, [("push", [p.speed for p in shown])], _rate) if shown else None,
                    _table(["push", "bytes", "seconds", "speed", "model's usual"],
                           [[label, _bytes(p.bytes), _seconds(p.seconds), _rate(p.speed),
                             _rate(usual[p.model]) if usual[p.model] else "-"] for label, p in zip(labels, shown)]))


def _deployments(f: Figures) -> str:
    models = sorted({d.model for d in f.deployments})
    kinds = [(f"{kind} {outcome}", [float(sum(1 for d in f.deployments if (d.model, d.kind, d.outcome) == (m, kind, outcome)))
                                    for m in models])
             for kind in ("deploy", "rollback") for outcome in ("healthy", "timeout", "failed")]
    kinds = [k for k in kinds if any(k[1])]
    return _section("Deploys and rollbacks", "Every deployment by model: a rollback puts a target on an older version "
                    "than it ran.", bars("deploys and rollbacks", models, kinds, _count, stacked=True) if models else None,
                    _table(["model", *[k for k, _ in kinds]], [[m, *[_count(v[i]) for _, v in kinds]]
                                                               for i, m in enumerate(models)]))


def render(ledger: Ledger, now: float | None = None) -> str:
    now = time.time() if now is None else now
    figures = collect(ledger)
    sections = [*_downloads(ledger.mirror_ranking(now)), *_builds(figures), *_versions(figures), _pushes(figures),
                _deployments(figures)]
    stamp = dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>builder: downloads, builds, images, deploys</title>", f"<style>{_STYLE}</style></head><body>",
        "<h1>builder: downloads, builds, images, deploys</h1>",
        f'<p class="meta">From the ledger at {escape(str(ledger.location))} (id {escape(ledger.identity)}), {stamp}; '
        f"downloads over the last {HORIZON_DAYS:.0f} days. Made by builder {escape(__version__)}: "
        "<code>python -m builder report --html FILE</code>.</p>",
        *sections, "</body></html>", ""])


def write_report(ledger: Ledger, path: Path, now: float | None = None) -> Path:
    path.write_text(render(ledger, now), encoding="utf-8")
    return path
