"""Rounds, units and leases in SQL.

>>> round_id = store.open_round(campaign_id, number=1, version=0, deadline=now + 600, units=units)
>>> store.lease(unit_id, volunteer_id, lease_id, deadline=now + 300)
>>> store.lease_holder(unit_id, lease_id)
'3f2a9c0d51e64b7a'
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from coordinator.store.rows import RoundRow, StoreError, UnitRow
from coordinator.store.sql.database import Row, SQLDatabase

__all__ = ["SQLWork"]


# A unit whose lease ends goes back to the pool: 'pending' in its round while that round is open
# (and a replica always, its twin waits for it), 'cancelled' once the round closed, so that the next
# new unit recycles its slice. Left 'pending' in a closed round it would never be issued again.
_RELEASED = (
    "state = CASE WHEN replica_of IS NULL AND EXISTS (SELECT 1 FROM rounds r WHERE r.id = units.round_id "
    "AND r.status = 'closed') THEN 'cancelled' ELSE 'pending' END, volunteer_id = NULL, lease_id = NULL, "
    "lease_deadline = NULL"
)


class SQLWork(SQLDatabase):
    """`WorkStore` over the rounds, units and leases tables (leases keeps every lease ever granted)."""

    def is_unit_data_of(self, digest: str, volunteer_id: str) -> bool:
        row = self._one("SELECT 1 FROM units WHERE data_sha = ? AND volunteer_id = ? LIMIT 1", (digest, volunteer_id))
        return row is not None

    def open_round(
        self, campaign_id: int, number: int, version: int, deadline: float, units: Sequence[dict[str, Any]]
    ) -> int:
        now = self.clock()
        with self.transaction():
            round_id = self._insert(
                "INSERT INTO rounds (campaign_id, number, version, status, opened_at, deadline) "
                "VALUES (?, ?, ?, 'open', ?, ?) RETURNING id",
                (campaign_id, number, version, now, deadline),
            )
            for unit in units:
                self.insert_unit(campaign_id, round_id, version, unit, now)
        return round_id

    def insert_unit(self, campaign_id: int, round_id: int, version: int, unit: dict[str, Any], now: float) -> None:
        self._execute(
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
            self._execute("UPDATE rounds SET deadline = ? WHERE id = ?", (deadline, round_id))

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
            changed = self._execute(
                "UPDATE units SET state = 'leased', volunteer_id = ?, lease_id = ?, lease_deadline = ?, "
                "attempts = attempts + 1 WHERE id = ? AND state = 'pending'",
                (volunteer_id, lease_id, deadline, unit_id),
            )
            if changed != 1:
                raise StoreError(f"unit {unit_id} is no longer pending")
            self._execute(
                "INSERT INTO leases (lease_id, unit_id, volunteer_id, granted_at) VALUES (?, ?, ?, ?)",
                (lease_id, unit_id, volunteer_id, self.clock()),
            )

    def lease_holder(self, unit_id: str, lease_id: str) -> str | None:
        """The volunteer a lease on this unit was ever granted to, or None for a lease never granted."""
        row = self._one("SELECT volunteer_id FROM leases WHERE unit_id = ? AND lease_id = ?", (unit_id, lease_id))
        return str(row["volunteer_id"]) if row else None

    def ever_leased(self, unit_id: str, volunteer_id: str) -> bool:
        row = self._one("SELECT 1 FROM leases WHERE unit_id = ? AND volunteer_id = ? LIMIT 1", (unit_id, volunteer_id))
        return row is not None

    def extend_lease(self, unit_id: str, lease_id: str, deadline: float) -> bool:
        with self.transaction():
            changed = self._execute(
                "UPDATE units SET lease_deadline = CASE WHEN lease_deadline < ? THEN ? ELSE lease_deadline END "
                "WHERE id = ? AND lease_id = ? AND state = 'leased'",
                (deadline, deadline, unit_id, lease_id),
            )
        return changed == 1

    def expire_leases(self, now: float, campaign_id: int) -> list[UnitRow]:
        """Return the campaign's leased units whose deadline passed to the pool (see `_RELEASED`) so they are
        issued again."""
        with self.transaction():
            rows = self._all(
                "SELECT * FROM units WHERE campaign_id = ? AND state = 'leased' AND lease_deadline < ?",
                (campaign_id, now),
            )
            self._execute(
                f"UPDATE units SET {_RELEASED} WHERE campaign_id = ? AND state = 'leased' AND lease_deadline < ?",
                (campaign_id, now),
            )
        return [_unit(r) for r in rows]

    def release_unit(self, unit_id: str) -> None:
        """Return a leased unit to the pool (its result was rejected; the slice still needs work)."""
        self._execute(f"UPDATE units SET {_RELEASED} WHERE id = ? AND state = 'leased'", (unit_id,))

    def set_unit_state(self, unit_id: str, state: str) -> None:
        self._execute("UPDATE units SET state = ? WHERE id = ?", (state, unit_id))

    def cancel_pending_units(self, round_id: int) -> int:
        # A replica whose original waits for it stays pending: the original counts only once it is back.
        return self._execute(
            "UPDATE units SET state = 'cancelled' WHERE round_id = ? AND state = 'pending' AND NOT ("
            "replica_of IS NOT NULL AND EXISTS (SELECT 1 FROM submissions s "
            "WHERE s.unit_id = units.replica_of AND s.status = 'pending_replica'))",
            (round_id,),
        )

    def recyclable_unit(self, campaign_id: int) -> UnitRow | None:
        row = self._one(
            "SELECT * FROM units u WHERE u.campaign_id = ? AND u.state = 'cancelled' AND u.replica_of IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM submissions s WHERE s.unit_id = u.id AND s.status != 'rejected') "
            "AND NOT EXISTS (SELECT 1 FROM units r WHERE r.replica_of = u.id) "
            "ORDER BY u.created_at, u.id LIMIT 1",
            (campaign_id,),
        )
        return _unit(row) if row else None

    def rehome_unit(self, unit_id: str, round_id: int, version: int) -> None:
        self._execute(
            "UPDATE units SET round_id = ?, version = ?, state = 'pending', volunteer_id = NULL, lease_id = NULL, "
            "lease_deadline = NULL WHERE id = ? AND state IN ('cancelled', 'pending')",
            (round_id, version, unit_id),
        )

    def leases_held(self, campaign_id: int, volunteer_id: str) -> int:
        row = self._one(
            "SELECT COUNT(*) AS n FROM units WHERE campaign_id = ? AND state = 'leased' AND volunteer_id = ?",
            (campaign_id, volunteer_id),
        )
        return int(row["n"]) if row else 0

    def replica_of(self, unit_id: str) -> UnitRow | None:
        row = self._one("SELECT * FROM units WHERE replica_of = ?", (unit_id,))
        return _unit(row) if row else None


def _unit(row: Row) -> UnitRow:
    values = dict(row)
    values["shard"] = json.loads(values.pop("shard_json"))
    return UnitRow(**values)
