"""`builder report --html FILE`: one self-contained page with the dashboard's figures as charts,
opened in Debian's headless Chromium (tests/env/up.sh installs it), which must log no console
message: no script error, no refused load (the page's Content-Security-Policy refuses any)."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from builder.fetch import Attempt
from builder.ledger import Ledger
from builder.monitoring.panels import PANELS
from tests.conftest import run_builder

DAY = 86400
# Debian's flags for a headless run here (no sandbox as root, nothing that calls out), a fresh profile each run.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--enable-logging=stderr", "--v=0"]


def chromium(page: Path, tmp_path: Path, *action: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    if binary is None:
        message = "chromium is not installed: run `make env` (tests/env/up.sh installs Debian's package)"
        if os.environ.get("BUILDER_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    run = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *action, page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def console(run: subprocess.CompletedProcess) -> list[str]:
    """What the page logged to its console (Chromium writes each message as an INFO:CONSOLE line)."""
    return [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


def fill(path: Path) -> Ledger:
    """Ten days of history: two mirrors (one of them failing more and more), builds of two models,
    smoke tests, pushes, a deploy and a rollback. Rows are dated back by hand."""
    ledger = Ledger(path)
    now = (time.time() // DAY) * DAY + DAY / 2  # midday: the ten days below are ten calendar days
    for day in range(10):
        ok_hub = 10 - day // 2
        ledger.record_attempts([Attempt("flux", "ns/flux", "a" * 40, f"f{i}", "hub", 4_000_000, 0.1 + day / 50, "ok")
                                for i in range(ok_hub)]
                               + [Attempt("flux", "ns/flux", "a" * 40, "g", "hub", 0, 1.0, "failed", "503")] * (day // 2)
                               + [Attempt("flux", "ns/flux", "a" * 40, f"e{i}", "eu", 2_000_000, 0.2, "ok") for i in range(5)],
                               f"b{day}")
        _at(path, "download_attempts", "build_id = ?", (f"b{day}",), now - (10 - day) * DAY)
    for number, (model, version, outcome, push) in enumerate([("flux", "1.0.0", "pushed", 20.0),
                                                              ("flux", "1.1.0", "pushed", 18.0),
                                                              ("flux", "1.2.0", "failed", None),
                                                              ("xtts", "2.0.0", "pushed", 9.0)]):
        build_id = f"b{number}"
        ledger.start_build(build_id, model, version, "sha256:m", "0.1.0", None)
        ledger.record_weights(build_id, 24_000_000_000 if model == "flux" else 1_800_000_000)
        ledger.record_smoke(build_id, "img", {"passed": outcome != "failed", "load_seconds": 40.0 + number,
                                              "inference_seconds": 3.0 + number})
        layers = [{"digest": "sha256:w", "size": 23_900_000_000 if model == "flux" else 1_750_000_000},
                  {"digest": "sha256:c", "size": 900_000_000}]
        ledger.finish_build(build_id, outcome, digest=f"sha256:d{number}" if push else None,
                            seconds={"build": 300.0 + 10 * number, "smoke": 60.0, **({"push": push} if push else {})},
                            layers=layers if push else None)
        if push:
            ledger.record_push(build_id, f"r/{model}", version, f"sha256:d{number}", "pushed")
    ledger.record_deployment("flux", "1.1.0", "sha256:d1", "endpoint:e1", "healthy", "sha256:d0", "ok", 40.0)
    ledger.record_deployment("flux", "1.0.0", "sha256:d0", "endpoint:e1", "healthy", "sha256:d1", "ok", 35.0)
    return ledger


def _at(path: Path, table: str, where: str, params: tuple, at: float) -> None:
    db = sqlite3.connect(path)
    db.execute(f"UPDATE {table} SET at = ? WHERE {where}", (at, *params))
    db.commit()
    db.close()


class _Page(HTMLParser):
    """What a reader sees: section titles, the charts in each, the tables' cells."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[dict] = []
        self._in: str | None = None
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        if tag == "section":
            self.sections.append({"title": "", "svg": 0, "marks": 0, "cells": [], "th": []})
        elif tag in ("h2", "td", "th"):
            self._in = tag
            if tag in ("td", "th"):
                self.sections[-1]["th" if tag == "th" else "cells"].append("")
        elif tag == "svg":
            self.sections[-1]["svg"] += 1
        elif tag in ("rect", "circle") and self.sections:
            self.sections[-1]["marks"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "h2":
            self.sections[-1]["title"] += data
        elif self._in in ("td", "th"):
            self.sections[-1]["cells" if self._in == "td" else "th"][-1] += data

    def tables_header(self, title: str) -> list[str]:
        return next(s["th"] for s in self.sections if s["title"] == title)


def _report(tmp_path: Path, ledger_path: Path) -> Path:
    page = tmp_path / "report.html"
    run = run_builder(["report", "--html", str(page)], {"PATH": "/usr/bin:/bin", "BUILDER_LEDGER": str(ledger_path)})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"wrote {page}"
    return page


def test_the_report_renders_in_headless_chromium_with_no_console_message(tmp_path: Path) -> None:
    fill(tmp_path / "ledger.sqlite3")
    page = _report(tmp_path, tmp_path / "ledger.sqlite3")
    rendered = chromium(page, tmp_path, "--dump-dom")
    assert console(rendered) == []
    dom = _Page()
    dom.feed(rendered.stdout)
    # the dashboard's panels, each a chart with marks in it
    assert [s["title"] for s in dom.sections] == [p.title for p in PANELS]
    assert all(s["svg"] == 1 and s["marks"] > 0 for s in dom.sections), dom.sections
    shot = tmp_path / "report.png"
    chromium(page, tmp_path, "--window-size=800,3600", "--hide-scrollbars", f"--screenshot={shot}")
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (800, 3600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # charts drawn, not a blank page


def test_the_console_check_catches_a_broken_page(tmp_path: Path) -> None:
    """The check above can fail: a script error and a refused load are both console messages."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
                    "script-src 'unsafe-inline'\"><script>undefinedFunction()</script>"
                    "<img src=\"http://127.0.0.1:9/x.png\">")
    messages = console(chromium(page, tmp_path, "--dump-dom"))
    assert any("undefinedFunction is not defined" in m for m in messages)
    assert any("violates the following Content Security Policy directive" in m for m in messages)


def test_the_report_shows_the_ledgers_figures(tmp_path: Path) -> None:
    fill(tmp_path / "ledger.sqlite3")
    dom = _Page()
    dom.feed(_report(tmp_path, tmp_path / "ledger.sqlite3").read_text())
    sections = {s["title"]: s["cells"] for s in dom.sections}
    ratios = sections["Download success ratio"]
    rows = {r[0]: r[1:] for r in (ratios[i:i + 5] for i in range(0, len(ratios), 5))}
    assert rows == {"eu": ["50", "100%", "100%", "10.0 MB/s"],  # over ten days, then the newest day
                    "hub": ["100", "80%", "60%", rows["hub"][3]],  # 80 ok, 20 failed; 6 and 4 on the newest day
                    "all mirrors": ["150", "87%", "73%", rows["all mirrors"][3]]}
    table = dom.tables_header("Download success ratio")
    newest = sqlite3.connect(tmp_path / "ledger.sqlite3").execute("SELECT MAX(at) FROM download_attempts").fetchone()[0]
    assert table[3] == f"success on {time.strftime('%Y-%m-%d', time.gmtime(newest))}"
    assert sections["Build outcomes per model"] == ["flux", "2", "0", "1", "0", "0", "xtts", "1", "0", "0", "0", "0"]
    assert sections["Image and weights size per version"][:3] == ["flux 1.0.0", "24.8 GB", "24.0 GB"]
    assert sections["Push speed"][:4] == ["flux 1.0.0", "24.8 GB", "20.0 s", "1.2 GB/s"]
    assert sections["Deploys and rollbacks"] == ["flux", "1", "1"]
    assert sections["Smoke test: load and inference time per version"][:3] == ["flux 1.0.0", "40.0 s", "3.0 s"]


def test_the_page_is_self_contained(tmp_path: Path) -> None:
    fill(tmp_path / "ledger.sqlite3")
    text = _report(tmp_path, tmp_path / "ledger.sqlite3").read_text()
    assert "default-src 'none'" in text
    assert not re.search(r"<(script|link|img|iframe|object)\b", text)
    assert not re.search(r"(src|href)\s*=", text)
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text


def test_an_empty_ledger_says_so_and_a_bad_path_is_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "BUILDER_LEDGER": str(tmp_path / "empty.sqlite3")}
    page = _report(tmp_path, tmp_path / "empty.sqlite3")
    dom = _Page()
    dom.feed(page.read_text())
    assert [s["svg"] for s in dom.sections] == [0] * len(PANELS)
    assert page.read_text().count("Nothing in the ledger yet.") == len(PANELS)
    bad = run_builder(["report", "--html", str(tmp_path / "missing" / "report.html")], env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (f"error: {tmp_path / 'missing' / 'report.html'}: cannot write the report: "
                                  "No such file or directory: choose a writable path")


def main(out: Path) -> None:
    """The picture in as_built.md (section 16f): `.venv/bin/python -m tests.test_report docs/report.png`."""
    import tempfile

    from PIL import Image

    from builder.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        page = write_report(fill(Path(tmp) / "ledger.sqlite3"), Path(tmp) / "report.html")
        shot = Path(tmp) / "report.png"
        subprocess.run(["chromium", *FLAGS, f"--user-data-dir={tmp}/profile", "--window-size=800,3900",
                        "--hide-scrollbars", f"--screenshot={shot}", page.as_uri()], capture_output=True, check=True,
                       timeout=120)
        with Image.open(shot) as image:
            image.convert("RGB").quantize(colors=64).save(out, optimize=True)


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[1]))
