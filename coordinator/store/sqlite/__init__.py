"""The store on SQLite (WAL): the embedded default, one file beside the blobs.

    >>> store = SQLiteStore.open(data_dir / "coordinator.sqlite3", clock=time.time)
    >>> with store.transaction():
    ...     store.set_campaign_status(campaign_id, "paused")

One mixin per concern of `coordinator.store.interface` (campaigns, work, submissions, volunteers,
tokens), all over one `SQLiteDatabase` (connections, transactions, migrations).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from coordinator.store.interface import Store
from coordinator.store.sqlite.campaigns import SQLiteCampaigns
from coordinator.store.sqlite.database import SQLiteDatabase
from coordinator.store.sqlite.schema import MIGRATIONS, SCHEMA_VERSION
from coordinator.store.sqlite.submissions import SQLiteSubmissions
from coordinator.store.sqlite.tokens import SQLiteTokens
from coordinator.store.sqlite.volunteers import SQLiteVolunteers
from coordinator.store.sqlite.work import SQLiteWork

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SQLiteDatabase", "SQLiteStore"]


class SQLiteStore(SQLiteCampaigns, SQLiteWork, SQLiteSubmissions, SQLiteVolunteers, SQLiteTokens):
    """Every concern's mixin over one database: the `Store` the coordinator runs on by default."""

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> SQLiteStore:
        """Open (creating the folder and the file if needed) and migrate to `SCHEMA_VERSION`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(path, clock=clock)
        store.migrate()
        return store


_: type[Store] = SQLiteStore  # mypy proves the SQLite store is a whole `Store`
