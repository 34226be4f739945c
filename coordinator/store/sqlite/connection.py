"""The SQLite database under the embedded store: connections, transactions and migrations.

    >>> database = SQLiteDatabase(path, clock=time.time)
    >>> database.migrate()
    >>> with database.transaction():
    ...     database._execute("UPDATE campaigns SET status = ? WHERE id = ?", ("paused", 1))

Every write that a volunteer is told about (an ack, a lease) is committed before the reply goes
out; `synchronous=FULL` makes a commit durable through power loss. Multi-row changes that must
happen together — closing a round and publishing its version — run in one transaction, so a
coordinator killed at any instant restarts into either the state before or the state after.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coordinator.store.sql.database import MIGRATIONS, Clock, Row, SQLDatabase, statements

__all__ = ["SQLiteDatabase"]


class SQLiteDatabase(SQLDatabase):
    """One SQLite database shared by the event loop and the engine's worker threads.

    Each thread gets its own connection (WAL lets readers run beside a writer), and write
    transactions queue on one process-wide lock instead of on SQLite's busy handler, which sleeps in
    steps of milliseconds when two connections want to write at once.
    """

    backend = "sqlite"

    def __init__(self, path: Path, *, clock: Clock = time.time) -> None:
        self.path = path
        self.clock = clock
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.RLock()

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA busy_timeout=5000")
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def close(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()

    @property
    def schema_version(self) -> int:
        version: int = self.db.execute("PRAGMA user_version").fetchone()[0]
        return version

    def _migrate_step(self, version: int) -> None:
        for statement in statements(MIGRATIONS[version]):
            self.db.execute(statement)
        self.db.execute(f"PRAGMA user_version = {version + 1}")

    def _run(self, sql: str, args: Sequence[Any], *, fetch: bool) -> tuple[int, list[Row]]:
        cursor = self.db.execute(sql, args)
        rows = [dict(row) for row in cursor.fetchall()] if fetch else []
        return cursor.rowcount, rows

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction (BEGIN IMMEDIATE). A nested use is a savepoint: if it raises, its own
        writes are undone and the enclosing transaction goes on (the engine groups many volunteers'
        commits into one transaction, and one failing must not take the others' writes with it)."""
        depth: int = getattr(self._local, "depth", 0)
        if depth:
            db = self.db
            savepoint = f"nested_{depth}"
            db.execute(f"SAVEPOINT {savepoint}")
            self._local.depth = depth + 1
            try:
                yield
            except BaseException:
                db.execute(f"ROLLBACK TO {savepoint}")
                db.execute(f"RELEASE {savepoint}")
                raise
            else:
                db.execute(f"RELEASE {savepoint}")
            finally:
                self._local.depth = depth
            return
        with self._write_lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            self._local.depth = 1
            try:
                yield
            except BaseException:
                db.execute("ROLLBACK")
                raise
            else:
                committing = time.perf_counter()
                db.execute("COMMIT")
                self._count(time.perf_counter() - committing, commit=True)
            finally:
                self._local.depth = 0
