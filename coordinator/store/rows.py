"""The rows the store hands out, and the error it raises: plain frozen dataclasses, the same whichever
database is behind the store.

    >>> row = store.campaign(campaign_id)             # CampaignRow | None
    >>> row.status, row.current_version
    ('active', 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "AccountRow",
    "CampaignRow",
    "LeaseLost",
    "LeaseRow",
    "ReplicaRow",
    "RoundRow",
    "Standing",
    "StoreActivity",
    "StoreError",
    "SubmissionRow",
    "TeamRow",
    "UnitRow",
    "VersionRow",
    "VolunteerRow",
]


@dataclass(frozen=True)
class LeaseRow:
    """Who aggregates a campaign (a coordinator process's name), in which term, until when."""

    campaign_id: int
    holder: str
    epoch: int
    expires_at: float


@dataclass(frozen=True)
class ReplicaRow:
    """A coordinator process sharing the database: its name, the URL the others reach it at, the hash of
    its token, when it last said it was alive (the store's clock)."""

    name: str
    url: str
    token_hash: str
    seen_at: float


@dataclass(frozen=True)
class StoreActivity:
    """What a store has done since it opened: statements run, seconds they took (waiting for the
    database included), transactions committed; and which database it is ("sqlite", "postgresql")."""

    backend: str
    statements: int
    seconds: float
    commits: int


class StoreError(RuntimeError):
    """A write the store refused (a duplicate name, a unit no longer pending, a round already closed)."""

    code = "store_error"


class LeaseLost(StoreError):
    """A campaign's work was refused because the process doing it no longer holds the campaign's lease
    (another replica took it over): its state of the campaign is stale."""

    code = "lease_lost"


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
    # The delta from the previous version's checkpoint to this one's; None for version 0 and older rows.
    delta_sha: str | None = None
    delta_size: int | None = None
    # The shared AdamW second moment units of this version start from (a moments frame); None: none.
    moments_sha: str | None = None
    moments_size: int | None = None


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
    moments_sha: str | None = None  # the moments frame sent with the update, where the campaign shares them


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
    source: str = ""  # network prefix at registration ("203.0.113.0/24"); "" when unknown or older
    last_source: str = ""  # network prefix at the latest hello
    account_id: int | None = None  # the account the machine joined with a link code
    paused: bool = False  # paused from its account: leases no work until resumed
    recent_credit: float = 0.0  # credit per day, decaying (coordinator.store.credit), as of recent_credit_at
    recent_credit_at: float = 0.0


@dataclass(frozen=True)
class AccountRow:
    """A volunteer's account: machines join it with a link code; it may be in a team."""

    id: int
    name: str
    key_hash: str
    team_id: int | None
    created_at: float
    credit: float = 0.0  # earned by its machines while they were in it
    recent_credit: float = 0.0  # as of recent_credit_at (coordinator.store.credit)
    recent_credit_at: float = 0.0


@dataclass(frozen=True)
class Standing:
    """An account's or a team's credit: what its machines earned while in it, the recent average credit
    per day as of now, and how many machines it has now."""

    credit: float
    recent_credit: float
    machines: int


@dataclass(frozen=True)
class TeamRow:
    """A team of accounts: how many it has now, and its standing."""

    id: int
    name: str
    description: str
    created_at: float
    members: int
    standing: Standing
