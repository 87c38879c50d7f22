"""The ledger's figures in the Prometheus text format: `builder stats --prometheus`.

For node_exporter's textfile collector (write the file atomically into its directory) or a
Pushgateway (the build workflow pushes it when PUSHGATEWAY_URL is set). Every figure is a total
over the ledger's rows, so a counter only grows while the ledger does; a fresh ledger (a new CI
runner) starts again at zero, which Prometheus's rate() and increase() read as a reset.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from builder.ledger import Ledger

PHASES = ("build", "smoke", "push")
FINISHED = ("failed", "built", "pushed", "interrupted")


class LedgerCollector:
    """Reads the ledger at each collect(): one scrape, one consistent read."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        yield from self._downloads()
        yield from self._builds()

    def _downloads(self) -> Iterator[Metric]:
        labels = ["model", "mirror", "outcome"]
        attempts = CounterMetricFamily("builder_download_attempts", "Download attempts of weight files, by model, "
                                       "mirror and outcome (ok, retry, failed, cached).", labels=labels)
        sizes = CounterMetricFamily("builder_download_bytes", "Bytes the download attempts moved.", labels=labels)
        seconds = CounterMetricFamily("builder_download_seconds", "Seconds the download attempts took.", labels=labels)
        for model, mirror, outcome, count, size, spent in self.ledger.download_totals():
            attempts.add_metric([model, mirror, outcome], count)
            sizes.add_metric([model, mirror, outcome], size)
            seconds.add_metric([model, mirror, outcome], spent)
        yield from (attempts, sizes, seconds)

    def _builds(self) -> Iterator[Metric]:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        phases: dict[tuple[str, str], list[float]] = defaultdict(list)
        last: dict[tuple[str, str], float] = {}
        for model, status, seconds, started, finished in self.ledger.build_rows():
            counts[model, status] += 1
            for phase in PHASES:
                if phase in seconds:
                    phases[model, phase].append(float(seconds[phase]))
            if status in FINISHED:
                last[model, status] = max(last.get((model, status), 0.0), finished or started)
        builds = CounterMetricFamily("builder_builds", "Builds by model and outcome (running: not finished, or "
                                     "killed without a trace).", labels=["model", "outcome"])
        for (model, status), count in sorted(counts.items()):
            builds.add_metric([model, status], count)
        durations = SummaryMetricFamily("builder_build_phase_seconds", "Seconds per phase of the builds that "
                                        "reached it: build (image), smoke (the gate), push.", labels=["model", "phase"])
        for (model, phase), values in sorted(phases.items()):
            durations.add_metric([model, phase], count_value=len(values), sum_value=sum(values))
        newest = GaugeMetricFamily("builder_last_build_timestamp_seconds", "When the newest build of each model and "
                                   "outcome finished (Unix time): alert when no push is recent.",
                                   labels=["model", "outcome"])
        for (model, status), at in sorted(last.items()):
            newest.add_metric([model, status], at)
        yield from (builds, durations, newest)


def prometheus_text(ledger: Ledger) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger))
    return generate_latest(registry).decode("utf-8")
