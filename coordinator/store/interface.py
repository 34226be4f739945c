"""The store interface the engine, the service, the REST API and the metrics talk to, split by concern.

    >>> store: Store = SQLiteStore.open(data_dir / "coordinator.sqlite3", clock=clock)
    >>> with store.transaction():
    ...     store.set_unit_state(unit_id, "done")
    ...     store.record_outcome(volunteer_id, accepted=True, credit=1.0, tokens=4096, trust=trust)

`CampaignStore` holds campaigns, their published versions and the close of a round (which publishes
one); `WorkStore` rounds, units and leases; `SubmissionStore` volunteers' results; `VolunteerStore`
volunteers and credit; `TokenStore` the REST API's tokens; `AccountStore` volunteers' accounts, the
machines in each, and teams. `Store` is all of them plus transactions.

The contract an implementation honours (SQLite today, PostgreSQL next to it):

- Durability: when `transaction()` exits without an exception — or a method that opens its own
  transaction returns — the writes are committed and survive a crash or power loss. Volunteers are
  acked only after that.
- Atomicity: a transaction that raises leaves nothing behind; the exception propagates.
- Nesting: `transaction()` inside a transaction on the same thread is a savepoint. If it raises,
  only its own writes are undone and the enclosing transaction goes on; otherwise its writes commit
  with the enclosing one. Write methods open their own (nested) transaction, so they join the
  caller's. Methods documented "inside the caller's transaction" open none: call them within
  `transaction()`.
- Threads: every method is callable from any thread, concurrently. `transaction()` serialises
  writers (a second writer waits for the first to finish; it never fails with "database is
  locked"). Readers are never blocked by a writer and see only committed data — never another
  thread's uncommitted writes.
- Time: timestamps the store writes itself (created_at, opened_at, closed_at, last_seen,
  granted_at) come from the clock it was opened with, the coordinator's one clock.
- Schema: opening a store migrates an older database to `schema_version`; one newer than the code
  is refused with a `StoreError`.

Rows are frozen snapshots (`coordinator.store.rows`), detached from the database once returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from coordinator.store.rows import (
    AccountRow,
    CampaignRow,
    LeaseRow,
    ReplicaRow,
    RoundRow,
    Standing,
    StoreActivity,
    SubmissionRow,
    TeamRow,
    UnitRow,
    VersionRow,
    VolunteerRow,
)

__all__ = ["AccountStore", "CampaignStore", "Store", "SubmissionStore", "TokenStore", "VolunteerStore", "WorkStore"]


class CampaignStore(Protocol):
    """Campaigns, their published versions, and the close of a round that publishes the next one."""

    def create_campaign(
        self, name: str, spec: dict[str, Any], dataset_path: str, owner: str, version0: tuple[str, int, str]
    ) -> int:
        """Insert a campaign and its version 0 (checkpoint sha, size, optimizer-state sha).
        A taken name raises `StoreError`."""
        ...

    def campaign(self, campaign_id: int) -> CampaignRow | None: ...

    def campaign_by_name(self, name: str) -> CampaignRow | None: ...

    def campaigns(self, statuses: Sequence[str] | None = None) -> list[CampaignRow]:
        """All campaigns, or those in `statuses`, oldest first."""
        ...

    def set_campaign_status(self, campaign_id: int, status: str) -> None: ...

    def advance_data_cursor(self, campaign_id: int, cursor: int, epoch: int) -> None:
        """Where the next round's data starts (inside the caller's transaction)."""
        ...

    def version(self, campaign_id: int, version: int) -> VersionRow | None: ...

    def versions(self, campaign_id: int) -> list[VersionRow]:
        """A campaign's versions, oldest first."""
        ...

    def set_holdout_loss(self, campaign_id: int, version: int, loss: float) -> None: ...

    def latest_holdout_loss(self, campaign_id: int) -> float | None:
        """The holdout loss of a campaign's newest evaluated version."""
        ...

    def versions_between(self, campaign_id: int, first: int, last: int) -> list[VersionRow]:
        """The campaign's versions numbered `first` to `last` (both included), in order."""
        ...

    def is_checkpoint(self, digest: str) -> bool:
        """Whether a blob is one of the versions' published checkpoints."""
        ...

    def is_delta(self, digest: str) -> bool:
        """Whether a blob is the delta of a published version from the one before it."""
        ...

    def is_moments(self, digest: str) -> bool:
        """Whether a blob is the shared second moment a published version's units start from."""
        ...

    def graph(self, key: str) -> tuple[str, int] | None:
        """The blob (sha256, size) of the ONNX graph built for `key` (coordinator.graphs), if any."""
        ...

    def add_graph(self, key: str, sha256: str, size: int) -> None:
        """Record the blob of the graph built for `key`; a later one for the same key replaces it."""
        ...

    def is_graph(self, digest: str) -> bool:
        """Whether a blob is a built ONNX graph (any volunteer may download those)."""
        ...

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
        delta: tuple[str, int] | None = None,
        moments: tuple[str, int] | None = None,
        lease: tuple[str, int] | None = None,
    ) -> None:
        """Publish version `version` (with `delta`, the blob from the previous checkpoint to its own, and
        `moments`, the shared second moment its units start from) and
        close the round: all or nothing. The round's accepted submissions become applied and its pending
        units cancelled; a round not open raises `StoreError` (of two closing it at once, one wins). With
        `lease` (holder, epoch), only while that lease on the campaign is live: otherwise `StoreError`."""
        ...

    def claim_campaign(self, campaign_id: int, holder: str, ttl_s: float) -> int | None:
        """Become, or stay, the one process that aggregates the campaign, for `ttl_s` from now: the term's
        epoch (the same while renewed in time, one more after a lapse or a takeover), or None while another
        holder's lease is live. Processes sharing a store must share a clock within a fraction of `ttl_s`."""
        ...

    def release_campaign(self, campaign_id: int, holder: str) -> None:
        """End this holder's lease now, so that another process may claim the campaign at once."""
        ...

    def hold_campaign(self, campaign_id: int, holder: str, epoch: int) -> None:
        """Check that `holder` still holds the campaign's lease in term `epoch` and keep a takeover waiting
        until the enclosing transaction ends: work done in that transaction is the leader's. `LeaseLost`
        otherwise."""
        ...

    def campaign_lease(self, campaign_id: int) -> LeaseRow | None: ...

    def campaign_leases(self) -> list[LeaseRow]: ...

    def register_replica(self, name: str, url: str, token_hash: str) -> None:
        """Say that replica `name` is reached at `url` and proves itself with the token hashed as `token_hash`."""
        ...

    def touch_replica(self, name: str) -> None:
        """Note that replica `name` is alive now."""
        ...

    def replica(self, name: str) -> ReplicaRow | None: ...

    def replicas(self) -> list[ReplicaRow]: ...


class WorkStore(Protocol):
    """Rounds, the units they are cut into, and the leases volunteers hold on units."""

    def open_round(
        self, campaign_id: int, number: int, version: int, deadline: float, units: Sequence[dict[str, Any]]
    ) -> int:
        """Open a round with its units (each a dict of id, data_start, data_tokens, data_sha,
        shard_index, shard, seed and optionally replica_of); returns the round's id."""
        ...

    def insert_unit(self, campaign_id: int, round_id: int, version: int, unit: dict[str, Any], now: float) -> None:
        """Add one pending unit to a round (inside the caller's transaction)."""
        ...

    def open_round_of(self, campaign_id: int) -> RoundRow | None: ...

    def round(self, round_id: int) -> RoundRow | None: ...

    def rounds(self, campaign_id: int) -> list[RoundRow]:
        """A campaign's rounds by number."""
        ...

    def extend_round_deadline(self, round_id: int, deadline: float) -> None: ...

    def unit(self, unit_id: str) -> UnitRow | None: ...

    def units(
        self, campaign_id: int, states: Sequence[str] = ("pending",), round_id: int | None = None
    ) -> list[UnitRow]:
        """A campaign's units in `states`: replicas first (they hold a result back), then the oldest."""
        ...

    def is_unit_data_of(self, digest: str, volunteer_id: str) -> bool:
        """Whether a blob is the data of a unit leased to this volunteer (held now, or done by it)."""
        ...

    def recyclable_unit(self, campaign_id: int) -> UnitRow | None:
        """A primary unit cancelled untrained (its round closed first, or every result was rejected):
        its data slice is handed out again before the cursor moves on."""
        ...

    def rehome_unit(self, unit_id: str, round_id: int, version: int) -> None:
        """Move a cancelled or pending unit into another round and version, pending."""
        ...

    def leases_held(self, campaign_id: int, volunteer_id: str) -> int:
        """How many of the campaign's units the volunteer holds a lease on now."""
        ...

    def replica_of(self, unit_id: str) -> UnitRow | None:
        """The unit made to check this one, if any."""
        ...

    def set_unit_state(self, unit_id: str, state: str) -> None:
        """Inside the caller's transaction."""
        ...

    def release_unit(self, unit_id: str) -> None:
        """Return a leased unit to the pool (its result was rejected; the slice still needs work).
        Inside the caller's transaction."""
        ...

    def lease(self, unit_id: str, volunteer_id: str, lease_id: str, deadline: float) -> None:
        """Lease a pending unit and record the lease for good; a unit no longer pending raises
        `StoreError`."""
        ...

    def lease_holder(self, unit_id: str, lease_id: str) -> str | None:
        """The volunteer a lease on this unit was ever granted to, or None for a lease never granted."""
        ...

    def ever_leased(self, unit_id: str, volunteer_id: str) -> bool:
        """Whether this volunteer was ever granted a lease on this unit."""
        ...

    def extend_lease(self, unit_id: str, lease_id: str, deadline: float) -> bool:
        """Push a live lease's deadline out (never in); False if the lease is no longer live."""
        ...

    def expire_leases(self, now: float, campaign_id: int) -> list[UnitRow]:
        """Return the campaign's leased units whose deadline passed to 'pending' so they are issued again
        (only its own: another campaign's leader, maybe another replica, expires its units)."""
        ...


class SubmissionStore(Protocol):
    """Volunteers' results: one submission per unit and volunteer, with its verdict and credit."""

    def add_submission(self, values: dict[str, Any]) -> int:
        """Record a result (unit_id, volunteer_id, update_sha, update_size, status, code, message,
        round_id, staleness, weight, norm, tokens, seconds, losses, credit); returns its id.
        Inside the caller's transaction."""
        ...

    def update_submission(self, submission_id: int, **values: Any) -> None:
        """Change a submission's status, code, message, round_id, weight, credit or staleness (any
        other field raises `StoreError`). Inside the caller's transaction."""
        ...

    def submission(self, unit_id: str, volunteer_id: str) -> SubmissionRow | None: ...

    def submission_for_unit(self, unit_id: str) -> SubmissionRow | None:
        """A unit's first submission."""
        ...

    def rejected_updates(self, campaign_id: int, since: float, before: float) -> list[str]:
        """Digests of update blobs of the campaign that only rejected submissions recorded within
        [since, before) point at, and that are no graph, checkpoint, optimizer state or data slice
        (blobs the janitor may delete)."""
        ...

    def submissions_for_unit(self, unit_id: str) -> list[SubmissionRow]:
        """Every submission for the unit (each volunteer's), oldest first."""
        ...

    def submissions(
        self,
        *,
        round_id: int | None = None,
        statuses: Sequence[str] = ("accepted",),
        applied: bool | None = None,
        campaign_id: int | None = None,
        limit: int = 10_000,
    ) -> list[SubmissionRow]:
        """Submissions in `statuses`, oldest first, at most `limit`."""
        ...

    def rejection_counts(self, campaign_id: int) -> dict[str, int]:
        """A campaign's rejected submissions by error code."""
        ...

    def release_counts(self, campaign_id: int, volunteer_id: str | None = None) -> dict[str, int]:
        """Updates each volunteer submitted to the campaign, whatever became of them (each one a release of
        its data, for a campaign on volunteers' own data); only `volunteer_id`'s when given."""
        ...

    def submission_counts(self, campaign_id: int) -> dict[str, int]:
        """A campaign's submissions by status (accepted, rejected, pending_replica, pending_check)."""
        ...

    def tokens_accepted_since(self, campaign_id: int, since: float) -> int:
        """Tokens of a campaign's accepted submissions received at or after `since` (for tokens/s)."""
        ...

    def credit_since(self, campaign_id: int, since: float) -> dict[str, float]:
        """Credit per volunteer from a campaign's accepted submissions at or after `since`."""
        ...


class VolunteerStore(Protocol):
    """Volunteers: their credentials' hashes, what their machines can do, trust and credit."""

    def add_volunteer(
        self, volunteer_id: str, token_hash: str, name: str, capabilities: dict[str, Any], *, source: str = ""
    ) -> None:
        """Register a volunteer; `source` (its network prefix, "" if unknown) becomes both `source` and
        `last_source`."""
        ...

    def volunteer(self, volunteer_id: str) -> VolunteerRow | None: ...

    def volunteer_by_token(self, token_hash: str) -> VolunteerRow | None: ...

    def volunteers(self, limit: int = 1000) -> list[VolunteerRow]:
        """Volunteers by credit, highest first."""
        ...

    def volunteer_totals(self) -> tuple[int, float]:
        """(volunteers registered, credit they hold together), without reading their rows out."""
        ...

    def touch_volunteer(
        self, volunteer_id: str, name: str, capabilities: dict[str, Any], *, source: str | None = None
    ) -> None:
        """A volunteer said hello: its name, capabilities, last_seen (now) and, unless None, `last_source`."""
        ...

    def set_banned(self, volunteer_id: str, banned: bool) -> bool:
        """Ban or unban a volunteer; False if there is no such volunteer. A ban also covers its `source`
        and `last_source` prefixes (see `source_banned`) until this volunteer is unbanned."""
        ...

    def source_banned(self, prefix: str) -> bool:
        """Whether a banned volunteer came from this network prefix (at registration or its last hello)."""
        ...

    def record_outcome(
        self, volunteer_id: str, *, accepted: bool, credit: float, tokens: int, trust: dict[str, int]
    ) -> None:
        """Credit, counts and the new trust state for one judged result (inside the caller's transaction);
        the credit also goes to the account and the team the volunteer is in now, with their recent
        average credit."""
        ...

    def leaderboard(self, campaign_id: int, limit: int = 50) -> list[dict[str, Any]]:
        """A campaign's volunteers by credit earned in it: id, name, tokens, credit, units."""
        ...

    def touch_seen(self, volunteer_id: str) -> None:
        """The volunteer was heard from now (last_seen), between hellos."""
        ...


class AccountStore(Protocol):
    """Volunteer accounts: the machines (volunteers) that joined each, teams, credit standings."""

    def add_account(self, name: str, key_hash: str) -> int:
        """A new account, signed in with the key whose hash is `key_hash`; its id."""
        ...

    def account(self, account_id: int) -> AccountRow | None: ...

    def account_by_key(self, key_hash: str) -> AccountRow | None: ...

    def rename_account(self, account_id: int, name: str) -> None: ...

    def replace_account_key(self, account_id: int, key_hash: str) -> None:
        """A new key signs in as the account; the old one no longer does."""
        ...

    def top_accounts(self, limit: int = 100) -> list[tuple[AccountRow, Standing]]:
        """Accounts that earned credit, by credit, with their standing."""
        ...

    def machines(self, account_id: int) -> list[VolunteerRow]:
        """The volunteers (machines) in an account, oldest first."""
        ...

    def leased_units(self, account_id: int) -> dict[str, tuple[str, int, str]]:
        """Per machine of the account, a unit it holds a lease on now: (unit id, campaign id, campaign name)."""
        ...

    def add_link_code(self, account_id: int, code_hash: str, expires_at: float) -> None:
        """The account's one live link code (any older one, and every expired code, is dropped)."""
        ...

    def redeem_link_code(self, code_hash: str, volunteer_id: str) -> AccountRow | None:
        """Spend a live code: the volunteer joins (or moves to) its account, unpaused. None if the code is
        unknown, spent or expired."""
        ...

    def set_machine_paused(self, account_id: int, volunteer_id: str, paused: bool) -> bool:
        """False unless the volunteer is in the account."""
        ...

    def unlink_machine(self, account_id: int, volunteer_id: str) -> bool:
        """The volunteer leaves the account (unpaused); False unless it was in it."""
        ...

    def add_team(self, name: str, description: str, founder: int) -> int:
        """A new team that the `founder` account joins; StoreError if the name is taken (in any case)."""
        ...

    def set_team(self, account_id: int, team_id: int | None) -> bool:
        """Join a team (None: leave it); False if there is no such team. A team left with no member and no
        credit is dropped."""
        ...

    def team(self, team_id: int) -> TeamRow | None: ...

    def teams(self, limit: int = 1000) -> list[TeamRow]:
        """Teams by credit (earned by their members' machines while in them), highest first."""
        ...

    def team_members(self, team_id: int) -> list[tuple[AccountRow, Standing]]:
        """A team's accounts with their standing, by credit."""
        ...

    def account_standing(self, account_id: int) -> Standing:
        """What the account's machines earned while in it, its recent average credit as of now, its machines."""
        ...


class TokenStore(Protocol):
    """The REST API's tokens (admin, lead), kept only as hashes."""

    def add_api_token(self, token_hash: str, role: str, label: str) -> int: ...

    def api_token_role(self, token_hash: str) -> tuple[int, str, str] | None:
        """(id, role, label) of a token not revoked, or None."""
        ...

    def api_token_known(self, token_hash: str) -> bool:
        """Whether a token with this hash was ever added, revoked or not (hashes are unique)."""
        ...

    def api_tokens(self) -> list[dict[str, Any]]:
        """Every token: id, role, label, created_at, revoked."""
        ...

    def revoke_api_token(self, token_id: int) -> bool:
        """False if there is no such token."""
        ...


class Store(CampaignStore, WorkStore, SubmissionStore, VolunteerStore, TokenStore, AccountStore, Protocol):
    """Everything the coordinator keeps, behind one transaction. The module docstring is the contract."""

    @property
    def schema_version(self) -> int:
        """The version of the schema the database is at."""
        ...

    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction; nested use is a savepoint."""
        ...

    def serve_exclusively(self) -> None:
        """Claim the database for the coordinator serving it, until `close`; `StoreError` if another
        coordinator process already does."""
        ...

    def activity(self) -> StoreActivity:
        """Statements, their seconds and commits since the store opened, and which database it is."""
        ...

    def close(self) -> None: ...
