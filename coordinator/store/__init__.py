"""The coordinator's durable state: campaigns, versions, rounds, units, leases, submissions,
volunteers, credit and API tokens.

    >>> from coordinator.store import SQLiteStore, Store
    >>> store: Store = SQLiteStore.open(data_dir / "coordinator.sqlite3", clock=clock)
    >>> with store.transaction():
    ...     store.set_campaign_status(campaign_id, "paused")

The engine talks to `Store` (`interface.py`: one protocol per concern and the contract every
implementation honours) and gets frozen rows back (`rows.py`). The SQL is written once
(`sql/`) and runs on SQLite (`sqlite/`, the embedded default) or PostgreSQL (`postgresql/`). Blobs
live in a folder (`blobs.py`) or an S3-compatible bucket (`s3.py`); `backends.py` opens what the
coordinator's `--database` and `--blobs` URLs name.
"""

from __future__ import annotations

from coordinator.store.backends import open_blobs, open_store, url_problems
from coordinator.store.blobs import BlobNotFound, Blobs, BlobStore, sha256_hex
from coordinator.store.interface import (
    AccountStore,
    CampaignStore,
    Store,
    SubmissionStore,
    TokenStore,
    VolunteerStore,
    WorkStore,
)
from coordinator.store.rows import (
    AccountRow,
    CampaignRow,
    LeaseLost,
    LeaseRow,
    ReplicaRow,
    RoundRow,
    Standing,
    StoreError,
    SubmissionRow,
    TeamRow,
    UnitRow,
    VersionRow,
    VolunteerRow,
)
from coordinator.store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "AccountRow",
    "AccountStore",
    "BlobNotFound",
    "BlobStore",
    "Blobs",
    "CampaignRow",
    "CampaignStore",
    "LeaseLost",
    "LeaseRow",
    "ReplicaRow",
    "RoundRow",
    "SQLiteStore",
    "Standing",
    "Store",
    "StoreError",
    "SubmissionRow",
    "SubmissionStore",
    "TeamRow",
    "TokenStore",
    "UnitRow",
    "VersionRow",
    "VolunteerRow",
    "VolunteerStore",
    "WorkStore",
    "open_blobs",
    "open_store",
    "sha256_hex",
    "url_problems",
]
