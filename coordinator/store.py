"""The coordinator's durable state in SQLite (WAL): campaigns, versions, rounds, units, leases,
submissions, volunteers, credit and API tokens.

    >>> store = Store.open(data_dir / "coordinator.sqlite3")
    >>> with store.transaction():
    ...     store.set_campaign_status(campaign_id, "paused")

Every write that a volunteer is told about (an ack, a lease) is committed before the reply goes
out; `synchronous=FULL` makes a commit durable through power loss. Multi-row changes that must
happen together — closing a round and publishing its version — run in one transaction, so a
coordinator killed at any instant restarts into either the state before or the state after.

The schema carries a version; `MIGRATIONS[n]` upgrades a database from version n to n+1.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "CampaignRow",
    "RoundRow",
    "Store",
    "StoreError",
    "SubmissionRow",
    "UnitRow",
    "VersionRow",
    "VolunteerRow",
]

MIGRATIONS: list[str] = [
    # 0 -> 1: the initial schema
    """
    CREATE TABLE campaigns (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        spec_json TEXT NOT NULL,
        dataset_path TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'finished', 'stopped')),
        current_version INTEGER NOT NULL DEFAULT 0,
        tokens_trained INTEGER NOT NULL DEFAULT 0,
        data_cursor INTEGER NOT NULL DEFAULT 0,
        epoch INTEGER NOT NULL DEFAULT 0,
        rounds_closed INTEGER NOT NULL DEFAULT 0,
        owner TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE TABLE versions (
        campaign_id INTEGER NOT NULL REFERENCES campaigns(id),
        version INTEGER NOT NULL,
        checkpoint_sha TEXT NOT NULL,
        checkpoint_size INTEGER NOT NULL,
        state_sha TEXT NOT NULL,
        round_id INTEGER,
        updates INTEGER NOT NULL DEFAULT 0,
        tokens_total INTEGER NOT NULL DEFAULT 0,
        holdout_loss REAL,
        created_at REAL NOT NULL,
        PRIMARY KEY (campaign_id, version)
    );
    CREATE TABLE rounds (
        id INTEGER PRIMARY KEY,
        campaign_id INTEGER NOT NULL REFERENCES campaigns(id),
        number INTEGER NOT NULL,
        version INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
        opened_at REAL NOT NULL,
        deadline REAL NOT NULL,
        closed_at REAL,
        close_reason TEXT,
        UNIQUE (campaign_id, number)
    );
    CREATE TABLE units (
        id TEXT PRIMARY KEY,
        campaign_id INTEGER NOT NULL REFERENCES campaigns(id),
        round_id INTEGER NOT NULL REFERENCES rounds(id),
        version INTEGER NOT NULL,
        data_start INTEGER NOT NULL,
        data_tokens INTEGER NOT NULL,
        data_sha TEXT NOT NULL,
        shard_index INTEGER NOT NULL,
        shard_json TEXT NOT NULL,
        seed INTEGER NOT NULL,
        replica_of TEXT REFERENCES units(id),
        state TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'done', 'cancelled')),
        volunteer_id TEXT,
        lease_id TEXT,
        lease_deadline REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE INDEX units_by_state ON units (campaign_id, state);
    CREATE TABLE submissions (
        id INTEGER PRIMARY KEY,
        unit_id TEXT NOT NULL REFERENCES units(id),
        volunteer_id TEXT NOT NULL,
        update_sha TEXT NOT NULL,
        update_size INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('accepted', 'rejected', 'pending_replica')),
        code TEXT,
        message TEXT NOT NULL,
        round_id INTEGER,
        staleness INTEGER NOT NULL DEFAULT 0,
        weight REAL NOT NULL DEFAULT 0,
        norm REAL,
        tokens INTEGER NOT NULL,
        seconds REAL NOT NULL,
        losses_json TEXT NOT NULL,
        credit REAL NOT NULL DEFAULT 0,
        applied INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        UNIQUE (unit_id, volunteer_id)
    );
    CREATE INDEX submissions_by_round ON submissions (round_id, status, applied);
    CREATE TABLE volunteers (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL,
        banned INTEGER NOT NULL DEFAULT 0,
        capabilities_json TEXT NOT NULL DEFAULT '{}',
        consecutive_valid INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        credit REAL NOT NULL DEFAULT 0,
        tokens INTEGER NOT NULL DEFAULT 0,
        units_accepted INTEGER NOT NULL DEFAULT 0,
        units_rejected INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('admin', 'lead')),
        label TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 1 -> 2: every lease ever granted, so a result under an old lease of this volunteer is told
    # "lease_expired" and one under a lease it never held "not_your_lease"
    """
    CREATE TABLE leases (
        lease_id TEXT NOT NULL,
        unit_id TEXT NOT NULL REFERENCES units(id),
        volunteer_id TEXT NOT NULL,
        granted_at REAL NOT NULL,
        PRIMARY KEY (unit_id, lease_id)
    );
    INSERT INTO leases (lease_id, unit_id, volunteer_id, granted_at)
        SELECT lease_id, id, volunteer_id, created_at FROM units WHERE lease_id IS NOT NULL;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    code = "store_error"


@dataclass(frozen=True)
class CampaignRow:
    id: int
    name: str
    spec: dict[str, Any]
    dataset_path: str
    status: str
    current_version: int
    tokens_trained: int
    data_cursor: int
    epoch: int
    rounds_closed: int
    owner: str
    created_at: float


@dataclass(frozen=True)
class VersionRow:
    campaign_id: int
    version: int
    checkpoint_sha: str
    checkpoint_size: int
    state_sha: str
    round_id: int | None
    updates: int
    tokens_total: int
    holdout_loss: float | None
    created_at: float


@dataclass(frozen=True)
class RoundRow:
    id: int
    campaign_id: int
    number: int
    version: int
    status: str
    opened_at: float
    deadline: float
    closed_at: float | None
    close_reason: str | None


@dataclass(frozen=True)
class UnitRow:
    id: str
    campaign_id: int
    round_id: int
    version: int
    data_start: int
    data_tokens: int
    data_sha: str
    shard_index: int
    shard: list[str]
    seed: int
    replica_of: str | None
    state: str
    volunteer_id: str | None
    lease_id: str | None
    lease_deadline: float | None
    attempts: int
    created_at: float


@dataclass(frozen=True)
class SubmissionRow:
    id: int
    unit_id: str
    volunteer_id: str
    update_sha: str
    update_size: int
    status: str
    code: str | None
    message: str
    round_id: int | None
    staleness: int
    weight: float
    norm: float | None
    tokens: int
    seconds: float
    losses: list[float]
    credit: float
    applied: bool
    created_at: float


@dataclass(frozen=True)
class VolunteerRow:
    id: str
    token_hash: str
    name: str
    created_at: float
    last_seen: float
    banned: bool
    capabilities: dict[str, Any]
    consecutive_valid: int
    errors: int
    credit: float
    tokens: int
    units_accepted: int
    units_rejected: int


class Store:
    """One SQLite database shared by the event loop and the engine's worker threads.

    Each thread gets its own connection (WAL lets readers run beside a writer), and write
    transactions queue on one process-wide lock instead of on SQLite's busy handler, which sleeps in
    steps of milliseconds when two connections want to write at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_lock = threading.RLock()

    @classmethod
    def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(path)
        store.migrate()
        return store

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

    def migrate(self) -> None:
        current = self.schema_version
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {current}, newer than this coordinator's {SCHEMA_VERSION}; "
                "upgrade commonweights or point --data-dir at another folder"
            )
        for version in range(current, SCHEMA_VERSION):
            with self.transaction():
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {version + 1}")

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
                db.execute("COMMIT")
            finally:
                self._local.depth = 0

    def _one(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(sql, args).fetchone()
        return row

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return list(self.db.execute(sql, args).fetchall())

    # campaigns -----------------------------------------------------------------------------

    def create_campaign(
        self, name: str, spec: dict[str, Any], dataset_path: str, owner: str, version0: tuple[str, int, str]
    ) -> int:
        """Insert a campaign and its version 0 (checkpoint sha, size, optimizer-state sha)."""
        now = time.time()
        with self.transaction():
            if self._one("SELECT 1 FROM campaigns WHERE name = ?", (name,)):
                raise StoreError(f"a campaign named {name!r} already exists; choose another name")
            cursor = self.db.execute(
                "INSERT INTO campaigns (name, spec_json, dataset_path, status, owner, created_at) "
                "VALUES (?, ?, ?, 'active', ?, ?)",
                (name, json.dumps(spec), dataset_path, owner, now),
            )
            campaign_id = int(cursor.lastrowid or 0)
            sha, size, state_sha = version0
            self.db.execute(
                "INSERT INTO versions (campaign_id, version, checkpoint_sha, checkpoint_size, state_sha, created_at) "
                "VALUES (?, 0, ?, ?, ?, ?)",
                (campaign_id, sha, size, state_sha, now),
            )
        return campaign_id

    def campaign(self, campaign_id: int) -> CampaignRow | None:
        row = self._one("SELECT * FROM campaigns WHERE id = ?", (campaign_id,))
        return _campaign(row) if row else None

    def campaign_by_name(self, name: str) -> CampaignRow | None:
        row = self._one("SELECT * FROM campaigns WHERE name = ?", (name,))
        return _campaign(row) if row else None

    def campaigns(self, statuses: Sequence[str] | None = None) -> list[CampaignRow]:
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = self._all(f"SELECT * FROM campaigns WHERE status IN ({marks}) ORDER BY id", tuple(statuses))
        else:
            rows = self._all("SELECT * FROM campaigns ORDER BY id")
        return [_campaign(r) for r in rows]

    def set_campaign_status(self, campaign_id: int, status: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE campaigns SET status = ? WHERE id = ?", (status, campaign_id))

    def advance_data_cursor(self, campaign_id: int, cursor: int, epoch: int) -> None:
        self.db.execute("UPDATE campaigns SET data_cursor = ?, epoch = ? WHERE id = ?", (cursor, epoch, campaign_id))

    # versions ------------------------------------------------------------------------------

    def version(self, campaign_id: int, version: int) -> VersionRow | None:
        row = self._one("SELECT * FROM versions WHERE campaign_id = ? AND version = ?", (campaign_id, version))
        return VersionRow(**dict(row)) if row else None

    def versions(self, campaign_id: int) -> list[VersionRow]:
        rows = self._all("SELECT * FROM versions WHERE campaign_id = ? ORDER BY version", (campaign_id,))
        return [VersionRow(**dict(r)) for r in rows]

    def set_holdout_loss(self, campaign_id: int, version: int, loss: float) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE versions SET holdout_loss = ? WHERE campaign_id = ? AND version = ?",
                (loss, campaign_id, version),
            )

    def latest_holdout_loss(self, campaign_id: int) -> float | None:
        """The holdout loss of a campaign's newest evaluated version."""
        row = self._one(
            "SELECT holdout_loss FROM versions WHERE campaign_id = ? AND holdout_loss IS NOT NULL "
            "ORDER BY version DESC LIMIT 1",
            (campaign_id,),
        )
        return float(row["holdout_loss"]) if row else None

    def is_checkpoint(self, digest: str) -> bool:
        return self._one("SELECT 1 FROM versions WHERE checkpoint_sha = ? LIMIT 1", (digest,)) is not None

    # rounds and units ----------------------------------------------------------------------

    def is_unit_data_of(self, digest: str, volunteer_id: str) -> bool:
        row = self._one("SELECT 1 FROM units WHERE data_sha = ? AND volunteer_id = ? LIMIT 1", (digest, volunteer_id))
        return row is not None

    def open_round(
        self, campaign_id: int, number: int, version: int, deadline: float, units: Sequence[dict[str, Any]]
    ) -> int:
        now = time.time()
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO rounds (campaign_id, number, version, status, opened_at, deadline) "
                "VALUES (?, ?, ?, 'open', ?, ?)",
                (campaign_id, number, version, now, deadline),
            )
            round_id = int(cursor.lastrowid or 0)
            for unit in units:
                self.insert_unit(campaign_id, round_id, version, unit, now)
        return round_id

    def insert_unit(self, campaign_id: int, round_id: int, version: int, unit: dict[str, Any], now: float) -> None:
        self.db.execute(
            "INSERT INTO units (id, campaign_id, round_id, version, data_start, data_tokens, data_sha, "
            "shard_index, shard_json, seed, replica_of, state, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
            (
                unit["id"],
                campaign_id,
                round_id,
                version,
                unit["data_start"],
                unit["data_tokens"],
                unit["data_sha"],
                unit["shard_index"],
                json.dumps(unit["shard"]),
                unit["seed"],
                unit.get("replica_of"),
                now,
            ),
        )

    def open_round_of(self, campaign_id: int) -> RoundRow | None:
        row = self._one("SELECT * FROM rounds WHERE campaign_id = ? AND status = 'open'", (campaign_id,))
        return RoundRow(**dict(row)) if row else None

    def round(self, round_id: int) -> RoundRow | None:
        row = self._one("SELECT * FROM rounds WHERE id = ?", (round_id,))
        return RoundRow(**dict(row)) if row else None

    def rounds(self, campaign_id: int) -> list[RoundRow]:
        rows = self._all("SELECT * FROM rounds WHERE campaign_id = ? ORDER BY number", (campaign_id,))
        return [RoundRow(**dict(r)) for r in rows]

    def extend_round_deadline(self, round_id: int, deadline: float) -> None:
        with self.transaction():
            self.db.execute("UPDATE rounds SET deadline = ? WHERE id = ?", (deadline, round_id))

    def unit(self, unit_id: str) -> UnitRow | None:
        row = self._one("SELECT * FROM units WHERE id = ?", (unit_id,))
        return _unit(row) if row else None

    def units(
        self, campaign_id: int, states: Sequence[str] = ("pending",), round_id: int | None = None
    ) -> list[UnitRow]:
        marks = ",".join("?" * len(states))
        sql = f"SELECT * FROM units WHERE campaign_id = ? AND state IN ({marks})"
        args: list[Any] = [campaign_id, *states]
        if round_id is not None:
            sql += " AND round_id = ?"
            args.append(round_id)
        # Replicas first (they hold a result back), then the oldest units.
        rows = self._all(sql + " ORDER BY replica_of IS NULL, created_at, id", args)
        return [_unit(r) for r in rows]

    def lease(self, unit_id: str, volunteer_id: str, lease_id: str, deadline: float) -> None:
        with self.transaction():
            changed = self.db.execute(
                "UPDATE units SET state = 'leased', volunteer_id = ?, lease_id = ?, lease_deadline = ?, "
                "attempts = attempts + 1 WHERE id = ? AND state = 'pending'",
                (volunteer_id, lease_id, deadline, unit_id),
            ).rowcount
            if changed != 1:
                raise StoreError(f"unit {unit_id} is no longer pending")
            self.db.execute(
                "INSERT INTO leases (lease_id, unit_id, volunteer_id, granted_at) VALUES (?, ?, ?, ?)",
                (lease_id, unit_id, volunteer_id, time.time()),
            )

    def lease_holder(self, unit_id: str, lease_id: str) -> str | None:
        """The volunteer a lease on this unit was ever granted to, or None for a lease never granted."""
        row = self._one("SELECT volunteer_id FROM leases WHERE unit_id = ? AND lease_id = ?", (unit_id, lease_id))
        return str(row["volunteer_id"]) if row else None

    def extend_lease(self, unit_id: str, lease_id: str, deadline: float) -> bool:
        with self.transaction():
            changed = self.db.execute(
                "UPDATE units SET lease_deadline = MAX(lease_deadline, ?) "
                "WHERE id = ? AND lease_id = ? AND state = 'leased'",
                (deadline, unit_id, lease_id),
            ).rowcount
        return changed == 1

    def expire_leases(self, now: float) -> list[UnitRow]:
        """Return leased units whose deadline passed to 'pending' so they are issued again."""
        with self.transaction():
            rows = self._all("SELECT * FROM units WHERE state = 'leased' AND lease_deadline < ?", (now,))
            self.db.execute(
                "UPDATE units SET state = 'pending', volunteer_id = NULL, lease_id = NULL, lease_deadline = NULL "
                "WHERE state = 'leased' AND lease_deadline < ?",
                (now,),
            )
        return [_unit(r) for r in rows]

    def release_unit(self, unit_id: str) -> None:
        """Return a leased unit to the pool (its result was rejected; the slice still needs work)."""
        self.db.execute(
            "UPDATE units SET state = 'pending', volunteer_id = NULL, lease_id = NULL, lease_deadline = NULL "
            "WHERE id = ? AND state = 'leased'",
            (unit_id,),
        )

    def set_unit_state(self, unit_id: str, state: str) -> None:
        self.db.execute("UPDATE units SET state = ? WHERE id = ?", (state, unit_id))

    def cancel_pending_units(self, round_id: int) -> int:
        return self.db.execute(
            "UPDATE units SET state = 'cancelled' WHERE round_id = ? AND state = 'pending'", (round_id,)
        ).rowcount

    def replica_of(self, unit_id: str) -> UnitRow | None:
        row = self._one("SELECT * FROM units WHERE replica_of = ?", (unit_id,))
        return _unit(row) if row else None

    # submissions ---------------------------------------------------------------------------

    def add_submission(self, values: dict[str, Any]) -> int:
        cursor = self.db.execute(
            "INSERT INTO submissions (unit_id, volunteer_id, update_sha, update_size, status, code, message, "
            "round_id, staleness, weight, norm, tokens, seconds, losses_json, credit, created_at) "
            "VALUES (:unit_id, :volunteer_id, :update_sha, :update_size, :status, :code, :message, :round_id, "
            ":staleness, :weight, :norm, :tokens, :seconds, :losses_json, :credit, :created_at)",
            {**values, "losses_json": json.dumps(values["losses"]), "created_at": time.time()},
        )
        return int(cursor.lastrowid or 0)

    def update_submission(self, submission_id: int, **values: Any) -> None:
        allowed = {"status", "code", "message", "round_id", "weight", "credit", "staleness"}
        if not set(values) <= allowed:
            raise StoreError(f"can't update submission fields {set(values) - allowed}")
        assignments = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(f"UPDATE submissions SET {assignments} WHERE id = ?", (*values.values(), submission_id))

    def submission(self, unit_id: str, volunteer_id: str) -> SubmissionRow | None:
        row = self._one("SELECT * FROM submissions WHERE unit_id = ? AND volunteer_id = ?", (unit_id, volunteer_id))
        return _submission(row) if row else None

    def submission_for_unit(self, unit_id: str) -> SubmissionRow | None:
        row = self._one("SELECT * FROM submissions WHERE unit_id = ? ORDER BY id LIMIT 1", (unit_id,))
        return _submission(row) if row else None

    def submissions(
        self,
        *,
        round_id: int | None = None,
        statuses: Sequence[str] = ("accepted",),
        applied: bool | None = None,
        campaign_id: int | None = None,
        limit: int = 10_000,
    ) -> list[SubmissionRow]:
        marks = ",".join("?" * len(statuses))
        sql = f"SELECT s.* FROM submissions s JOIN units u ON u.id = s.unit_id WHERE s.status IN ({marks})"
        args: list[Any] = list(statuses)
        if round_id is not None:
            sql += " AND s.round_id = ?"
            args.append(round_id)
        if applied is not None:
            sql += " AND s.applied = ?"
            args.append(int(applied))
        if campaign_id is not None:
            sql += " AND u.campaign_id = ?"
            args.append(campaign_id)
        rows = self._all(sql + " ORDER BY s.id LIMIT ?", [*args, limit])
        return [_submission(r) for r in rows]

    def rejection_counts(self, campaign_id: int) -> dict[str, int]:
        rows = self._all(
            "SELECT s.code, COUNT(*) AS n FROM submissions s JOIN units u ON u.id = s.unit_id "
            "WHERE u.campaign_id = ? AND s.status = 'rejected' GROUP BY s.code",
            (campaign_id,),
        )
        return {str(r["code"]): int(r["n"]) for r in rows}

    def submission_counts(self, campaign_id: int) -> dict[str, int]:
        """A campaign's submissions by status (accepted, rejected, pending_replica)."""
        rows = self._all(
            "SELECT s.status, COUNT(*) AS n FROM submissions s JOIN units u ON u.id = s.unit_id "
            "WHERE u.campaign_id = ? GROUP BY s.status",
            (campaign_id,),
        )
        return {str(r["status"]): int(r["n"]) for r in rows}

    def tokens_accepted_since(self, campaign_id: int, since: float) -> int:
        """Tokens of a campaign's accepted submissions received at or after `since` (for tokens/s)."""
        row = self._one(
            "SELECT COALESCE(SUM(s.tokens), 0) AS n FROM submissions s JOIN units u ON u.id = s.unit_id "
            "WHERE u.campaign_id = ? AND s.status = 'accepted' AND s.created_at >= ?",
            (campaign_id, since),
        )
        return int(row["n"]) if row else 0

    def credit_since(self, campaign_id: int, since: float) -> dict[str, float]:
        """Credit per volunteer from a campaign's accepted submissions at or after `since`."""
        rows = self._all(
            "SELECT s.volunteer_id, SUM(s.credit) AS credit FROM submissions s JOIN units u ON u.id = s.unit_id "
            "WHERE u.campaign_id = ? AND s.status = 'accepted' AND s.created_at >= ? GROUP BY s.volunteer_id",
            (campaign_id, since),
        )
        return {str(r["volunteer_id"]): float(r["credit"]) for r in rows}

    def close_round(
        self,
        round_id: int,
        *,
        reason: str,
        version: int,
        checkpoint: tuple[str, int],
        state_sha: str,
        updates: int,
        tokens: int,
    ) -> None:
        """Publish version `version` and close the round: all or nothing."""
        now = time.time()
        with self.transaction():
            row = self.round(round_id)
            if row is None or row.status != "open":
                raise StoreError(f"round {round_id} is not open")
            self.db.execute(
                "UPDATE rounds SET status = 'closed', closed_at = ?, close_reason = ? WHERE id = ?",
                (now, reason, round_id),
            )
            self.db.execute(
                "INSERT INTO versions (campaign_id, version, checkpoint_sha, checkpoint_size, state_sha, round_id, "
                "updates, tokens_total, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, "
                "(SELECT tokens_trained FROM campaigns WHERE id = ?) + ?, ?)",
                (
                    row.campaign_id,
                    version,
                    checkpoint[0],
                    checkpoint[1],
                    state_sha,
                    round_id,
                    updates,
                    row.campaign_id,
                    tokens,
                    now,
                ),
            )
            self.db.execute(
                "UPDATE submissions SET applied = 1 WHERE round_id = ? AND status = 'accepted'", (round_id,)
            )
            self.db.execute(
                "UPDATE campaigns SET current_version = ?, tokens_trained = tokens_trained + ?, "
                "rounds_closed = rounds_closed + 1 WHERE id = ?",
                (version, tokens, row.campaign_id),
            )
            self.cancel_pending_units(round_id)

    # volunteers ----------------------------------------------------------------------------

    def add_volunteer(self, volunteer_id: str, token_hash: str, name: str, capabilities: dict[str, Any]) -> None:
        now = time.time()
        with self.transaction():
            self.db.execute(
                "INSERT INTO volunteers (id, token_hash, name, created_at, last_seen, capabilities_json) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (volunteer_id, token_hash, name, now, now, json.dumps(capabilities)),
            )

    def volunteer(self, volunteer_id: str) -> VolunteerRow | None:
        row = self._one("SELECT * FROM volunteers WHERE id = ?", (volunteer_id,))
        return _volunteer(row) if row else None

    def volunteer_by_token(self, token_hash: str) -> VolunteerRow | None:
        row = self._one("SELECT * FROM volunteers WHERE token_hash = ?", (token_hash,))
        return _volunteer(row) if row else None

    def volunteers(self, limit: int = 1000) -> list[VolunteerRow]:
        rows = self._all("SELECT * FROM volunteers ORDER BY credit DESC, created_at LIMIT ?", (limit,))
        return [_volunteer(r) for r in rows]

    def touch_volunteer(self, volunteer_id: str, name: str, capabilities: dict[str, Any]) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE volunteers SET last_seen = ?, name = ?, capabilities_json = ? WHERE id = ?",
                (time.time(), name, json.dumps(capabilities), volunteer_id),
            )

    def set_banned(self, volunteer_id: str, banned: bool) -> bool:
        with self.transaction():
            changed = self.db.execute(
                "UPDATE volunteers SET banned = ? WHERE id = ?", (int(banned), volunteer_id)
            ).rowcount
        return changed == 1

    def record_outcome(
        self, volunteer_id: str, *, accepted: bool, credit: float, tokens: int, trust: dict[str, int]
    ) -> None:
        """Credit, counts and the new trust state for one judged result (inside the caller's transaction)."""
        self.db.execute(
            "UPDATE volunteers SET credit = credit + ?, tokens = tokens + ?, units_accepted = units_accepted + ?, "
            "units_rejected = units_rejected + ?, consecutive_valid = ?, errors = ? WHERE id = ?",
            (
                credit,
                tokens,
                int(accepted),
                int(not accepted),
                trust["consecutive_valid"],
                trust["errors"],
                volunteer_id,
            ),
        )

    def leaderboard(self, campaign_id: int, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT v.id, v.name, SUM(s.tokens) AS tokens, SUM(s.credit) AS credit, COUNT(*) AS units "
            "FROM submissions s JOIN units u ON u.id = s.unit_id JOIN volunteers v ON v.id = s.volunteer_id "
            "WHERE u.campaign_id = ? AND s.status = 'accepted' GROUP BY v.id ORDER BY credit DESC LIMIT ?",
            (campaign_id, limit),
        )
        return [dict(r) for r in rows]

    # API tokens ----------------------------------------------------------------------------

    def add_api_token(self, token_hash: str, role: str, label: str) -> int:
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO api_tokens (token_hash, role, label, created_at) VALUES (?, ?, ?, ?)",
                (token_hash, role, label, time.time()),
            )
        return int(cursor.lastrowid or 0)

    def api_token_role(self, token_hash: str) -> tuple[int, str, str] | None:
        row = self._one("SELECT id, role, label FROM api_tokens WHERE token_hash = ? AND revoked = 0", (token_hash,))
        return (int(row["id"]), str(row["role"]), str(row["label"])) if row else None

    def api_tokens(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all("SELECT id, role, label, created_at, revoked FROM api_tokens ORDER BY id")]

    def revoke_api_token(self, token_id: int) -> bool:
        with self.transaction():
            changed = self.db.execute("UPDATE api_tokens SET revoked = 1 WHERE id = ?", (token_id,)).rowcount
        return changed == 1


def _campaign(row: sqlite3.Row) -> CampaignRow:
    values = dict(row)
    values["spec"] = json.loads(values.pop("spec_json"))
    return CampaignRow(**values)


def _unit(row: sqlite3.Row) -> UnitRow:
    values = dict(row)
    values["shard"] = json.loads(values.pop("shard_json"))
    return UnitRow(**values)


def _submission(row: sqlite3.Row) -> SubmissionRow:
    values = dict(row)
    values["losses"] = json.loads(values.pop("losses_json"))
    values["applied"] = bool(values["applied"])
    return SubmissionRow(**values)


def _volunteer(row: sqlite3.Row) -> VolunteerRow:
    values = dict(row)
    values["capabilities"] = json.loads(values.pop("capabilities_json"))
    values["banned"] = bool(values["banned"])
    return VolunteerRow(**values)
