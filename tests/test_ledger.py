"""The build ledger: migrations, attempts, per-mirror stats and ranking, concurrent writers.

The behaviour tests run twice: on a SQLite file and on a fresh PostgreSQL database (tests/env/postgres.sh)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.errors import ConfigError
from builder.fetch import Attempt
from builder.ledger import MIGRATIONS, Ledger
from builder.ranking import rank_mirrors

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a ledger lives: a SQLite file's path, or a postgresql:// URL of an empty database."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "l.sqlite3")


def attempt(mirror: str, outcome: str, n: int = 1000, seconds: float = 1.0, model: str = "m") -> Attempt:
    return Attempt(model, "ns/repo", "a" * 40, "file.bin", mirror, n, seconds, outcome, None if outcome == "ok" else "x")


def test_migrations_run_once_and_the_schema_version_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    Ledger(path).close()  # a second open must not re-run them
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_ledger_from_a_newer_builder_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="written by a newer builder"):
        Ledger(path)


def test_stats_per_mirror(location: str) -> None:
    ledger = Ledger(location)
    ledger.record_attempts([
        attempt("hub", "retry", 10, 0.5), attempt("hub", "ok", 4000, 2.0), attempt("hub", "failed", 0, 1.0),
        attempt("mirror", "ok", 9000, 1.0), attempt("cache", "cached", 0, 0.0),
    ], build_id="b1")
    stats = {s.mirror: s for s in ledger.mirror_stats()}
    assert set(stats) == {"hub", "mirror"}  # cache hits are not attempts on a mirror
    assert (stats["hub"].attempts, stats["hub"].ok, stats["hub"].retries, stats["hub"].failed) == (3, 1, 1, 1)
    assert stats["hub"].success_rate == pytest.approx(1 / 3)
    assert stats["hub"].throughput == pytest.approx(2000.0)
    assert stats["mirror"].throughput == pytest.approx(9000.0)
    assert [s.mirror for s in ledger.mirror_stats(model="other")] == []


class _Mirror:
    def __init__(self, name: str) -> None:
        self.name, self.url = name, f"https://{name}.example"


def test_ranking_prefers_reliable_then_fast_mirrors_with_enough_history(location: str) -> None:
    ledger = Ledger(location)
    ledger.record_attempts([attempt("slow", "ok", 1000, 10.0) for _ in range(3)])
    ledger.record_attempts([attempt("fast", "ok", 1000, 1.0) for _ in range(3)])
    ledger.record_attempts([attempt("flaky", "ok", 1000, 0.1), attempt("flaky", "failed"), attempt("flaky", "failed")])
    ledger.record_attempts([attempt("new", "ok", 10**9, 0.001)])  # too little history to rank
    ledger.record_attempts([attempt("cache", "cached", 0, 0.0)])  # no mirror's attempt
    configured = [_Mirror(name) for name in ("new", "flaky", "slow", "fast")]
    assert [m.name for m in rank_mirrors(configured, ledger.mirror_ranking(), time.time())] == ["fast", "slow", "new", "flaky"]
    assert {r.mirror for r in ledger.mirror_ranking()} == {"slow", "fast", "flaky", "new"}


def _run_at_once(script: str, path: str, names: tuple[str, ...]) -> None:
    """Run `script` in one process per name, all at once, against the ledger at `path`."""
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), name], cwd=ROOT) for name in names]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(names)


def test_two_processes_writing_at_once_lose_nothing(location: str) -> None:
    path = location
    Ledger(path).close()
    script = (
        "import sys; from builder.ledger import Ledger; from builder.fetch import Attempt\n"
        "ledger = Ledger(sys.argv[1])\n"
        "for i in range(200):\n"
        "    ledger.record_attempts([Attempt('m', 'r/r', 'a' * 40, f'{sys.argv[2]}-{i}', sys.argv[2], i, 0.1, 'ok')])\n"
    )
    _run_at_once(script, path, ("one", "two"))
    rows = Ledger(path).attempts()
    assert len(rows) == 400
    assert {r.path for r in rows} == {f"{n}-{i}" for n in ("one", "two") for i in range(200)}


def test_an_unusable_ledger_path_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot open the build ledger"):
        Ledger(blocker / "ledger.sqlite3")


def test_two_builds_at_once_record_everything(location: str) -> None:
    path = location
    Ledger(path).close()
    script = (
        "import sys; from builder.ledger import Ledger\n"
        "ledger = Ledger(sys.argv[1])\n"
        "for i in range(60):\n"
        "    build = f'{sys.argv[2]}-{i}'\n"
        "    ledger.start_build(build, 'm', f'1.{i}', 'sha256:x', '0.1.0', None)\n"
        "    ledger.record_smoke(build, 'sha256:img' + build, {'passed': True, 'device': 'cpu'})\n"
        "    ledger.record_push(build, 'r/m', f'1.{i}', 'sha256:d' + build, 'pushed')\n"
        "    ledger.finish_build(build, 'pushed', image_id='sha256:img' + build, digest='sha256:d' + build)\n"
    )
    _run_at_once(script, path, ("a", "b"))
    events = Ledger(path).history("m")
    assert len(events) == 120 and {e["status"] for e in events} == {"pushed"}
    assert all(e["smoke"]["passed"] for e in events)
    assert Ledger(path).passed_smoke("sha256:da-7") and not Ledger(path).passed_smoke("sha256:nothing")


def test_a_build_row_says_running_until_it_ends(location: str) -> None:
    ledger = Ledger(location)
    ledger.start_build("b1", "m", "1.0", "sha256:x", "0.1.0", "abc")
    assert ledger.history("m")[0]["status"] == "running"
    ledger.finish_build("b1", "failed", error="smoke test failed: blank image")
    event = ledger.history("m")[0]
    assert (event["status"], event["error"]) == ("failed", "smoke test failed: blank image")


def test_a_semicolon_inside_a_statement_does_not_split_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: migrations were split on ';', cutting a string literal (or a trigger body) in two."""
    import builder.ledger

    extra = """
    CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL DEFAULT 'a; b');
    CREATE TRIGGER notes_stamp AFTER INSERT ON notes BEGIN
        UPDATE notes SET body = body || '; seen' WHERE id = NEW.id;
    END;
    INSERT INTO notes (id) VALUES (1);  -- a comment; with a semicolon
    """
    monkeypatch.setattr(builder.ledger, "MIGRATIONS", MIGRATIONS + (extra,))
    Ledger(tmp_path / "l.sqlite3").close()
    db = sqlite3.connect(tmp_path / "l.sqlite3")
    assert db.execute("SELECT body FROM notes").fetchall() == [("a; b; seen",)]
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) + 1


def test_an_unfinished_migration_statement_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builder.ledger

    monkeypatch.setattr(builder.ledger, "MIGRATIONS", MIGRATIONS + ("CREATE TABLE broken (id INTEGER",))
    with pytest.raises(ConfigError, match="a ledger migration ends in an unfinished statement: CREATE TABLE broken"):
        Ledger(tmp_path / "l.sqlite3")
    assert sqlite3.connect(tmp_path / "l.sqlite3").execute("PRAGMA user_version").fetchone()[0] == 0  # all or nothing
