"""The PostgreSQL database under the store: a pool of connections, transactions and migrations.

    >>> database = PostgresDatabase("postgresql://commonweights@127.0.0.1:5432/commonweights")
    >>> database.migrate()
    >>> with database.transaction():
    ...     database._execute("UPDATE campaigns SET status = ? WHERE id = ?", ("paused", 1))

Connections come from a psycopg pool and run in autocommit, so a read outside a transaction sees
what is committed and holds nothing. A transaction pins one connection to its thread until it ends;
a nested one is a savepoint (psycopg's `Connection.transaction`). A commit returns once PostgreSQL
has flushed it (`synchronous_commit` on, its default): volunteers are acked only after that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from coordinator.store.rows import StoreError
from coordinator.store.sql.database import MIGRATIONS, Clock, Row, SQLDatabase, statements
from coordinator.store.sql.schema import for_postgres

try:
    import psycopg
    import psycopg.sql
    from psycopg.rows import dict_row
    from psycopg_pool import ConnectionPool
except ImportError as error:  # pragma: no cover - the `scale` extra is missing
    raise ImportError(
        "the PostgreSQL store needs psycopg and psycopg-pool: pip install 'commonweights[scale]'"
    ) from error

__all__ = ["PostgresDatabase"]

# The advisory lock key migrations hold, so that replicas starting together migrate one at a time.
MIGRATION_LOCK = 0x636F_6D6D_6F6E  # "common"
SERVING_LOCK = 0x636F_6D6D_6F6F  # held by the coordinator serving the database
CONNECT_TIMEOUT_S = 30


class PostgresDatabase(SQLDatabase):
    """One PostgreSQL database, shared by this process's threads through a pool."""

    backend = "postgresql"

    def __init__(self, url: str, *, clock: Clock = time.time, pool_size: int = 16) -> None:
        self.url = url
        self.clock = clock
        self._local = threading.local()
        # Writers in this process queue here, as the store's contract asks.
        self._write_lock = threading.RLock()
        self._serving: psycopg.Connection[Row] | None = None
        self.pool: ConnectionPool[psycopg.Connection[Row]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            # An ack waits for its commit to be flushed, whatever the server's or the role's default says.
            kwargs={"autocommit": True, "row_factory": dict_row, "options": "-c synchronous_commit=on"},
            check=ConnectionPool.check_connection,  # a connection the server dropped (a restart) is replaced
            open=False,
            name="commonweights-store",
        )
        try:
            # One connection first, so that a refused one fails now rather than after the pool's retries.
            psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S).close()
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except psycopg.ProgrammingError:
            # libpq's complaint about a malformed URL quotes the URL, password and all.
            raise StoreError("the --database URL is malformed (libpq could not parse it)") from None
        except psycopg.Error as error:
            raise StoreError(f"can't connect to PostgreSQL at {_redacted(url)}: {_without(error, url)}") from None
        except Exception as error:  # the pool's PoolTimeout: the server never answered
            self.pool.close()
            raise StoreError(f"can't connect to PostgreSQL at {_redacted(url)}: {_without(error, url)}") from None

    def serve_exclusively(self) -> None:
        """Claim this database for this process until it closes (a session advisory lock on a connection
        of its own, released by PostgreSQL when the process dies); StoreError if another holds it. Until
        coordinator replicas coordinate their campaigns, two serving one database would both aggregate."""
        if self._serving is not None:
            return
        connection = psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
        claimed = connection.execute("SELECT pg_try_advisory_lock(%s) AS claimed", (SERVING_LOCK,)).fetchone()
        if not claimed or not claimed["claimed"]:
            connection.close()
            raise StoreError(
                f"another coordinator is serving the database at {_redacted(self.url)}; one coordinator per "
                "database for now (README: Running at scale)"
            )
        self._serving = connection

    def close(self) -> None:
        if self._serving is not None:
            self._serving.close()
            self._serving = None
        self.pool.close()

    @property
    def schema_version(self) -> int:
        # pg_class read through the statement's snapshot: to_regclass() answers from a cache that a
        # replica waiting on the migration lock has not refreshed since another one made the table.
        row = self._one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = "
            "c.relnamespace WHERE c.relname = 'schema_version' AND n.nspname = current_schema()) AS present"
        )
        if row is None or not row["present"]:
            return 0
        version = self._one("SELECT MAX(version) AS version FROM schema_version")
        return int(version["version"]) if version and version["version"] is not None else 0

    def _serialize_migrations(self) -> None:
        self._execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))

    def _migrate_step(self, version: int) -> None:
        self._execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        for statement in statements(for_postgres(MIGRATIONS[version])):
            self._execute(statement)
        self._execute("DELETE FROM schema_version")
        self._execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))

    def _run(self, sql: str, args: Sequence[Any], *, fetch: bool) -> tuple[int, list[Row]]:
        query = _placeholders(sql)
        pinned: psycopg.Connection[Row] | None = getattr(self._local, "connection", None)
        if pinned is not None:
            return _fetched(pinned.execute(query, args), fetch)
        with self.pool.connection() as connection:
            return _fetched(connection.execute(query, args), fetch)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction; nested on the same thread, a savepoint whose failure undoes only its own
        writes (the engine groups many volunteers' commits into one transaction)."""
        pinned: psycopg.Connection[Row] | None = getattr(self._local, "connection", None)
        if pinned is not None:
            with pinned.transaction():
                yield
            return
        with self._write_lock, self.pool.connection() as connection:
            self._local.connection = connection
            try:
                with connection.transaction():
                    yield
                    committing = time.perf_counter()  # the commit itself runs as the block exits
            finally:
                self._local.connection = None
            self._count(time.perf_counter() - committing, commit=True)

    def notify(self, channel: str, payload: str) -> None:
        """Send `payload` to every connection listening on `channel` (PostgreSQL's NOTIFY, at most 8000 bytes)."""
        self._execute("SELECT pg_notify(?, ?)", (channel, payload))

    def listen(self, channel: str, stop: threading.Event) -> Iterator[str]:
        """What NOTIFY sends on `channel` from now on, as it comes, until `stop` is set; on a connection of
        its own (a listening connection can't go back to the pool). A lost connection raises."""
        with psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as connection:
            connection.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
            while not stop.is_set():
                for note in connection.notifies(timeout=1.0):
                    yield note.payload
                    if stop.is_set():
                        return


def _placeholders(sql: str) -> str:
    """The store's `?` placeholders as psycopg's `%s` (no statement of ours has a `?` or `%` literal)."""
    if "%" in sql:
        raise StoreError(f"a '%' in a statement would be read as a placeholder: {sql[:80]}")
    return sql.replace("?", "%s")


def _fetched(cursor: psycopg.Cursor[Row], fetch: bool) -> tuple[int, list[Row]]:
    return cursor.rowcount, (cursor.fetchall() if fetch else [])


def _without(error: Exception, url: str) -> str:
    """An error's message with the URL's password taken out, should the driver have quoted it."""
    message = str(error)
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        return message
    return message.replace(str(password), "***") if password else message


def _redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unparseable URL)"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
