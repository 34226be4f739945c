"""Campaigns and their versions in SQL, and the close of a round that publishes a version.

>>> campaign_id = store.create_campaign("tiny-stories", spec, dataset_path, "lead", (sha, size, state_sha))
>>> store.close_round(round_id, reason="quorum", version=1, checkpoint=(sha, size), state_sha=state_sha,
...                   updates=8, tokens=32768)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from coordinator.store.rows import CampaignRow, LeaseLost, LeaseRow, ReplicaRow, StoreError, VersionRow
from coordinator.store.sql.database import Row
from coordinator.store.sql.work import SQLWork

__all__ = ["SQLCampaigns"]


class SQLCampaigns(SQLWork):
    """`CampaignStore` over the campaigns and versions tables.

    `close_round` publishes a version and, in the same transaction, closes the round, marks its
    submissions applied and cancels its pending units, so this mixin builds on `SQLWork`.
    """

    def create_campaign(
        self, name: str, spec: dict[str, Any], dataset_path: str, owner: str, version0: tuple[str, int, str]
    ) -> int:
        """Insert a campaign and its version 0 (checkpoint sha, size, optimizer-state sha)."""
        now = self.clock()
        with self.transaction():
            if self._one("SELECT 1 FROM campaigns WHERE name = ?", (name,)):
                raise StoreError(f"a campaign named {name!r} already exists; choose another name")
            campaign_id = self._insert(
                "INSERT INTO campaigns (name, spec_json, dataset_path, status, owner, created_at) "
                "VALUES (?, ?, ?, 'active', ?, ?) RETURNING id",
                (name, json.dumps(spec), dataset_path, owner, now),
            )
            sha, size, state_sha = version0
            self._execute(
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
            self._execute("UPDATE campaigns SET status = ? WHERE id = ?", (status, campaign_id))

    def advance_data_cursor(self, campaign_id: int, cursor: int, epoch: int) -> None:
        self._execute("UPDATE campaigns SET data_cursor = ?, epoch = ? WHERE id = ?", (cursor, epoch, campaign_id))

    def version(self, campaign_id: int, version: int) -> VersionRow | None:
        row = self._one("SELECT * FROM versions WHERE campaign_id = ? AND version = ?", (campaign_id, version))
        return VersionRow(**dict(row)) if row else None

    def versions(self, campaign_id: int) -> list[VersionRow]:
        rows = self._all("SELECT * FROM versions WHERE campaign_id = ? ORDER BY version", (campaign_id,))
        return [VersionRow(**dict(r)) for r in rows]

    def set_holdout_loss(self, campaign_id: int, version: int, loss: float) -> None:
        with self.transaction():
            self._execute(
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

    def versions_between(self, campaign_id: int, first: int, last: int) -> list[VersionRow]:
        rows = self._all(
            "SELECT * FROM versions WHERE campaign_id = ? AND version BETWEEN ? AND ? ORDER BY version",
            (campaign_id, first, last),
        )
        return [VersionRow(**dict(r)) for r in rows]

    def is_checkpoint(self, digest: str) -> bool:
        return self._one("SELECT 1 FROM versions WHERE checkpoint_sha = ? LIMIT 1", (digest,)) is not None

    def is_delta(self, digest: str) -> bool:
        return self._one("SELECT 1 FROM versions WHERE delta_sha = ? LIMIT 1", (digest,)) is not None

    def is_moments(self, digest: str) -> bool:
        return self._one("SELECT 1 FROM versions WHERE moments_sha = ? LIMIT 1", (digest,)) is not None

    def graph(self, key: str) -> tuple[str, int] | None:
        row = self._one("SELECT sha256, size FROM graphs WHERE key = ?", (key,))
        return (str(row["sha256"]), int(row["size"])) if row is not None else None

    def add_graph(self, key: str, sha256: str, size: int) -> None:
        with self.transaction():
            self._execute(
                "INSERT INTO graphs (key, sha256, size, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (key) "
                "DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, created_at = excluded.created_at",
                (key, sha256, size, self.clock()),
            )

    def is_graph(self, digest: str) -> bool:
        return self._one("SELECT 1 FROM graphs WHERE sha256 = ? LIMIT 1", (digest,)) is not None

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
        """Publish version `version` and close the round: all or nothing."""
        now = self.clock()
        with self.transaction():
            row = self.round(round_id)
            if row is None or row.status != "open":
                raise StoreError(f"round {round_id} is not open")
            if lease is not None:  # its row lock is held to this commit: a takeover waits for this close
                self.hold_campaign(row.campaign_id, *lease)
            # Conditional, so that of two transactions closing the round at once only one does.
            closed = self._execute(
                "UPDATE rounds SET status = 'closed', closed_at = ?, close_reason = ? WHERE id = ? AND status = 'open'",
                (now, reason, round_id),
            )
            if closed != 1:
                raise StoreError(f"round {round_id} is not open")
            self._execute(
                "INSERT INTO versions (campaign_id, version, checkpoint_sha, checkpoint_size, state_sha, round_id, "
                "updates, tokens_total, created_at, delta_sha, delta_size, moments_sha, moments_size) VALUES "
                "(?, ?, ?, ?, ?, ?, ?, (SELECT tokens_trained FROM campaigns WHERE id = ?) + ?, ?, ?, ?, ?, ?)",
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
                    delta[0] if delta else None,
                    delta[1] if delta else None,
                    moments[0] if moments else None,
                    moments[1] if moments else None,
                ),
            )
            self._execute("UPDATE submissions SET applied = 1 WHERE round_id = ? AND status = 'accepted'", (round_id,))
            self._execute(
                "UPDATE campaigns SET current_version = ?, tokens_trained = tokens_trained + ?, "
                "rounds_closed = rounds_closed + 1 WHERE id = ?",
                (version, tokens, row.campaign_id),
            )
            self.cancel_pending_units(round_id)

    def claim_campaign(self, campaign_id: int, holder: str, ttl_s: float) -> int | None:
        now = self.clock()
        # One statement, so that claims racing from several processes serialize on the row.
        with self.transaction():
            row = self._one(
                "INSERT INTO campaign_leases (campaign_id, holder, epoch, expires_at) VALUES (?, ?, 1, ?) "
                "ON CONFLICT (campaign_id) DO UPDATE SET "
                "epoch = CASE WHEN campaign_leases.holder = excluded.holder AND campaign_leases.expires_at >= ? "
                "THEN campaign_leases.epoch ELSE campaign_leases.epoch + 1 END, "
                "holder = excluded.holder, expires_at = excluded.expires_at "
                "WHERE campaign_leases.holder = excluded.holder OR campaign_leases.expires_at < ? "
                "RETURNING epoch",
                (campaign_id, holder, now + ttl_s, now, now),
            )
        return int(row["epoch"]) if row else None

    def release_campaign(self, campaign_id: int, holder: str) -> None:
        with self.transaction():
            self._execute(
                "UPDATE campaign_leases SET expires_at = ? WHERE campaign_id = ? AND holder = ?",
                (self.clock() - 1.0, campaign_id, holder),
            )

    def hold_campaign(self, campaign_id: int, holder: str, epoch: int) -> None:
        with self.transaction():
            # Touching the row locks it until the enclosing transaction commits: a takeover's claim waits.
            held = self._execute(
                "UPDATE campaign_leases SET expires_at = expires_at "
                "WHERE campaign_id = ? AND holder = ? AND epoch = ? AND expires_at >= ?",
                (campaign_id, holder, epoch, self.clock()),
            )
        if held != 1:
            raise LeaseLost(f"{holder} no longer holds campaign {campaign_id}'s lease (term {epoch})")

    def campaign_lease(self, campaign_id: int) -> LeaseRow | None:
        row = self._one("SELECT * FROM campaign_leases WHERE campaign_id = ?", (campaign_id,))
        return LeaseRow(**row) if row else None

    def campaign_leases(self) -> list[LeaseRow]:
        return [LeaseRow(**row) for row in self._all("SELECT * FROM campaign_leases ORDER BY campaign_id", ())]

    def register_replica(self, name: str, url: str, token_hash: str) -> None:
        with self.transaction():
            self._execute(
                "INSERT INTO replicas (name, url, token_hash, seen_at) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO "
                "UPDATE SET url = excluded.url, token_hash = excluded.token_hash, seen_at = excluded.seen_at",
                (name, url, token_hash, self.clock()),
            )

    def touch_replica(self, name: str) -> None:
        with self.transaction():
            self._execute("UPDATE replicas SET seen_at = ? WHERE name = ?", (self.clock(), name))

    def replica(self, name: str) -> ReplicaRow | None:
        row = self._one("SELECT * FROM replicas WHERE name = ?", (name,))
        return ReplicaRow(**row) if row else None

    def replicas(self) -> list[ReplicaRow]:
        return [ReplicaRow(**row) for row in self._all("SELECT * FROM replicas ORDER BY name", ())]


def _campaign(row: Row) -> CampaignRow:
    values = dict(row)
    values["spec"] = json.loads(values.pop("spec_json"))
    return CampaignRow(**values)
