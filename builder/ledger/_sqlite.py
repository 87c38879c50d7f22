"""The ledger in one SQLite file: the default, for one host (or several builds on one host).

WAL mode and a busy timeout, so two builds on one host can write at once; BEGIN IMMEDIATE takes
the write lock up front, so concurrent writers queue instead of failing. The schema version is
PRAGMA user_version, read and written inside the migration's transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from builder.errors import ConfigError


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        with self.opening():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=30000")

    @contextlib.contextmanager
    def opening(self) -> Iterator[None]:
        """Turn a failure while opening or migrating into one line that names the path."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"{self.path}: cannot open the build ledger: {exc}: check the path (BUILDER_LEDGER)") from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def lock_schema(self) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the database's one write lock."""

    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def set_schema_version(self, number: int) -> None:
        self._db.execute(f"PRAGMA user_version = {int(number)}")

    def execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self._db.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        self._db.executemany(sql, rows)

    def close(self) -> None:
        self._db.close()
