"""The build ledger, for history and analytics (the registry is the durable truth).

One SQLite file by default (`_sqlite.py`: one host), or one PostgreSQL database that every build
host writes to (`_postgres.py`: BUILDER_LEDGER=postgresql://...). The same numbered migrations
run on both, statement by statement, in one transaction that holds the schema lock. Rows: every
download attempt (source, mirror, file, bytes, seconds, outcome, error; `builder stats` reads
them and builds prefer the best mirror), every build (a `running` row first, finished as failed,
built or pushed: a killed build never looks successful), its smoke result and push, every
promotion and every deployment. `builder history` reads them. Nothing that rollback or promotion
needs lives only here: a fresh CI runner recovers it from the registry and RunPod.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from builder.errors import ConfigError
from builder.fetch import Attempt
from builder.ledger._postgres import PostgresStore
from builder.ledger._postgres import is_url as is_postgres_url
from builder.ledger._sqlite import SQLiteStore
from builder.ranking import HORIZON_DAYS, MirrorAttempt
from builder.redact import redact

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE download_attempts (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        build_id TEXT,
        model TEXT NOT NULL,
        repo_id TEXT NOT NULL,
        revision TEXT NOT NULL,
        path TEXT NOT NULL,
        mirror TEXT NOT NULL,
        bytes INTEGER NOT NULL CHECK (bytes >= 0),
        seconds REAL NOT NULL CHECK (seconds >= 0),
        outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'cached', 'retry', 'failed')),
        error TEXT
    );
    CREATE INDEX download_attempts_model ON download_attempts (model, at);
    CREATE INDEX download_attempts_mirror ON download_attempts (mirror, at);
    """,
    """
    CREATE TABLE builds (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        manifest_digest TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'failed', 'built', 'pushed', 'interrupted')),
        image_id TEXT,
        repository TEXT,
        digest TEXT,
        error TEXT,
        layers TEXT,
        seconds TEXT,
        builder_version TEXT NOT NULL,
        git_commit TEXT,
        started_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX builds_model ON builds (model, started_at);
    CREATE TABLE smoke_results (
        id INTEGER PRIMARY KEY,
        build_id TEXT NOT NULL REFERENCES builds (id),
        image_id TEXT NOT NULL,
        passed INTEGER NOT NULL,
        reason TEXT,
        device TEXT,
        load_seconds REAL,
        inference_seconds REAL,
        peak_rss_mb REAL,
        peak_gpu_mb REAL,
        at REAL NOT NULL
    );
    CREATE TABLE pushes (
        id INTEGER PRIMARY KEY,
        build_id TEXT NOT NULL REFERENCES builds (id),
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('pushed', 'already_present')),
        at REAL NOT NULL
    );
    CREATE TABLE stages (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        stage TEXT NOT NULL CHECK (stage IN ('staging', 'production')),
        actor TEXT,
        at REAL NOT NULL
    );
    CREATE TABLE deployments (
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        version TEXT,
        digest TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('healthy', 'timeout', 'failed')),
        previous_digest TEXT,
        detail TEXT,
        seconds REAL,
        at REAL NOT NULL
    );
    CREATE INDEX deployments_model ON deployments (model, at);
    """,
    # A deploy that overrode a release gate (--force) says who-knows-why: the reason given.
    """
    ALTER TABLE deployments ADD COLUMN forced_reason TEXT;
    """,
    # The weights' bytes of each build (the manifest's artifacts: the dashboard's sizes per
    # version), and the ledger's own identity: several runners push one shared ledger's totals
    # to a Pushgateway, and the dashboard counts each ledger once (builder/metrics.py).
    """
    ALTER TABLE builds ADD COLUMN weights_bytes INTEGER;
    CREATE TABLE ledger_identity (id TEXT PRIMARY KEY);
    """,
)
# The migrations are in the SQL SQLite and PostgreSQL share, in SQLite's spelling of the column types
# (INTEGER, REAL, INTEGER PRIMARY KEY); builder/ledger/_postgres.py says how they are translated.


def statements(script: str) -> list[str]:
    """A migration's statements, one by one. sqlite3.complete_statement knows where one ends; a
    split on ';' would cut a statement whose string literal or trigger body holds one."""
    done: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            done.append(pending.strip())
            pending = ""
    if pending.strip() and not all(part.strip().startswith("--") or not part.strip() for part in pending.splitlines()):
        raise ConfigError(f"a ledger migration ends in an unfinished statement: {' '.join(pending.split())[:120]}")
    return done


@dataclass(frozen=True)
class MirrorStats:
    mirror: str
    attempts: int
    ok: int
    retries: int
    failed: int
    bytes: int
    seconds: float

    @property
    def success_rate(self) -> float:
        return self.ok / self.attempts if self.attempts else 0.0

    @property
    def throughput(self) -> float:
        """Bytes per second over successful downloads."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


class Ledger:
    """The ledger at `location`: a SQLite file's path, or a postgresql:// URL."""

    def __init__(self, location: str | Path) -> None:
        self._store = PostgresStore(location) if is_postgres_url(location) else SQLiteStore(Path(location))
        # Where the ledger is, for messages: a path, or the URL without its password.
        self.location = self._store.location
        try:
            with self._store.opening():
                self._migrate()
                self.identity = self._store.execute("SELECT id FROM ledger_identity")[0][0]
        except BaseException:
            self._store.close()
            raise

    def _migrate(self) -> None:
        with self._store.transaction():
            self._store.lock_schema()
            version = self._store.schema_version()
            if version > len(MIGRATIONS):
                raise ConfigError(f"{self.location} was written by a newer builder (schema {version}): upgrade builder")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements(script):
                    self._store.execute(statement)
                self._store.set_schema_version(number)
            if not self._store.execute("SELECT id FROM ledger_identity"):  # made once, with the table
                self._store.execute("INSERT INTO ledger_identity (id) VALUES (?)", (uuid.uuid4().hex,))

    def close(self) -> None:
        self._store.close()

    def record_attempts(self, attempts: Iterable[Attempt], build_id: str | None = None) -> None:
        rows = [(time.time(), build_id, a.model, a.repo_id, a.revision, a.path, a.mirror, a.bytes, a.seconds,
                 a.outcome, redact(a.error)) for a in attempts]
        if not rows:
            return
        with self._store.transaction():
            self._store.executemany(
                "INSERT INTO download_attempts (at, build_id, model, repo_id, revision, path, mirror, bytes, seconds,"
                " outcome, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    # -- builds, smoke, pushes, stages, deployments ---------------------------------------------
    def start_build(self, build_id: str, model: str, version: str, manifest_digest: str, builder_version: str,
                    git_commit: str | None) -> None:
        """A row that says `running` until the build ends: a killed build stays visibly unfinished."""
        with self._store.transaction():
            self._store.execute(
                "INSERT INTO builds (id, model, version, manifest_digest, status, builder_version, git_commit, started_at)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (build_id, model, version, manifest_digest, builder_version, git_commit, time.time()),
            )

    def record_weights(self, build_id: str, weights_bytes: int) -> None:
        """The bytes of the build's weights (its manifest's artifacts), for the sizes per version."""
        with self._store.transaction():
            self._store.execute("UPDATE builds SET weights_bytes = ? WHERE id = ?", (int(weights_bytes), build_id))

    def finish_build(self, build_id: str, status: str, *, image_id: str | None = None, repository: str | None = None,
                     digest: str | None = None, error: str | None = None, layers: list | None = None,
                     seconds: dict | None = None) -> None:
        with self._store.transaction():
            self._store.execute(
                "UPDATE builds SET status = ?, image_id = ?, repository = ?, digest = ?, error = ?, layers = ?,"
                " seconds = ?, finished_at = ? WHERE id = ?",
                (status, image_id, repository, digest, redact(error), json.dumps(layers) if layers is not None else None,
                 json.dumps(seconds) if seconds is not None else None, time.time(), build_id),
            )

    def record_smoke(self, build_id: str, image_id: str, result: dict) -> None:
        with self._store.transaction():
            self._store.execute(
                "INSERT INTO smoke_results (build_id, image_id, passed, reason, device, load_seconds, inference_seconds,"
                " peak_rss_mb, peak_gpu_mb, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (build_id, image_id, 1 if result.get("passed") else 0, redact(result.get("reason")), result.get("device"),
                 result.get("load_seconds"), result.get("inference_seconds"), result.get("peak_rss_mb"),
                 result.get("peak_gpu_mb"), time.time()),
            )

    def record_push(self, build_id: str, repository: str, tag: str, digest: str, outcome: str) -> None:
        with self._store.transaction():
            self._store.execute("INSERT INTO pushes (build_id, repository, tag, digest, outcome, at) VALUES (?, ?, ?, ?, ?, ?)",
                       (build_id, repository, tag, digest, outcome, time.time()))

    def record_stage(self, model: str, version: str, digest: str, stage: str, actor: str | None) -> None:
        with self._store.transaction():
            self._store.execute("INSERT INTO stages (model, version, digest, stage, actor, at) VALUES (?, ?, ?, ?, ?, ?)",
                       (model, version, digest, stage, actor, time.time()))

    def record_deployment(self, model: str, version: str | None, digest: str, target: str, outcome: str,
                          previous_digest: str | None, detail: str | None, seconds: float,
                          forced_reason: str | None = None) -> None:
        with self._store.transaction():
            self._store.execute(
                "INSERT INTO deployments (model, version, digest, target, outcome, previous_digest, detail, seconds, at,"
                " forced_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (model, version, digest, target, outcome, previous_digest, redact(detail), round(seconds, 2), time.time(),
                 redact(forced_reason)),
            )

    def passed_smoke(self, digest_or_image: str) -> bool:
        """Whether a smoke test passed for this image (by registry digest or local image id)."""
        rows = self._store.execute(
            "SELECT 1 FROM smoke_results s JOIN builds b ON b.id = s.build_id"
            " WHERE s.passed = 1 AND (s.image_id = ? OR b.digest = ?) LIMIT 1",
            (digest_or_image, digest_or_image),
        )
        return bool(rows)

    def history(self, model: str) -> list[dict[str, Any]]:
        """Everything the ledger knows about one model, oldest first."""
        events: list[dict[str, Any]] = []
        builds = self._store.execute(
            "SELECT b.id, b.version, b.status, b.image_id, b.digest, b.error, b.seconds, b.git_commit, b.started_at,"
            " b.manifest_digest, s.passed, s.reason, s.device, s.inference_seconds"
            " FROM builds b LEFT JOIN smoke_results s ON s.build_id = b.id WHERE b.model = ? ORDER BY b.started_at",
            (model,),
        )
        for row in builds:
            (build_id, version, status, image_id, digest, error, seconds, commit, at, manifest_digest,
             passed, reason, device, inference) = row
            events.append({"at": at, "event": "build", "version": version, "status": status, "build_id": build_id,
                           "image_id": image_id, "digest": digest, "error": error, "git_commit": commit,
                           "manifest_digest": manifest_digest, "seconds": json.loads(seconds) if seconds else None,
                           "smoke": None if passed is None else {"passed": bool(passed), "reason": reason,
                                                                  "device": device, "inference_seconds": inference}})
        for version, digest, stage, actor, at in self._store.execute(
                "SELECT version, digest, stage, actor, at FROM stages WHERE model = ?", (model,)):
            events.append({"at": at, "event": "promote", "version": version, "digest": digest, "stage": stage,
                           "actor": actor})
        for version, digest, target, outcome, previous, detail, seconds, at, forced in self._store.execute(
                "SELECT version, digest, target, outcome, previous_digest, detail, seconds, at, forced_reason"
                " FROM deployments WHERE model = ?", (model,)):
            events.append({"at": at, "event": "deploy", "version": version, "digest": digest, "target": target,
                           "outcome": outcome, "previous_digest": previous, "detail": detail, "seconds": seconds,
                           "forced_reason": forced})
        return sorted(events, key=lambda e: e["at"])

    def attempts(self, model: str | None = None) -> list[Attempt]:
        query = "SELECT model, repo_id, revision, path, mirror, bytes, seconds, outcome, error FROM download_attempts"
        params: tuple = ()
        if model:
            query, params = query + " WHERE model = ?", (model,)
        return [Attempt(*row) for row in self._store.execute(query + " ORDER BY id", params)]

    def mirror_stats(self, model: str | None = None) -> list[MirrorStats]:
        """Per mirror: attempts (ok, retry, failed; cache hits are not mirror attempts), bytes and
        seconds of the successful ones."""
        where = "WHERE outcome != 'cached'" + (" AND model = ?" if model else "")
        rows = self._store.execute(
            f"""SELECT mirror, COUNT(*),
                       SUM(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END), SUM(CASE WHEN outcome = 'retry' THEN 1 ELSE 0 END),
                       SUM(CASE WHEN outcome = 'failed' THEN 1 ELSE 0 END),
                       CAST(COALESCE(SUM(CASE WHEN outcome = 'ok' THEN bytes END), 0) AS INTEGER),
                       COALESCE(SUM(CASE WHEN outcome = 'ok' THEN seconds END), 0)
                FROM download_attempts {where} GROUP BY mirror ORDER BY mirror""",
            (model,) if model else (),
        )
        return [MirrorStats(*row) for row in rows]

    def mirror_ranking(self, now: float | None = None) -> list[MirrorAttempt]:
        """What the mirror ranking reads (builder/ranking.py): every attempt on a mirror within
        the ranking's horizon, oldest first. Cache hits are no mirror's attempts."""
        since = (time.time() if now is None else now) - HORIZON_DAYS * 86400
        rows = self._store.execute(
            "SELECT mirror, at, outcome, bytes, seconds FROM download_attempts WHERE outcome != 'cached' AND at >= ?"
            " ORDER BY id", (since,))
        return [MirrorAttempt(*row) for row in rows]

    # -- figures for monitoring (builder/metrics.py) -------------------------------------------
    def download_totals(self) -> list[tuple[str, str, str, int, int, float]]:
        """(model, mirror, outcome, attempts, bytes, seconds) over every recorded download attempt."""
        return list(self._store.execute(
            "SELECT model, mirror, outcome, COUNT(*), CAST(COALESCE(SUM(bytes), 0) AS INTEGER), COALESCE(SUM(seconds), 0)"
            " FROM download_attempts GROUP BY model, mirror, outcome ORDER BY model, mirror, outcome"))

    def failures_in_a_row(self) -> list[tuple[str, int, float]]:
        """(mirror, attempts that failed or were retried since its last success, when the last
        of them was) for each mirror with such attempts."""
        return list(self._store.execute(
            "SELECT a.mirror, COUNT(*), MAX(a.at) FROM download_attempts a LEFT JOIN"
            " (SELECT mirror, MAX(id) AS last_ok FROM download_attempts WHERE outcome = 'ok' GROUP BY mirror) o"
            " ON o.mirror = a.mirror WHERE a.outcome IN ('retry', 'failed') AND a.id > COALESCE(o.last_ok, 0)"
            " GROUP BY a.mirror ORDER BY a.mirror"))

    def build_records(self) -> list[dict[str, Any]]:
        """Every build, oldest first: model, version, status, seconds per phase, when it started
        and finished, its digest and layers (digest and size once pushed) and its weights' bytes."""
        rows = self._store.execute(
            "SELECT id, model, version, status, seconds, started_at, finished_at, digest, layers, weights_bytes"
            " FROM builds ORDER BY started_at")
        return [{"id": build_id, "model": model, "version": version, "status": status,
                 "seconds": json.loads(seconds) if seconds else {}, "started_at": started, "finished_at": finished,
                 "digest": digest, "layers": json.loads(layers) if layers else [], "weights_bytes": weights}
                for build_id, model, version, status, seconds, started, finished, digest, layers, weights in rows]

    def smoke_records(self) -> list[tuple[str, str, bool, float | None, float | None, float]]:
        """(model, version, passed, load seconds, inference seconds, when) of every smoke, oldest first."""
        rows = self._store.execute(
            "SELECT b.model, b.version, s.passed, s.load_seconds, s.inference_seconds, s.at FROM smoke_results s"
            " JOIN builds b ON b.id = s.build_id ORDER BY s.at")
        return [(model, version, bool(passed), load, inference, at) for model, version, passed, load, inference, at in rows]

    def push_records(self) -> list[tuple[str, str, str, str, float]]:
        """(build id, model, version, outcome, when) of every push, oldest first."""
        return list(self._store.execute(
            "SELECT p.build_id, b.model, p.tag, p.outcome, p.at FROM pushes p JOIN builds b ON b.id = p.build_id"
            " ORDER BY p.at"))

    def deployment_records(self) -> list[tuple[str, str | None, str, str, str, str | None, float]]:
        """(model, version, digest, target, outcome, previous digest, when) of every deployment, oldest first."""
        return list(self._store.execute(
            "SELECT model, version, digest, target, outcome, previous_digest, at FROM deployments ORDER BY at"))
