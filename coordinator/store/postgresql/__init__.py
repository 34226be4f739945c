"""The store on PostgreSQL: for deployments that outgrow one machine, shared by every coordinator replica.

    >>> store = PostgresStore.open("postgresql://commonweights@db.example/commonweights", clock=time.time)
    >>> with store.transaction():
    ...     store.set_campaign_status(campaign_id, "paused")

The SQL is `coordinator.store.sql`'s; this package adds the connections (`connection.py`: psycopg 3
with a pool). Needs the `scale` extra (`pip install commonweights[scale]`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from coordinator.store.interface import Store
from coordinator.store.postgresql.connection import PostgresDatabase
from coordinator.store.sql import SQLStore

__all__ = ["PostgresDatabase", "PostgresStore"]


class PostgresStore(SQLStore, PostgresDatabase):
    """Every concern's mixin over one PostgreSQL database."""

    @classmethod
    def open(cls, url: str, *, clock: Callable[[], float] = time.time, pool_size: int = 16) -> PostgresStore:
        """Connect (a `postgresql://` URL, libpq's syntax) and migrate to `SCHEMA_VERSION`."""
        store = cls(url, clock=clock, pool_size=pool_size)
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
        return store


_: type[Store] = PostgresStore  # mypy proves the PostgreSQL store is a whole `Store`
