"""The build ledger: SQLite, for history and analytics (the registry is the durable truth).

WAL mode and a busy timeout, so two builds on one host can write at once; schema migrations
by PRAGMA user_version, applied in one immediate transaction. Every download attempt is a row
(source, mirror, file, bytes, seconds, outcome, error): `builder stats` reads them to show each
mirror's success rate and throughput, and the build prefers the best mirror from them.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from builder.errors import ConfigError
from builder.fetch import Attempt

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
)
# A mirror needs this many finished attempts before its history reorders the mirrors.
MIN_ATTEMPTS_FOR_RANKING = 3


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
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"{self.path}: cannot open the build ledger: {exc}: check the path (BUILDER_LEDGER)") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front, so concurrent builds queue, not fail."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise ConfigError(f"{self.path} was written by a newer builder (schema {version}): upgrade builder")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        self._db.close()

    def record_attempts(self, attempts: Iterable[Attempt], build_id: str | None = None) -> None:
        rows = [(time.time(), build_id, a.model, a.repo_id, a.revision, a.path, a.mirror, a.bytes, a.seconds,
                 a.outcome, a.error) for a in attempts]
        if not rows:
            return
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO download_attempts (at, build_id, model, repo_id, revision, path, mirror, bytes, seconds,"
                " outcome, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def attempts(self, model: str | None = None) -> list[Attempt]:
        query = "SELECT model, repo_id, revision, path, mirror, bytes, seconds, outcome, error FROM download_attempts"
        params: tuple = ()
        if model:
            query, params = query + " WHERE model = ?", (model,)
        return [Attempt(*row) for row in self._db.execute(query + " ORDER BY id", params)]

    def mirror_stats(self, model: str | None = None) -> list[MirrorStats]:
        """Per mirror: attempts (ok, retry, failed; cache hits are not mirror attempts), bytes and
        seconds of the successful ones."""
        where = "WHERE outcome != 'cached'" + (" AND model = ?" if model else "")
        rows = self._db.execute(
            f"""SELECT mirror, COUNT(*),
                       SUM(outcome = 'ok'), SUM(outcome = 'retry'), SUM(outcome = 'failed'),
                       COALESCE(SUM(CASE WHEN outcome = 'ok' THEN bytes END), 0),
                       COALESCE(SUM(CASE WHEN outcome = 'ok' THEN seconds END), 0)
                FROM download_attempts {where} GROUP BY mirror ORDER BY mirror""",
            (model,) if model else (),
        )
        return [MirrorStats(*row) for row in rows]

    def mirror_ranking(self) -> list[str]:
        """Mirrors with enough history, best first: success rate, then throughput."""
        ranked = [s for s in self.mirror_stats() if s.attempts >= MIN_ATTEMPTS_FOR_RANKING]
        ranked.sort(key=lambda s: (-round(s.success_rate, 2), -s.throughput))
        return [s.mirror for s in ranked]
