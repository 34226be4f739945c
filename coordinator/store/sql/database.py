"""What the SQL store needs from a database, whichever it is: statements, transactions, migrations.

    >>> class SQLiteDatabase(SQLDatabase): ...        # coordinator.store.sqlite
    >>> class PostgresDatabase(SQLDatabase): ...      # coordinator.store.postgresql
    >>> with database.transaction():
    ...     database._execute("UPDATE campaigns SET status = ? WHERE id = ?", ("paused", 1))

The tables' mixins (`campaigns.py`, `work.py`, …) write their SQL once, in the dialect both
databases speak (`?` placeholders, `INSERT … ON CONFLICT`, `RETURNING id`), and run it through the
four methods here. A backend implements `_run` (one statement, on the thread's transaction if it has
one), `transaction`, `schema_version`, `_migrate_step` and `close`.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from coordinator.store.rows import StoreActivity, StoreError
from coordinator.store.sql.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Clock", "Row", "SQLDatabase", "statements"]

Row = dict[str, Any]
Clock = Callable[[], float]


class SQLDatabase(ABC):
    """The base of every table's mixin: a database the store's SQL runs on."""

    clock: Clock = time.time
    backend = "sql"
    _tally = (0, 0.0, 0)  # statements, seconds, commits: replaced whole under `_tally_lock`
    _tally_lock = threading.Lock()

    def activity(self) -> StoreActivity:
        """What this store has done since it opened (for /metrics and the benchmarks)."""
        statements, seconds, commits = self._tally
        return StoreActivity(self.backend, statements, seconds, commits)

    def _count(self, seconds: float, *, commit: bool = False) -> None:
        with self._tally_lock:
            statements, total, commits = self._tally
            self._tally = (statements + (not commit), total + seconds, commits + commit)

    @abstractmethod
    def _run(self, sql: str, args: Sequence[Any], *, fetch: bool) -> tuple[int, list[Row]]:
        """Run one statement: (rows changed, rows returned when `fetch`)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction; nested use is a savepoint (the contract in `coordinator.store.interface`)."""

    @property
    @abstractmethod
    def schema_version(self) -> int: ...

    @abstractmethod
    def _migrate_step(self, version: int) -> None:
        """Run MIGRATIONS[version] and record version + 1, inside the caller's transaction."""

    @abstractmethod
    def close(self) -> None: ...

    def serve_exclusively(self) -> None:
        """Claim the database for the one coordinator that serves it; StoreError if another does. A
        database only one process can open (SQLite's file in its data dir) needs nothing."""
        return None

    def migrate(self) -> None:
        """Bring the database to `SCHEMA_VERSION`, one step per transaction; refuse a newer one."""
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {current}, newer than this coordinator's {SCHEMA_VERSION}; "
                "upgrade commonweights or point the coordinator at another database"
            )
        for version in range(current, SCHEMA_VERSION):
            with self.transaction():
                self._serialize_migrations()
                if self.schema_version == version:  # another replica may have run this step meanwhile
                    self._migrate_step(version)

    def _serialize_migrations(self) -> None:
        """Inside a migration's transaction: wait until no other process migrates this database (a
        database several coordinators share); a database only one process opens needs nothing."""
        return None

    def _timed(self, sql: str, args: Sequence[Any], *, fetch: bool) -> tuple[int, list[Row]]:
        began = time.perf_counter()
        try:
            return self._run(sql, args, fetch=fetch)
        finally:
            self._count(time.perf_counter() - began)

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run a statement; how many rows it changed."""
        return self._timed(sql, args, fetch=False)[0]

    def _insert(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run an INSERT … RETURNING id; the new row's id."""
        rows = self._timed(sql, args, fetch=True)[1]
        return int(rows[0]["id"])

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = self._timed(sql, args, fetch=True)[1]
        return rows[0] if rows else None

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self._timed(sql, args, fetch=True)[1]


def statements(script: str) -> list[str]:
    """A migration's statements (none of ours holds a ';' inside a literal)."""
    return [s.strip() for s in script.split(";") if s.strip()]
