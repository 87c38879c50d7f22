"""Debian's Prometheus and Pushgateway on loopback, for the monitoring tests (tests/env/up.sh
installs both): the Pushgateway takes the build workflow's PUT, Prometheus scrapes it every
second with `honor_labels` (as a Pushgateway must be scraped, so the pushed job and instance
stay) and evaluates builder/monitoring/alerts.yml every second.

Waiting is on facts, never on time: after a push, until Prometheus holds that group's
`push_time_seconds` (the Pushgateway's own stamp of the push); for an alert, until
/api/v1/alerts lists it as firing.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import ROOT, free_port, wait_for
from tests.test_versions import _step

RULES = ROOT / "builder" / "monitoring" / "alerts.yml"


@dataclass
class Stack:
    prometheus: str  # http://127.0.0.1:PORT
    pushgateway: str

    def query(self, expr: str) -> list[dict]:
        """An instant query's result through the HTTP API, as Grafana's data source asks it."""
        response = requests.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def pushed_time(self, instance: str) -> float | None:
        """The Pushgateway's stamp of the newest push of job=builder, instance=INSTANCE."""
        groups = requests.get(f"{self.pushgateway}/api/v1/metrics", timeout=10).json()["data"]
        for group in groups:
            if group["labels"].get("job") == "builder" and group["labels"].get("instance") == instance:
                return float(group["push_time_seconds"]["metrics"][0]["value"])
        return None

    def wait_for_scrape(self, instance: str) -> None:
        """Until Prometheus has scraped the group's newest push."""
        stamp = self.pushed_time(instance)
        assert stamp is not None, f"no push from {instance} in the Pushgateway"

        def scraped() -> bool:
            found = self.query(f'push_time_seconds{{job="builder", instance="{instance}"}}')
            return bool(found) and float(found[0]["value"][1]) == stamp

        wait_for(scraped, 60, f"Prometheus scraping the push from {instance}")

    def firing(self) -> list[dict]:
        alerts = requests.get(f"{self.prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]

    def wait_for_alerts(self, *names: str) -> list[dict]:
        wait_for(lambda: set(names) <= {a["labels"]["alertname"] for a in self.firing()}, 60,
                 f"alerts {', '.join(names)} firing")
        return self.firing()


def finite(result: list[dict]) -> list[float]:
    return [float(r["value"][1]) for r in result if math.isfinite(float(r["value"][1]))]


def _missing() -> str | None:
    for binary in ("prometheus", "prometheus-pushgateway"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed: run `make env` (tests/env/up.sh installs Debian's package)"
    return None


def _started(args: list[str], url: str, what: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(args, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: requests.get(f"{url}/-/ready", timeout=1).status_code == 200, 30, what,
                 lambda: f"exited: {log.read_text()[-500:]}" if proc.poll() is not None else None)
    except AssertionError:
        proc.kill()
        raise
    return proc


@pytest.fixture(scope="module")  # each test module its own: one module's alerts and series are not another's
def prometheus_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    problem = _missing()
    if problem is not None:
        if os.environ.get("BUILDER_REQUIRE_DOCKER") == "1":
            pytest.fail(f"the monitoring tests are required (make test) but: {problem}")
        pytest.skip(problem)
    state = tmp_path_factory.mktemp("prometheus")
    gateway = f"127.0.0.1:{free_port()}"
    server = f"127.0.0.1:{free_port()}"
    config = state / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True,
                            "static_configs": [{"targets": [gateway]}]}],
    }))
    # Debian builds the Pushgateway with --persistence.file=/var/lib/prometheus/pushgateway.data as
    # its default: every instance would load (and write) the groups of earlier runs. Its own file.
    procs = [_started(["prometheus-pushgateway", f"--web.listen-address={gateway}", "--log.level=warn",
                       f"--persistence.file={state / 'pushgateway.data'}"],
                      f"http://{gateway}", f"the Pushgateway on {gateway}", state / "pushgateway.log")]
    try:
        procs.append(_started(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={state / 'data'}",
                               f"--web.listen-address={server}", "--log.level=warn"],
                              f"http://{server}", f"Prometheus on {server}", state / "prometheus.log"))
        yield Stack(f"http://{server}", f"http://{gateway}")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def push_metrics(tmp_path: Path, ledger: str, stack: Stack, runner: str) -> subprocess.CompletedProcess:
    """The build workflow's "Build metrics" step, run as GitHub runs it, with this ledger and the
    loopback Pushgateway as PUSHGATEWAY_URL; waits until Prometheus has scraped the push."""
    script, env = _step("Build metrics")
    shims = tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    if not (shims / "python").exists():
        (shims / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (shims / "python").chmod(0o755)
    work = tmp_path / f"step-{runner}"
    work.mkdir(exist_ok=True)
    no_proxy = urllib.parse.urlsplit(stack.pushgateway).hostname
    env.update(PATH=f"{shims}:/usr/bin:/bin", PYTHONPATH=str(ROOT), BUILDER_LEDGER=ledger, PUSHGATEWAY_URL=stack.pushgateway,
               RUNNER_NAME=runner, NO_PROXY=no_proxy, no_proxy=no_proxy, HOME=str(tmp_path))
    step = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=work, env=env,
                          capture_output=True, text=True, timeout=120)
    assert step.returncode == 0, step.stderr
    stack.wait_for_scrape(runner)
    return step
