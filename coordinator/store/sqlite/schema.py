"""The SQLite schema, as the migrations that build it.

`MIGRATIONS[n]` upgrades a database from version n to n+1 (`PRAGMA user_version` records where a
database is); `SCHEMA_VERSION` is where this code wants it. Add a step at the end and never edit one
that has shipped: databases out there already ran it.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

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
    # 2 -> 3: where volunteers come from (the network prefix of their address: at registration, and
    # at their latest hello), and the prefixes a ban covers, one row per banned volunteer, so lifting
    # one volunteer's ban leaves another's on the same prefix standing
    """
    ALTER TABLE volunteers ADD COLUMN source TEXT NOT NULL DEFAULT '';
    ALTER TABLE volunteers ADD COLUMN last_source TEXT NOT NULL DEFAULT '';
    CREATE TABLE source_bans (
        prefix TEXT NOT NULL,
        volunteer_id TEXT NOT NULL REFERENCES volunteers(id),
        banned_at REAL NOT NULL,
        PRIMARY KEY (prefix, volunteer_id)
    );
    """,
    # 3 -> 4: ONNX graphs built for a model config and shard (coordinator.graphs), by a key naming what
    # they were built from, so a restart serves them again instead of exporting for minutes
    """
    CREATE TABLE graphs (
        key TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX graphs_by_sha ON graphs (sha256);
    """,
    # 4 -> 5: a submission may wait for its holdout check by forward-only volunteers ('pending_check');
    # SQLite changes a CHECK constraint only by copying the table
    """
    CREATE TABLE submissions_v5 (
        id INTEGER PRIMARY KEY,
        unit_id TEXT NOT NULL REFERENCES units(id),
        volunteer_id TEXT NOT NULL,
        update_sha TEXT NOT NULL,
        update_size INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('accepted', 'rejected', 'pending_replica', 'pending_check')),
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
    INSERT INTO submissions_v5 SELECT * FROM submissions;
    DROP TABLE submissions;
    ALTER TABLE submissions_v5 RENAME TO submissions;
    CREATE INDEX submissions_by_round ON submissions (round_id, status, applied);
    """,
    # 5 -> 6: a version may have a delta from the previous one (protocol.md, checkpoint deltas)
    """
    ALTER TABLE versions ADD COLUMN delta_sha TEXT;
    ALTER TABLE versions ADD COLUMN delta_size INTEGER;
    """,
    # 6 -> 7: shared AdamW second moments (protocol.md, shared moments): what each update sent with it, and
    # the median each version publishes
    """
    ALTER TABLE versions ADD COLUMN moments_sha TEXT;
    ALTER TABLE versions ADD COLUMN moments_size INTEGER;
    ALTER TABLE submissions ADD COLUMN moments_sha TEXT;
    CREATE INDEX submissions_by_moments ON submissions (moments_sha);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
