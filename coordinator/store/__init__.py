"""The coordinator's durable state: campaigns, versions, rounds, units, leases, submissions,
volunteers, credit and API tokens.

    >>> from coordinator.store import SQLiteStore, Store
    >>> store: Store = SQLiteStore.open(data_dir / "coordinator.sqlite3", clock=clock)
    >>> with store.transaction():
    ...     store.set_campaign_status(campaign_id, "paused")

The engine talks to `Store` (`interface.py`: one protocol per concern and the contract every
implementation honours) and gets frozen rows back (`rows.py`). `SQLiteStore` (`sqlite/`) is the
embedded default; a PostgreSQL store goes beside it without the engine changing.
"""

from __future__ import annotations

from coordinator.store.interface import CampaignStore, Store, SubmissionStore, TokenStore, VolunteerStore, WorkStore
from coordinator.store.rows import CampaignRow, RoundRow, StoreError, SubmissionRow, UnitRow, VersionRow, VolunteerRow
from coordinator.store.sqlite import SCHEMA_VERSION, SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "CampaignRow",
    "CampaignStore",
    "RoundRow",
    "SQLiteStore",
    "Store",
    "StoreError",
    "SubmissionRow",
    "SubmissionStore",
    "TokenStore",
    "UnitRow",
    "VersionRow",
    "VolunteerRow",
    "VolunteerStore",
    "WorkStore",
]
