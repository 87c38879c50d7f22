"""The ledger's figures in the Prometheus text format: `builder stats --prometheus`.

For node_exporter's textfile collector (write the file atomically into its directory) or a
Pushgateway (the build workflow pushes it when PUSHGATEWAY_URL is set). The figures are
builder/figures.py's: counters are totals over the ledger's rows, so they only grow while the
ledger does (a fresh ledger, on a new CI runner, starts again at zero, which rate() and
increase() read as a reset); gauges say what the newest rows say.

Every series carries `ledger`, the ledger's identity. Several runners writing one PostgreSQL
ledger each push the same totals under their own grouping key; the dashboard and the alert
rules (builder/monitoring/) first take `max without (instance, job)`, which counts each ledger
once, then sum over ledgers, which counts runners with ledgers of their own each once too.
Counters are written with a zero for every outcome of every model seen, so a first failure is an
increase from 0, not a series that appears already at 1 (which increase() cannot see).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from builder.figures import DEPLOY_OUTCOMES, Figures, collect
from builder.ledger import Ledger


def _family(kind, name: str, doc: str, labels: list[str]):
    return kind(name, doc, labels=["ledger", *labels])


class LedgerCollector:
    """Reads the ledger at each collect(): one scrape, one consistent read."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        figures = collect(self.ledger)
        for part in (_downloads, _builds, _smokes, _sizes, _pushes, _deployments):
            yield from part(figures)


def _downloads(f: Figures) -> Iterator[Metric]:
    labels = ["model", "mirror", "outcome"]
    attempts = _family(CounterMetricFamily, "builder_download_attempts", "Download attempts of weight files, by "
                       "model, mirror and outcome (ok, retry, failed, cached).", labels)
    sizes = _family(CounterMetricFamily, "builder_download_bytes", "Bytes the download attempts moved.", labels)
    seconds = _family(CounterMetricFamily, "builder_download_seconds", "Seconds the download attempts took.", labels)
    for (model, mirror, outcome), (count, size, spent) in f.downloads.items():
        attempts.add_metric([f.ledger, model, mirror, outcome], count)
        sizes.add_metric([f.ledger, model, mirror, outcome], size)
        seconds.add_metric([f.ledger, model, mirror, outcome], spent)
    in_a_row = _family(GaugeMetricFamily, "builder_mirror_failures_in_a_row", "Attempts on the mirror that failed or "
                       "were retried since its last successful download.", ["mirror"])
    last = _family(GaugeMetricFamily, "builder_mirror_last_failure_timestamp_seconds", "When the newest of those "
                   "failures was (Unix time).", ["mirror"])
    for mirror, (count, at) in sorted(f.failing.items()):
        in_a_row.add_metric([f.ledger, mirror], count)
        last.add_metric([f.ledger, mirror], at)
    yield from (attempts, sizes, seconds, in_a_row, last)


def _builds(f: Figures) -> Iterator[Metric]:
    builds = _family(CounterMetricFamily, "builder_builds", "Finished builds by model and outcome (failed, built, "
                     "pushed, interrupted).", ["model", "outcome"])
    for (model, outcome), count in sorted(f.builds.items()):
        builds.add_metric([f.ledger, model, outcome], count)
    running = _family(GaugeMetricFamily, "builder_builds_running", "Builds not finished (running, or killed without a "
                      "trace).", ["model"])
    for model, count in sorted(f.running.items()):
        running.add_metric([f.ledger, model], count)
    durations = _family(SummaryMetricFamily, "builder_build_phase_seconds", "Seconds per phase of the builds that "
                        "reached it: build (image), smoke (the gate), push.", ["model", "phase"])
    for (model, phase), values in sorted(f.phases.items()):
        durations.add_metric([f.ledger, model, phase], count_value=len(values), sum_value=sum(values))
    newest = _family(GaugeMetricFamily, "builder_last_build_timestamp_seconds", "When the newest build of each model "
                     "and outcome finished (Unix time): alert when no push is recent.", ["model", "outcome"])
    for (model, outcome), at in sorted(f.last_build.items()):
        newest.add_metric([f.ledger, model, outcome], at)
    yield from (builds, running, durations, newest)


def _smokes(f: Figures) -> Iterator[Metric]:
    results = _family(CounterMetricFamily, "builder_smoke_results", "Smoke tests by model and outcome (passed, "
                      "failed).", ["model", "outcome"])
    for (model, outcome), count in sorted(f.smokes.items()):
        results.add_metric([f.ledger, model, outcome], count)
    newest = _family(GaugeMetricFamily, "builder_last_smoke_timestamp_seconds", "When the newest smoke test of each "
                     "model and outcome ran (Unix time).", ["model", "outcome"])
    for (model, outcome), at in sorted(f.last_smoke.items()):
        newest.add_metric([f.ledger, model, outcome], at)
    seconds = _family(GaugeMetricFamily, "builder_smoke_seconds", "The newest smoke test of each version: seconds to "
                      "load the model, and for the inference.", ["model", "version", "phase"])
    for (model, version, phase), value in sorted(f.smoke_seconds.items()):
        seconds.add_metric([f.ledger, model, version, phase], value)
    yield from (results, newest, seconds)


def _sizes(f: Figures) -> Iterator[Metric]:
    image = _family(GaugeMetricFamily, "builder_image_bytes", "Bytes of each version's image as the registry lists "
                    "its layers (weights uncompressed, code gzipped).", ["model", "version"])
    for (model, version), value in sorted(f.image_bytes.items()):
        image.add_metric([f.ledger, model, version], value)
    weights = _family(GaugeMetricFamily, "builder_weights_bytes", "Bytes of each version's weights (its manifest's "
                      "artifacts).", ["model", "version"])
    for (model, version), value in sorted(f.weights_bytes.items()):
        weights.add_metric([f.ledger, model, version], value)
    yield from (image, weights)


def _pushes(f: Figures) -> Iterator[Metric]:
    sent = _family(CounterMetricFamily, "builder_push_bytes", "Image bytes of the pushes (layers already in the "
                   "registry included).", ["model"])
    spent = _family(CounterMetricFamily, "builder_push_seconds", "Seconds the pushes took.", ["model"])
    last = _family(GaugeMetricFamily, "builder_last_push_bytes_per_second", "Speed of each model's newest push.",
                   ["model"])
    usual = _family(GaugeMetricFamily, "builder_push_usual_bytes_per_second", "A model's usual push speed: the median "
                    "of its pushes before the newest (written once there are 3).", ["model"])
    for model in sorted({p.model for p in f.pushes}):
        mine = [p for p in f.pushes if p.model == model]
        sent.add_metric([f.ledger, model], sum(p.bytes for p in mine))
        spent.add_metric([f.ledger, model], sum(p.seconds for p in mine))
        last.add_metric([f.ledger, model], mine[-1].speed)
        typical = f.usual_push_speed(model)
        if typical is not None:
            usual.add_metric([f.ledger, model], typical)
    yield from (sent, spent, last, usual)


def _deployments(f: Figures) -> Iterator[Metric]:
    deployments = _family(CounterMetricFamily, "builder_deployments", "Deployments by model, kind (deploy, or rollback: "
                          "to an older version than the target ran) and outcome (healthy, timeout, failed).",
                          ["model", "kind", "outcome"])
    counts = {(model, kind, outcome): 0 for model in f.models for kind in ("deploy", "rollback")
              for outcome in DEPLOY_OUTCOMES}
    for d in f.deployments:
        counts[d.model, d.kind, d.outcome] += 1
    for (model, kind, outcome), count in sorted(counts.items()):
        deployments.add_metric([f.ledger, model, kind, outcome], count)
    yield deployments


def prometheus_text(ledger: Ledger) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger))
    return generate_latest(registry).decode("utf-8")
