"""Volunteers' submitted results in SQL.

>>> with store.transaction():
...     submission_id = store.add_submission(values)
>>> store.submission_counts(campaign_id)
{'accepted': 41, 'rejected': 2}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from coordinator.store.rows import StoreError, SubmissionRow
from coordinator.store.sql.database import Row, SQLDatabase

__all__ = ["SQLSubmissions"]


_INSERTED = (
    "unit_id", "volunteer_id", "update_sha", "update_size", "status", "code", "message", "round_id", "staleness",
    "weight", "norm", "tokens", "seconds", "losses_json", "credit", "created_at", "moments_sha",
)  # fmt: skip


class SQLSubmissions(SQLDatabase):
    """`SubmissionStore` over the submissions table (joined with units for a campaign's)."""

    def add_submission(self, values: dict[str, Any]) -> int:
        row = {"moments_sha": None, **values, "losses_json": json.dumps(values["losses"]), "created_at": self.clock()}
        return self._insert(
            f"INSERT INTO submissions ({', '.join(_INSERTED)}) VALUES ({', '.join('?' * len(_INSERTED))}) RETURNING id",
            [row[name] for name in _INSERTED],
        )

    def update_submission(self, submission_id: int, **values: Any) -> None:
        allowed = {"status", "code", "message", "round_id", "weight", "credit", "staleness"}
        if not set(values) <= allowed:
            raise StoreError(f"can't update submission fields {set(values) - allowed}")
        assignments = ", ".join(f"{k} = ?" for k in values)
        self._execute(f"UPDATE submissions SET {assignments} WHERE id = ?", (*values.values(), submission_id))

    def submission(self, unit_id: str, volunteer_id: str) -> SubmissionRow | None:
        row = self._one("SELECT * FROM submissions WHERE unit_id = ? AND volunteer_id = ?", (unit_id, volunteer_id))
        return _submission(row) if row else None

    def submission_for_unit(self, unit_id: str) -> SubmissionRow | None:
        row = self._one("SELECT * FROM submissions WHERE unit_id = ? ORDER BY id LIMIT 1", (unit_id,))
        return _submission(row) if row else None

    def rejected_updates(self, campaign_id: int, since: float, before: float) -> list[str]:
        rows = self._all(
            "SELECT DISTINCT s.update_sha FROM submissions s JOIN units u ON u.id = s.unit_id "
            "WHERE u.campaign_id = ? AND s.status = 'rejected' AND s.created_at >= ? AND s.created_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM submissions o WHERE o.update_sha = s.update_sha AND o.status != 'rejected') "
            # An "update" may be a copy of a blob the coordinator keeps for its own use: a graph, a
            # checkpoint, a delta, an optimizer state, a moments frame or a data slice. Those bytes stay.
            "AND NOT EXISTS (SELECT 1 FROM graphs g WHERE g.sha256 = s.update_sha) "
            "AND NOT EXISTS (SELECT 1 FROM versions v "
            "WHERE s.update_sha IN (v.checkpoint_sha, v.state_sha, v.delta_sha, v.moments_sha)) "
            "AND NOT EXISTS (SELECT 1 FROM submissions m WHERE m.moments_sha = s.update_sha) "
            "AND NOT EXISTS (SELECT 1 FROM units d WHERE d.data_sha = s.update_sha)",
            (campaign_id, since, before),
        )
        return [str(r["update_sha"]) for r in rows]

    def submissions_for_unit(self, unit_id: str) -> list[SubmissionRow]:
        rows = self._all("SELECT * FROM submissions WHERE unit_id = ? ORDER BY id", (unit_id,))
        return [_submission(r) for r in rows]

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

    def release_counts(self, campaign_id: int, volunteer_id: str | None = None) -> dict[str, int]:
        sql = (
            "SELECT s.volunteer_id, COUNT(*) AS n FROM submissions s JOIN units u ON u.id = s.unit_id "
            "WHERE u.campaign_id = ?"
        )
        args: list[Any] = [campaign_id]
        if volunteer_id is not None:
            sql += " AND s.volunteer_id = ?"
            args.append(volunteer_id)
        rows = self._all(sql + " GROUP BY s.volunteer_id", args)
        return {str(r["volunteer_id"]): int(r["n"]) for r in rows}

    def rejection_counts(self, campaign_id: int) -> dict[str, int]:
        rows = self._all(
            "SELECT s.code, COUNT(*) AS n FROM submissions s JOIN units u ON u.id = s.unit_id "
            "WHERE u.campaign_id = ? AND s.status = 'rejected' GROUP BY s.code",
            (campaign_id,),
        )
        return {str(r["code"]): int(r["n"]) for r in rows}

    def submission_counts(self, campaign_id: int) -> dict[str, int]:
        """A campaign's submissions by status (accepted, rejected, pending_replica, pending_check)."""
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


def _submission(row: Row) -> SubmissionRow:
    values = dict(row)
    values["losses"] = json.loads(values.pop("losses_json"))
    values["applied"] = bool(values["applied"])
    return SubmissionRow(**values)
