"""The store on SQLite (WAL): the embedded default, one file beside the blobs.

    >>> store = SQLiteStore.open(data_dir / "coordinator.sqlite3", clock=time.time)
    >>> with store.transaction():
    ...     store.set_campaign_status(campaign_id, "paused")

The SQL is `coordinator.store.sql`'s; this package adds the connections (`connection.py`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from coordinator.store.interface import Store
from coordinator.store.rows import StoreError
from coordinator.store.sql import MIGRATIONS, SCHEMA_VERSION, SQLStore
from coordinator.store.sqlite.connection import SQLiteDatabase

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteDatabase", "SQLiteStore"]


class SQLiteStore(SQLStore, SQLiteDatabase):
    """Every concern's mixin over one SQLite file: the `Store` the coordinator runs on by default."""

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> SQLiteStore:
        """Open (creating the folder and the file if needed) and migrate to `SCHEMA_VERSION`."""
        if sqlite3.sqlite_version_info < (3, 35):
            raise StoreError(
                f"this Python's SQLite is {sqlite3.sqlite_version}; the store needs 3.35 or newer (RETURNING)"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(path, clock=clock)
        store.migrate()
        return store


_: type[Store] = SQLiteStore  # mypy proves the SQLite store is a whole `Store`
