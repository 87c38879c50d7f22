"""The ledger in PostgreSQL, shared by several build hosts: migrations that two hosts start at
once, two hosts writing builds and downloads while a third process reads all of it through the
CLI, the column types a fleet needs, and connection failures as one line without the password.

Runs against the real loopback server of tests/env/postgres.sh, each test in a fresh database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.errors import ConfigError
from builder.fetch import Attempt
from builder.ledger import MIGRATIONS, Ledger
from builder.ledger._postgres import translate
from builder.redact import redact_url as redact
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def _rows(url: str, sql: str) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        cursor = db.execute(sql)
        return cursor.fetchall() if cursor.description else []


def _builder(args: list[str], url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUILDER_LEDGER": url, "PYTHONPATH": str(ROOT)}
    env.pop("BUILDER_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def _password(url: str) -> str:
    return url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


# Started together: each says it is ready, then waits for the go file, so their first statements
# meet on the server.
HOST = """
import os, sys, time
from builder.ledger import Ledger
from builder.fetch import Attempt
url, host, go, builds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
open(f"{go}.{host}", "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
ledger = Ledger(url)
for i in range(builds):
    build = f"{host}-{i}"
    ledger.start_build(build, "m", f"1.{i}", "sha256:manifest", "0.1.0", None)
    ledger.record_attempts([Attempt("m", "ns/repo", "a" * 40, f"{build}.bin", f"mirror-{host}", 3_000_000_000, 1.5, "ok"),
                            Attempt("m", "ns/repo", "a" * 40, f"{build}.bin", "hub", 0, 0.5, "retry", "HTTP 429")],
                           build)
    ledger.record_smoke(build, "sha256:img-" + build, {"passed": True, "device": "cpu", "inference_seconds": 0.2})
    ledger.record_push(build, "r/m", f"1.{i}", "sha256:d-" + build, "pushed")
    ledger.finish_build(build, "pushed", image_id="sha256:img-" + build, digest="sha256:d-" + build,
                        seconds={"build": 1.0})
"""


def _hosts_at_once(tmp_path: Path, url: str, names: tuple[str, ...], builds: int) -> None:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", HOST, url, name, str(go), str(builds)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for name in names]
    for _ in range(3000):
        if all(Path(f"{go}.{name}").exists() or p.poll() is not None for name, p in zip(names, procs)):
            break
        time.sleep(0.01)
    go.write_text("")
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(names), errors


def test_hosts_starting_at_once_on_a_fresh_database_migrate_it_once(tmp_path: Path, postgres_url: str) -> None:
    """Without the schema lock, the hosts race through CREATE TABLE and all but one fail."""
    _hosts_at_once(tmp_path, postgres_url, ("a", "b", "c", "d"), builds=0)
    assert _rows(postgres_url, "SELECT version FROM ledger_migrations ORDER BY version") == [
        (n,) for n in range(1, len(MIGRATIONS) + 1)]
    Ledger(postgres_url).close()  # and a later start finds nothing to do
    assert _rows(postgres_url, "SELECT COUNT(*) FROM ledger_migrations") == [(len(MIGRATIONS),)]


def test_two_hosts_write_at_once_and_the_cli_reads_all_of_it(tmp_path: Path, postgres_url: str) -> None:
    _hosts_at_once(tmp_path, postgres_url, ("east", "west"), builds=25)

    stats = _builder(["stats", "--json"], postgres_url)
    assert stats.returncode == 0, stats.stderr
    by_mirror = {row["mirror"]: row for row in json.loads(stats.stdout)}
    assert set(by_mirror) == {"mirror-east", "mirror-west", "hub"}
    assert (by_mirror["mirror-east"]["ok"], by_mirror["mirror-west"]["ok"]) == (25, 25)
    assert by_mirror["mirror-west"]["bytes"] == 25 * 3_000_000_000  # past 32 bits: BIGINT, not INTEGER
    assert (by_mirror["hub"]["attempts"], by_mirror["hub"]["retries"]) == (50, 50)

    history = _builder(["history", "m", "--json"], postgres_url)
    assert history.returncode == 0, history.stderr
    events = json.loads(history.stdout)
    assert {e["build_id"] for e in events} == {f"{h}-{i}" for h in ("east", "west") for i in range(25)}
    assert {e["status"] for e in events} == {"pushed"} and all(e["smoke"]["passed"] for e in events)
    starts = [e["at"] for e in events]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # DOUBLE PRECISION: REAL would round to minutes

    table = _builder(["history", "m"], postgres_url)
    assert table.returncode == 0 and "east-" not in table.stdout  # the table shows versions and digests
    assert "1.24" in table.stdout
    secret = _password(postgres_url)
    for run in (stats, history, table):
        assert secret not in run.stdout + run.stderr
    dump = _rows(postgres_url, "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM builds) t") + _rows(
        postgres_url, "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM download_attempts) t")
    assert secret not in str(dump)


def test_an_empty_postgres_ledger_names_it_without_the_password(postgres_url: str) -> None:
    run = _builder(["history", "m"], postgres_url)
    assert run.returncode == 0
    assert run.stdout.strip() == f"no history for m in {redact(postgres_url)}"
    assert "postgresql://***@127.0.0.1:" in run.stdout and _password(postgres_url) not in run.stdout


def test_the_column_types_fit_a_fleet(postgres_url: str) -> None:
    Ledger(postgres_url).close()
    types = dict(_rows(postgres_url, "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
                                     " WHERE table_schema = 'public'"))
    assert types["download_attempts.bytes"] == "bigint"
    assert types["download_attempts.at"] == types["builds.started_at"] == "double precision"
    assert types["download_attempts.id"] == "bigint"
    assert _rows(postgres_url, "SELECT is_identity FROM information_schema.columns"
                               " WHERE table_name = 'smoke_results' AND column_name = 'id'") == [("YES",)]


def test_literals_and_comments_keep_their_text(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration's string literal is data: no type name, placeholder or percent sign in it is rewritten."""
    import builder.ledger

    extra = """
    CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL DEFAULT 'REAL INTEGER; 100% ?');
    INSERT INTO notes (body) VALUES ('a; b');  -- a comment: INTEGER? 100%
    """
    monkeypatch.setattr(builder.ledger, "MIGRATIONS", MIGRATIONS + (extra,))
    Ledger(postgres_url).close()
    _rows(postgres_url, "INSERT INTO notes DEFAULT VALUES")
    assert _rows(postgres_url, "SELECT id, body FROM notes ORDER BY id") == [(1, "a; b"), (2, "REAL INTEGER; 100% ?")]


def test_translate_spells_sqlite_types_and_placeholders_for_postgres() -> None:
    assert translate("CREATE TABLE t (id INTEGER PRIMARY KEY, n integer, x REAL, s TEXT DEFAULT '?')") == (
        "CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT, x DOUBLE PRECISION,"
        " s TEXT DEFAULT '?')")
    assert translate("SELECT a FROM t WHERE b = ? AND c LIKE 'x%'") == "SELECT a FROM t WHERE b = %s AND c LIKE 'x%%'"


def _bad_urls(url: str) -> dict[str, tuple[str, str]]:
    base, database = url.rsplit("/", 1)
    server = base.split("@", 1)[1]
    return {
        "wrong password": (f"postgresql://builder:not-the-password-7f3a@{server}/{database}", "password authentication failed for user \"builder\""),
        "unreachable": (f"postgresql://builder:s3cret-unreachable@127.0.0.1:{free_port()}/{database}", "Connection refused"),
        "bad port": ("postgresql://builder:s3cret-port@127.0.0.1:notaport/ledger", 'invalid integer value "notaport"'),
        "no such database": (f"postgresql://builder:{_password(url)}@{server}/no_such_database", "does not exist"),
    }


@pytest.mark.parametrize("case", ["wrong password", "unreachable", "bad port", "no such database"])
def test_a_ledger_that_cannot_be_opened_is_one_line_without_the_password(postgres_url: str, case: str) -> None:
    bad, reason = _bad_urls(postgres_url)[case]
    run = _builder(["stats"], bad)
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {redact(bad)}: cannot open the build ledger: "), run.stderr
    assert reason in lines[0] and "check the host, port, user, password and database name in BUILDER_LEDGER" in lines[0]
    assert _password(bad) not in run.stderr
    with pytest.raises(ConfigError) as raised:  # the library says the same, for any caller
        Ledger(bad)
    assert _password(bad) not in str(raised.value) and raised.value.__cause__ is None


def test_a_server_that_goes_away_later_is_one_line_without_the_password(postgres_url: str) -> None:
    ledger = Ledger(postgres_url)
    pid = ledger._store._db.info.backend_pid
    _rows(postgres_url, f"SELECT pg_terminate_backend({pid})")
    with pytest.raises(ConfigError, match="the build ledger failed") as raised:
        ledger.record_attempts([Attempt("m", "r", "a" * 40, "f", "hub", 1, 1.0, "ok")])
    assert _password(postgres_url) not in str(raised.value)


def test_a_url_of_another_database_is_refused_without_echoing_it() -> None:
    run = _builder(["stats"], "mysql://ci:hunter2-secret@db.internal/ledger")
    assert run.returncode == 2
    assert run.stderr.strip() == ("error: the build ledger's location (BUILDER_LEDGER or the configuration's `ledger`) is "
                                  "a mysql:// URL: use a file path or a postgresql:// URL")


def test_a_url_without_a_password_takes_it_from_libpq_s_environment(postgres_url: str) -> None:
    """The password can stay out of the URL (and out of committed configuration): PGPASSWORD or
    ~/.pgpass. PGPASSWORD is a secret like the URL's; the user name is not, and stays readable."""
    bare = postgres_url.replace(f":{_password(postgres_url)}@", "@", 1)
    env = {**os.environ, "BUILDER_LEDGER": bare, "PGPASSWORD": _password(postgres_url), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "builder", "history", "m"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"no history for m in {redact(bare)}"
    env["PGPASSWORD"] = "wrong-pgpassword-5d1c"
    run = subprocess.run([sys.executable, "-m", "builder", "history", "m"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 2 and len(run.stderr.splitlines()) == 1
    assert 'password authentication failed for user "builder"' in run.stderr and "wrong-pgpassword" not in run.stderr
