"""Monitoring as code (builder/monitoring/): the committed dashboard and alert rules are what the
code generates; promtool checks and unit-tests the rules (tests/monitoring/alerts_test.yml);
and through a real Prometheus scraping a real Pushgateway, fed by the build workflow's own
metrics step, every panel's query returns data and the alerts fire. Here the ledger's rows are
written directly, so it runs without an engine; tests/test_docker_monitoring.py does the same
with real builds."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from builder import monitoring
from builder.fetch import Attempt
from builder.ledger import Ledger
from builder.monitoring.panels import PANELS
from tests.conftest import ROOT, run_builder
from tests.prometheus_stack import Stack, finite, prometheus_stack, push_metrics  # noqa: F401 - a fixture

ALERT_NAMES = {"BuilderDownloadSuccessLow", "BuilderMirrorFailing", "BuilderSmokeFailed", "BuilderPushSlow"}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run `make env` (tests/env/up.sh installs Debian's prometheus)")
    return found


def test_the_committed_files_are_what_the_code_generates() -> None:
    run = run_builder(["monitoring", "--check"], {"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "dashboard.json and alerts.yml are up to date"


def test_a_committed_file_that_drifted_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    copy = tmp_path / "dashboard.json"
    copy.write_text(monitoring.DASHBOARD.read_text().replace('"refresh": "5m"', '"refresh": "1m"'))
    monkeypatch.setattr(monitoring, "_GENERATORS", {copy: monitoring.dashboard_json,
                                                     monitoring.ALERTS: monitoring.rules_yaml})
    assert monitoring.stale() == [copy]


def test_promtool_checks_the_rules_and_their_unit_tests_pass() -> None:
    promtool = _promtool()
    check = subprocess.run([promtool, "check", "rules", str(monitoring.ALERTS)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 4 rules found" in check.stdout, check.stdout + check.stderr
    tests = ROOT / "tests" / "monitoring"
    unit = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=tests, capture_output=True, text=True)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
    rules = {line.split(":", 1)[1].strip() for line in monitoring.ALERTS.read_text().splitlines()
             if line.strip().startswith("- alert:")}
    tested = {line.split(":", 1)[1].strip() for line in (tests / "alerts_test.yml").read_text().splitlines()
              if line.strip().startswith("alertname:")}
    assert rules == tested == ALERT_NAMES  # every rule has unit tests


def test_the_dashboard_has_every_panel_its_queries_and_the_target_line() -> None:
    board = json.loads(monitoring.DASHBOARD.read_text())
    panels = [p for p in board["panels"] if p["type"] == "timeseries"]
    assert [p["title"] for p in panels] == [p.title for p in PANELS]
    assert [[t["expr"] for t in p["targets"]] for p in panels] == [[q.expr for q in p.queries] for p in PANELS]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["templating"]["list"][0]["type"] == "datasource"
    assert all(t["datasource"]["uid"] == "${datasource}" for p in panels for t in p["targets"])
    ratio = panels[0]["fieldConfig"]["defaults"]
    assert ratio["custom"]["thresholdsStyle"]["mode"] == "dashed"
    assert [s["value"] for s in ratio["thresholds"]["steps"]] == [None, 0.95]
    assert board["uid"] == "builder-overview"


# -- through a real Prometheus -------------------------------------------------------------------
def _build(ledger: Ledger, build_id: str, model: str, version: str, outcome: str, *, push_seconds: float = 1.0,
           smoke: bool | None = True) -> None:
    ledger.start_build(build_id, model, version, "sha256:m", "0.1.0", None)
    ledger.record_weights(build_id, 6_000_000)
    if smoke is not None:
        ledger.record_smoke(build_id, "img", {"passed": smoke, "load_seconds": 2.5, "inference_seconds": 0.4})
    pushed = outcome == "pushed"
    ledger.finish_build(build_id, outcome, digest=f"sha256:{build_id}" if pushed else None,
                        seconds={"build": 8.0, "smoke": 4.0, **({"push": push_seconds} if pushed else {})},
                        layers=[{"digest": "sha256:w", "size": 6_000_000}, {"digest": "sha256:c", "size": 40_000}]
                        if pushed else None)
    if pushed:
        ledger.record_push(build_id, f"r/{model}", version, f"sha256:{build_id}", "pushed")


def _downloads(ledger: Ledger, build_id: str, outcome: str, n: int) -> None:
    ledger.record_attempts([Attempt("flux", "ns/flux", "a" * 40, f"f{i}", "hub", 1_000_000 if outcome == "ok" else 0,
                                    0.5, outcome, None if outcome == "ok" else "503") for i in range(n)], build_id)


def test_every_panel_returns_data_and_the_alerts_fire(tmp_path: Path, prometheus_stack: Stack) -> None:
    path = str(tmp_path / "ledger.sqlite3")
    ledger = Ledger(path)
    for number in range(3):  # three pushes at 6 MB/s make a usual speed
        _downloads(ledger, f"b{number}", "ok", 10)
        _build(ledger, f"b{number}", "flux", f"1.{number}.0", "pushed")
    ledger.record_deployment("flux", "1.2.0", "sha256:b2", "endpoint:e1", "healthy", "sha256:b1", "ok", 2.0)
    push_metrics(tmp_path, path, prometheus_stack, "gpu-1")
    assert not prometheus_stack.firing()

    # Then a day with trouble: a mirror failing, a smoke failing, a slow push, a rollback.
    _downloads(ledger, "b3", "ok", 4)
    _build(ledger, "b3", "flux", "1.3.0", "pushed", push_seconds=30.0)
    _downloads(ledger, "b4", "failed", 6)
    _build(ledger, "b4", "flux", "1.3.1", "failed", smoke=False)
    ledger.record_deployment("flux", "1.1.0", "sha256:b1", "endpoint:e1", "healthy", "sha256:b2", "ok", 2.0)
    push_metrics(tmp_path, path, prometheus_stack, "gpu-1")
    push_metrics(tmp_path, path, prometheus_stack, "gpu-2")  # a second runner on the same ledger: counted once

    for panel in PANELS:
        for query in panel.queries:
            assert finite(prometheus_stack.query(query.expr)), f"{panel.title}: no data for {query.expr}"
    firing = prometheus_stack.wait_for_alerts(*ALERT_NAMES)
    labels = {a["labels"]["alertname"]: a["labels"] for a in firing}
    assert {a["labels"]["mirror"] for a in firing if a["labels"]["alertname"] == "BuilderMirrorFailing"} == {"hub"}
    assert labels["BuilderSmokeFailed"]["model"] == labels["BuilderPushSlow"]["model"] == "flux"
    rollbacks = prometheus_stack.query(next(p for p in PANELS if p.title == "Deploys and rollbacks").queries[0].expr)
    counted = {(r["metric"]["kind"], r["metric"]["outcome"]): float(r["value"][1]) for r in rollbacks}
    assert counted[("rollback", "healthy")] >= 1  # the increase from 0: the second runner did not double it
    assert counted[("rollback", "healthy")] < 2
