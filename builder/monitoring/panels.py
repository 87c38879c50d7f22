"""What the dashboard shows and what the alert rules watch, as PromQL over builder/metrics.py's
series: one definition that the Grafana dashboard, the alert rules and the pipeline test share.

Each query first takes `max without (instance, job)`: a ledger pushed by several runners (one
shared PostgreSQL ledger) appears once per runner's Pushgateway group with the same totals, and
counts once; then it sums over ledgers (runners with ledgers of their own). Windows are fixed
(WINDOW for downloads, DAY for builds, pushes and deploys) rather than Grafana's $__interval, so
every query means the same in Grafana, in the alert rules and through Prometheus's HTTP API.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.ranking import TARGET_RATIO

WINDOW = "1h"  # downloads: the success ratio's window, in the dashboard and the alert alike
DAY = "1d"
TRIED = 'outcome=~"ok|retry|failed"'  # cache hits are no mirror's attempts


@dataclass(frozen=True)
class Query:
    legend: str  # Grafana's legend format, e.g. "{{mirror}}"
    expr: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str  # a Grafana unit id: percentunit, Bps, s, bytes, short
    queries: tuple[Query, ...]
    row: str
    threshold: float | None = None  # drawn as a dashed line (the success target)
    bars: bool = False  # counts per window read better as bars


def once(expr: str) -> str:
    """Each ledger once, whichever runners pushed it."""
    return f"max without (instance, job) ({expr})"


def summed(expr: str, by: str = "") -> str:
    return f"sum{f' by ({by})' if by else ''} ({once(expr)})"


def increase(metric: str, selector: str = "", window: str = WINDOW) -> str:
    return f"increase({metric}{{{selector}}}[{window}])" if selector else f"increase({metric}[{window}])"


def ratio(metric_ok: str, metric_all: str, by: str = "") -> str:
    return f"{summed(metric_ok, by)} / {summed(metric_all, by)}"


def download_ratio(by: str = "") -> str:
    return ratio(increase("builder_download_attempts_total", 'outcome="ok"'),
                 increase("builder_download_attempts_total", TRIED), by)


def downloads_tried() -> str:
    return summed(increase("builder_download_attempts_total", TRIED))


PANELS: tuple[Panel, ...] = (
    Panel("Download success ratio", f"Share of download attempts that succeeded over the last {WINDOW}, per mirror and "
          f"over all mirrors, against the {TARGET_RATIO:.0%} target. A retry counts as a failed attempt.",
          "percentunit", (Query("{{mirror}}", download_ratio("mirror")), Query("all mirrors", download_ratio())),
          "Downloads", threshold=TARGET_RATIO),
    Panel("Download throughput per mirror", f"Bytes per second of the successful downloads over the last {WINDOW}.",
          "Bps", (Query("{{mirror}}", ratio(increase("builder_download_bytes_total", 'outcome="ok"'),
                                            increase("builder_download_seconds_total", 'outcome="ok"'), "mirror")),),
          "Downloads"),
    Panel("Build outcomes per model", f"Finished builds over the last {DAY}: pushed, built (not pushed), failed, "
          "interrupted.", "short",
          (Query("{{model}} {{outcome}}", summed(increase("builder_builds_total", window=DAY), "model, outcome")),),
          "Builds", bars=True),
    Panel("Build phase durations per model", f"Mean seconds of each phase (image build, smoke gate, push) over the "
          f"builds of the last {DAY} that reached it.", "s",
          (Query("{{model}} {{phase}}", ratio(increase("builder_build_phase_seconds_sum", window=DAY),
                                              increase("builder_build_phase_seconds_count", window=DAY),
                                              "model, phase")),),
          "Builds"),
    Panel("Smoke test: load and inference time per version", "The newest smoke test of each version (the newest "
          "versions of each model): seconds to load the model, and for one inference.", "s",
          (Query("{{model}} {{version}} {{phase}}", "max by (model, version, phase) (builder_smoke_seconds)"),),
          "Smoke"),
    Panel("Image and weights size per version", "The image as the registry lists its layers (weights uncompressed, "
          "code gzipped), and the weights its manifest pins.", "bytes",
          (Query("{{model}} {{version}} image", "max by (model, version) (builder_image_bytes)"),
           Query("{{model}} {{version}} weights", "max by (model, version) (builder_weights_bytes)")),
          "Images"),
    Panel("Push speed", f"Image bytes per second of each model's newest push, and over its pushes of the last {DAY} "
          "(layers already in the registry count: how fast a version reaches it).", "Bps",
          (Query("{{model}} newest", "max by (model) (builder_last_push_bytes_per_second)"),
           Query(f"{{{{model}}}} {DAY}", ratio(increase("builder_push_bytes_total", window=DAY),
                                               increase("builder_push_seconds_total", window=DAY), "model"))),
          "Images"),
    Panel("Deploys and rollbacks", f"Deployments over the last {DAY} by model, kind (a rollback puts a target on an "
          "older version) and outcome.", "short",
          (Query("{{model}} {{kind}} {{outcome}}", summed(increase("builder_deployments_total", window=DAY),
                                                          "model, kind, outcome")),),
          "Deploys", bars=True),
)
