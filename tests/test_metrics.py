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
from builder.metrics import prometheus_text
from tests.conftest import ROOT, run_builder
from tests.test_versions import _step

ATTEMPTS = [  # model, mirror, bytes, seconds, outcome
    ("flux", "hub", 1000, 2.0, "ok"), ("flux", "hub", 500, 1.5, "retry"), ("flux", "hub", 0, 0.5, "failed"),
    ("flux", "mirror-eu", 4000, 4.0, "ok"), ("flux", "cache", 0, 0.0, "cached"),
    ("xtts", "hub", 250, 0.25, "ok"), ("xtts", "hub", 250, 0.25, "ok"), ("xtts", "hub", 0, 0.5, "failed"),
]
BUILDS = [  # id, model, version, outcome, seconds per phase, pushed image layer sizes, smoke (load, inference, passed)
    ("b1", "flux", "1.0.0", "pushed", {"build": 100.0, "smoke": 20.0, "push": 30.0}, [600, 400], (10.0, 2.0, True)),
    ("b2", "flux", "1.1.0", "failed", {"build": 50.0, "smoke": 5.5}, None, (11.0, None, False)),
    ("b3", "flux", "1.1.0", "pushed", {"build": 10.0, "smoke": 19.0, "push": 1.0}, [700, 400], (9.0, 1.5, True)),
    ("b4", "xtts", "2.0.0", "running", None, None, None),
]
WEIGHTS = {"b1": 5000, "b2": 6000, "b3": 6000, "b4": 70}
DEPLOYS = [  # version, digest, previous digest: 1.1.0 over 1.0.0 is a deploy, 1.0.0 back over 1.1.0 a rollback
    ("1.0.0", "sha256:d1", None), ("1.1.0", "sha256:d3", "sha256:d1"), ("1.0.0", "sha256:d1", "sha256:d3"),
]


def _fill(path: Path) -> str:
    """The rows above in a ledger at path; returns the ledger's identity."""
    ledger = Ledger(path)
    ledger.record_attempts([Attempt(model, "ns/repo", "a" * 40, "w.bin", mirror, size, seconds, outcome,
                                    None if outcome in ("ok", "cached") else "boom")
                            for model, mirror, size, seconds, outcome in ATTEMPTS], "b1")
    for build_id, model, version, outcome, seconds, layers, smoke in BUILDS:
        ledger.start_build(build_id, model, version, "sha256:x", "0.1.0", None)
        ledger.record_weights(build_id, WEIGHTS[build_id])
        if smoke is not None:
            load, inference, passed = smoke
            ledger.record_smoke(build_id, "img-" + build_id, {"passed": passed, "load_seconds": load,
                                                              "inference_seconds": inference})
        if outcome == "running":
            continue
        digest = f"sha256:d{build_id[1:]}" if outcome == "pushed" else None
        ledger.finish_build(build_id, outcome, digest=digest, seconds=seconds,
                            layers=[{"digest": f"sha256:{i}", "size": n} for i, n in enumerate(layers or [])])
        if digest:
            ledger.record_push(build_id, f"r/{model}", version, digest, "pushed")
    for version, digest, previous in DEPLOYS:
        ledger.record_deployment("flux", version, digest, "endpoint:e1", "healthy", previous, "ok", 3.0)
    identity = ledger.identity
    ledger.close()
    return identity


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _key(name: str, ledger: str, **labels: str) -> tuple[str, tuple]:
    return name, tuple(sorted({"ledger": ledger, **labels}.items()))


def _expected(ledger: str) -> dict[tuple[str, tuple], float]:
    want: dict[tuple[str, tuple], float] = {}

    def add(name: str, value: float, **labels: str) -> None:
        key = _key(name, ledger, **labels)
        want[key] = want.get(key, 0) + value

    for model, mirror, size, seconds, outcome in ATTEMPTS:
        for zero in (("ok", "retry", "failed") if mirror != "cache" else ()):  # every outcome a mirror can have
            for name in ("attempts", "bytes", "seconds"):
                add(f"builder_download_{name}_total", 0, model=model, mirror=mirror, outcome=zero)
        add("builder_download_attempts_total", 1, model=model, mirror=mirror, outcome=outcome)
        add("builder_download_bytes_total", size, model=model, mirror=mirror, outcome=outcome)
        add("builder_download_seconds_total", seconds, model=model, mirror=mirror, outcome=outcome)
    add("builder_mirror_failures_in_a_row", 1, mirror="hub")  # xtts's failure after its oks (flux's came before)
    for model in ("flux", "xtts"):
        for outcome in ("failed", "built", "pushed", "interrupted"):
            add("builder_builds_total", 0, model=model, outcome=outcome)
        for outcome in ("passed", "failed"):
            add("builder_smoke_results_total", 0, model=model, outcome=outcome)
        for kind in ("deploy", "rollback"):
            for outcome in ("healthy", "timeout", "failed"):
                add("builder_deployments_total", 0, model=model, kind=kind, outcome=outcome)
    add("builder_builds_running", 1, model="xtts")
    add("builder_builds_running", 0, model="flux")
    for _, model, version, outcome, seconds, layers, smoke in BUILDS:
        if outcome != "running":
            add("builder_builds_total", 1, model=model, outcome=outcome)
        for phase, value in (seconds or {}).items():
            add("builder_build_phase_seconds_count", 1, model=model, phase=phase)
            add("builder_build_phase_seconds_sum", value, model=model, phase=phase)
        if smoke is not None:
            add("builder_smoke_results_total", 1, model=model, outcome="passed" if smoke[2] else "failed")
    want[_key("builder_smoke_seconds", ledger, model="flux", version="1.0.0", phase="load")] = 10.0
    want[_key("builder_smoke_seconds", ledger, model="flux", version="1.0.0", phase="inference")] = 2.0
    want[_key("builder_smoke_seconds", ledger, model="flux", version="1.1.0", phase="load")] = 9.0  # the newest smoke
    want[_key("builder_smoke_seconds", ledger, model="flux", version="1.1.0", phase="inference")] = 1.5
    want[_key("builder_image_bytes", ledger, model="flux", version="1.0.0")] = 1000
    want[_key("builder_image_bytes", ledger, model="flux", version="1.1.0")] = 1100
    for model, version, weights in (("flux", "1.0.0", 5000), ("flux", "1.1.0", 6000), ("xtts", "2.0.0", 70)):
        want[_key("builder_weights_bytes", ledger, model=model, version=version)] = weights
    add("builder_push_bytes_total", 2100, model="flux")
    add("builder_push_seconds_total", 31.0, model="flux")
    add("builder_last_push_bytes_per_second", 1100.0, model="flux")  # no usual speed yet: fewer than 3 earlier pushes
    add("builder_deployments_total", 2, model="flux", kind="deploy", outcome="healthy")
    add("builder_deployments_total", 1, model="flux", kind="rollback", outcome="healthy")
    return want


def _check(text: str, path: Path, ledger: str) -> None:
    samples = _samples(text)
    stamps = {k: v for k, v in samples.items() if k[0].endswith("timestamp_seconds")}
    figures = {k: v for k, v in samples.items() if k not in stamps}
    assert figures == pytest.approx(_expected(ledger))
    # the newest finish per model and outcome, as the ledger has it; a running build has none
    import sqlite3

    db = sqlite3.connect(path)
    newest = {_key("builder_last_build_timestamp_seconds", ledger, model=m, outcome=s): at for m, s, at in db.execute(
        "SELECT model, status, MAX(finished_at) FROM builds WHERE status != 'running' GROUP BY model, status")}
    newest.update({_key("builder_last_smoke_timestamp_seconds", ledger, model=m, outcome="passed" if p else "failed"): at
                   for m, p, at in db.execute("SELECT b.model, s.passed, MAX(s.at) FROM smoke_results s JOIN builds b"
                                              " ON b.id = s.build_id GROUP BY b.model, s.passed")})
    newest[_key("builder_mirror_last_failure_timestamp_seconds", ledger, mirror="hub")] = db.execute(
        "SELECT MAX(at) FROM download_attempts WHERE outcome = 'failed'").fetchone()[0]
    assert stamps == newest and len(newest) == 5


FAMILIES = {"builder_download_attempts": "counter", "builder_download_bytes": "counter",  # counters: for increase()
            "builder_download_seconds": "counter", "builder_mirror_failures_in_a_row": "gauge",
            "builder_mirror_last_failure_timestamp_seconds": "gauge", "builder_builds": "counter",
            "builder_builds_running": "gauge", "builder_build_phase_seconds": "summary",
            "builder_last_build_timestamp_seconds": "gauge", "builder_smoke_results": "counter",
            "builder_last_smoke_timestamp_seconds": "gauge", "builder_smoke_seconds": "gauge",
            "builder_image_bytes": "gauge", "builder_weights_bytes": "gauge", "builder_push_bytes": "counter",
            "builder_push_seconds": "counter", "builder_last_push_bytes_per_second": "gauge",
            "builder_push_usual_bytes_per_second": "gauge", "builder_deployments": "counter"}


def test_a_scrape_parses_and_its_numbers_are_the_ledger_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    identity = _fill(path)
    result = run_builder(["stats", "--prometheus"], {"PATH": "/usr/bin:/bin", "BUILDER_LEDGER": str(path)})
    assert result.returncode == 0, result.stderr
    _check(result.stdout, path, identity)
    types = {f.name: f.type for f in text_string_to_metric_families(result.stdout)}
    assert types == FAMILIES


def test_a_build_that_finishes_never_makes_a_counter_go_down(tmp_path: Path) -> None:
    """A running build used to be counted under builder_builds_total{outcome="running"}, which
    fell when it finished: Prometheus reads a counter that falls as a reset and counts it all again."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    ledger.start_build("b1", "flux", "1.0.0", "sha256:x", "0.1.0", None)
    before = _samples(prometheus_text(ledger))
    ledger.finish_build("b1", "pushed", seconds={"build": 1.0})
    after = _samples(prometheus_text(ledger))
    counters = [k for k in before if k[0].endswith(("_total", "_count", "_sum"))]
    assert counters and all(after[k] >= before[k] for k in counters)
    assert after[_key("builder_builds_total", ledger.identity, model="flux", outcome="pushed")] == 1


def test_a_usual_push_speed_after_three_pushes_and_the_newest_against_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    for number, seconds in enumerate((10.0, 12.0, 8.0, 40.0)):  # 100, 83.3, 125 B/s, then 25 B/s
        build_id = f"b{number}"
        ledger.start_build(build_id, "flux", f"1.{number}.0", "sha256:x", "0.1.0", None)
        ledger.finish_build(build_id, "pushed", digest=f"sha256:{number}", seconds={"push": seconds},
                            layers=[{"digest": "sha256:a", "size": 1000}])
        ledger.record_push(build_id, "r/flux", f"1.{number}.0", f"sha256:{number}", "pushed")
    samples = _samples(prometheus_text(ledger))
    assert samples[_key("builder_push_usual_bytes_per_second", ledger.identity, model="flux")] == pytest.approx(100.0)
    assert samples[_key("builder_last_push_bytes_per_second", ledger.identity, model="flux")] == pytest.approx(25.0)


def test_each_ledger_has_its_own_identity_and_keeps_it(tmp_path: Path) -> None:
    first, second = Ledger(tmp_path / "a.sqlite3"), Ledger(tmp_path / "b.sqlite3")
    assert len(first.identity) == 32 and first.identity != second.identity
    first.close()
    assert Ledger(tmp_path / "a.sqlite3").identity == first.identity


def test_an_empty_ledger_is_an_empty_scrape_and_name_is_refused(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "BUILDER_LEDGER": str(tmp_path / "empty.sqlite3")}
    empty = run_builder(["stats", "--prometheus"], env)
    assert empty.returncode == 0, empty.stderr
    assert [(f.name, f.samples) for f in text_string_to_metric_families(empty.stdout)] == [
        (name, []) for name in FAMILIES]
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
    identity = _fill(path)
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
    _check(written, path, identity)
