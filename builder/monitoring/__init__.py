"""Monitoring as code: the Grafana dashboard and the Prometheus alert rules for the ledger's
figures (builder/metrics.py), both generated from panels.py's PromQL and committed beside it.

`python -m builder monitoring --write` regenerates them; `--check` (what the tests run) fails
when a committed file is not what the code generates, as `builder schema --check` does for the
manifest schema.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from builder.monitoring.alerts import rules_yaml
from builder.monitoring.dashboard import dashboard_json

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "dashboard.json"
ALERTS = HERE / "alerts.yml"
_GENERATORS: dict[Path, Callable[[], str]] = {DASHBOARD: dashboard_json, ALERTS: rules_yaml}


def generated() -> dict[Path, str]:
    """Each committed file and the text the code makes for it now."""
    return {path: make() for path, make in _GENERATORS.items()}


def stale() -> list[Path]:
    """The committed files that differ from what the code generates (or are missing)."""
    return [path for path, text in generated().items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def write() -> list[Path]:
    written = []
    for path, text in generated().items():
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


__all__ = ["ALERTS", "DASHBOARD", "generated", "stale", "write"]
