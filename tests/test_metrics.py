"""`builder stats --prometheus`: the ledger's figures as a scrape that parses, whose numbers are
the rows put in the ledger, and the build workflow's step that hands them to a Pushgateway."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from builder.fetch import Attempt
from builder.ledger import Ledger
from tests.conftest import ROOT, run_builder
from tests.test_versions import _step

ATTEMPTS = [  # model, mirror, bytes, seconds, outcome
    ("flux", "hub", 1000, 2.0, "ok"), ("flux", "hub", 500, 1.5, "retry"), ("flux", "hub", 0, 0.5, "failed"),
    ("flux", "mirror-eu", 4000, 4.0, "ok"), ("flux", "mirror-eu", 4000, 0.0, "cached"),
    ("xtts", "hub", 250, 0.25, "ok"), ("xtts", "hub", 250, 0.25, "ok"),
]
BUILDS = [  # id, model, outcome, seconds per phase
    ("b1", "flux", "pushed", {"build": 100.0, "smoke": 20.0, "push": 30.0}),
    ("b2", "flux", "failed", {"build": 50.0, "smoke": 5.5}),
    ("b3", "flux", "pushed", {"build": 10.0, "smoke": 19.0, "push": 1.0}),
    ("b4", "xtts", "running", None),
]


def _fill(path: Path) -> None:
    ledger = Ledger(path)
    ledger.record_attempts([Attempt(model, "ns/repo", "a" * 40, "w.bin", mirror, size, seconds, outcome,
                                    None if outcome in ("ok", "cached") else "boom")
                            for model, mirror, size, seconds, outcome in ATTEMPTS], "b1")
    for build_id, model, outcome, seconds in BUILDS:
        ledger.start_build(build_id, model, "1.0.0", "sha256:x", "0.1.0", None)
        if outcome != "running":
            ledger.finish_build(build_id, outcome, seconds=seconds)
    ledger.close()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _expected() -> dict[tuple[str, tuple], float]:
    want: dict[tuple[str, tuple], float] = {}
    for model, mirror, size, seconds, outcome in ATTEMPTS:
        labels = (("mirror", mirror), ("model", model), ("outcome", outcome))
        for name, value in (("builder_download_attempts_total", 1), ("builder_download_bytes_total", size),
                            ("builder_download_seconds_total", seconds)):
            want[name, labels] = want.get((name, labels), 0) + value
    for _, model, outcome, seconds in BUILDS:
        key = ("builder_builds_total", (("model", model), ("outcome", outcome)))
        want[key] = want.get(key, 0) + 1
        for phase, value in (seconds or {}).items():
            labels = (("model", model), ("phase", phase))
            want["builder_build_phase_seconds_count", labels] = want.get(("builder_build_phase_seconds_count", labels), 0) + 1
            want["builder_build_phase_seconds_sum", labels] = want.get(("builder_build_phase_seconds_sum", labels), 0) + value
    return want


def _check(text: str, path: Path) -> None:
    samples = _samples(text)
    stamps = {k: v for k, v in samples.items() if k[0] == "builder_last_build_timestamp_seconds"}
    figures = {k: v for k, v in samples.items() if k not in stamps}
    assert figures == pytest.approx(_expected())
    # the newest finish per model and outcome, as the ledger has it; a running build has none
    import sqlite3

    db = sqlite3.connect(path)
    newest = {("builder_last_build_timestamp_seconds", (("model", m), ("outcome", s))): at for m, s, at in db.execute(
        "SELECT model, status, MAX(finished_at) FROM builds WHERE status != 'running' GROUP BY model, status")}
    assert stamps == newest and len(newest) == 2


def test_a_scrape_parses_and_its_numbers_are_the_ledger_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    _fill(path)
    result = run_builder(["stats", "--prometheus"], {"PATH": "/usr/bin:/bin", "BUILDER_LEDGER": str(path)})
    assert result.returncode == 0, result.stderr
    _check(result.stdout, path)
    types = {f.name: f.type for f in text_string_to_metric_families(result.stdout)}
    assert types == {"builder_download_attempts": "counter", "builder_download_bytes": "counter",  # for rate()
                     "builder_download_seconds": "counter", "builder_builds": "counter",
                     "builder_build_phase_seconds": "summary", "builder_last_build_timestamp_seconds": "gauge"}


def test_an_empty_ledger_is_an_empty_scrape_and_name_is_refused(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "BUILDER_LEDGER": str(tmp_path / "empty.sqlite3")}
    empty = run_builder(["stats", "--prometheus"], env)
    assert empty.returncode == 0, empty.stderr
    assert [(f.name, f.samples) for f in text_string_to_metric_families(empty.stdout)] == [
        (name, []) for name in ("builder_download_attempts", "builder_download_bytes", "builder_download_seconds",
                                "builder_builds", "builder_build_phase_seconds", "builder_last_build_timestamp_seconds")]
    named = run_builder(["stats", "flux", "--prometheus"], env)
    assert named.returncode == 2 and named.stderr.strip() == (
        "error: --prometheus reports every model in its own format: leave out NAME and --json")


class _Pushgateway(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_PUT(self) -> None:  # noqa: N802 - the handler's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(("PUT", self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def pushgateway() -> Iterator[tuple[str, list]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_Pushgateway,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", received
    finally:
        server.shutdown()
        server.server_close()


def test_the_build_workflow_writes_the_file_and_pushes_it(tmp_path: Path, pushgateway) -> None:
    import subprocess
    import sys

    url, received = pushgateway
    path = tmp_path / "ledger.sqlite3"
    _fill(path)
    script, env = _step("Build metrics")
    workflow = yaml.safe_load((ROOT / ".github/workflows/build.yml").read_text())
    keep = next(s for s in workflow["jobs"]["build"]["steps"] if s.get("name") == "Keep the metrics")
    assert (keep["if"], keep["with"]["path"]) == ("always()", "builder-metrics.prom")  # an artifact, pass or fail
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shims / "python").chmod(0o755)
    env.update(PATH=f"{shims}:/usr/bin:/bin", PYTHONPATH=str(ROOT), BUILDER_LEDGER=str(path),
               PUSHGATEWAY_URL=url, RUNNER_NAME="gpu-1", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    work = tmp_path / "work"  # the step's working directory (the project is found from the package)
    work.mkdir()
    step = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert step.returncode == 0, step.stderr
    written = (work / "builder-metrics.prom").read_text()
    assert [(method, where) for method, where, _ in received] == [("PUT", "/metrics/job/builder/instance/gpu-1")]
    assert received[0][2].decode() == written
    _check(written, path)
