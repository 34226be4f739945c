"""Volunteers, their trust and credit in SQL.

>>> store.add_volunteer(volunteer_id, token_hash, "alice's laptop", capabilities)
>>> store.volunteer_by_token(token_hash).name
"alice's laptop"
"""

from __future__ import annotations

import json
from typing import Any

from coordinator.store.credit import add_credit
from coordinator.store.rows import VolunteerRow
from coordinator.store.sql.database import Row, SQLDatabase

__all__ = ["SQLVolunteers", "volunteer_row"]


class SQLVolunteers(SQLDatabase):
    """`VolunteerStore` over the volunteers table."""

    def add_volunteer(
        self, volunteer_id: str, token_hash: str, name: str, capabilities: dict[str, Any], *, source: str = ""
    ) -> None:
        now = self.clock()
        with self.transaction():
            self._execute(
                "INSERT INTO volunteers (id, token_hash, name, created_at, last_seen, capabilities_json, source, "
                "last_source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (volunteer_id, token_hash, name, now, now, json.dumps(capabilities), source, source),
            )

    def volunteer(self, volunteer_id: str) -> VolunteerRow | None:
        row = self._one("SELECT * FROM volunteers WHERE id = ?", (volunteer_id,))
        return volunteer_row(row) if row else None

    def volunteer_by_token(self, token_hash: str) -> VolunteerRow | None:
        row = self._one("SELECT * FROM volunteers WHERE token_hash = ?", (token_hash,))
        return volunteer_row(row) if row else None

    def volunteers(self, limit: int = 1000) -> list[VolunteerRow]:
        rows = self._all("SELECT * FROM volunteers ORDER BY credit DESC, created_at LIMIT ?", (limit,))
        return [volunteer_row(r) for r in rows]

    def volunteer_totals(self) -> tuple[int, float]:
        row = self._one("SELECT COUNT(*) AS n, COALESCE(SUM(credit), 0) AS credit FROM volunteers")
        assert row is not None  # an aggregate always has a row
        return int(row["n"]), float(row["credit"])

    def touch_volunteer(
        self, volunteer_id: str, name: str, capabilities: dict[str, Any], *, source: str | None = None
    ) -> None:
        with self.transaction():
            self._execute(
                "UPDATE volunteers SET last_seen = ?, name = ?, capabilities_json = ?, "
                "last_source = COALESCE(?, last_source) WHERE id = ?",
                (self.clock(), name, json.dumps(capabilities), source, volunteer_id),
            )

    def set_banned(self, volunteer_id: str, banned: bool) -> bool:
        with self.transaction():
            changed = self._execute("UPDATE volunteers SET banned = ? WHERE id = ?", (int(banned), volunteer_id))
            if changed and banned:
                self._execute(
                    "INSERT INTO source_bans (prefix, volunteer_id, banned_at) "
                    "SELECT prefix, id, ? FROM (SELECT source AS prefix, id FROM volunteers WHERE id = ? "
                    "UNION SELECT last_source, id FROM volunteers WHERE id = ?) AS seen WHERE prefix != '' "
                    "ON CONFLICT DO NOTHING",
                    (self.clock(), volunteer_id, volunteer_id),
                )
            elif changed:
                self._execute("DELETE FROM source_bans WHERE volunteer_id = ?", (volunteer_id,))
        return changed == 1

    def source_banned(self, prefix: str) -> bool:
        return self._one("SELECT 1 FROM source_bans WHERE prefix = ? LIMIT 1", (prefix,)) is not None

    def record_outcome(
        self, volunteer_id: str, *, accepted: bool, credit: float, tokens: int, trust: dict[str, int]
    ) -> None:
        """Credit, counts and the new trust state for one judged result (inside the caller's transaction)."""
        self._execute(
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
        if credit > 0:
            self._grant(volunteer_id, credit)

    def _grant(self, volunteer_id: str, credit: float) -> None:
        """Recent average credit of the machine, and credit of the account and team it is in now."""
        row = self._one(
            "SELECT v.recent_credit, v.recent_credit_at, v.account_id, a.team_id FROM volunteers v "
            "LEFT JOIN accounts a ON a.id = v.account_id WHERE v.id = ?",
            (volunteer_id,),
        )
        if row is None:
            return
        now = self.clock()
        self._execute(
            "UPDATE volunteers SET recent_credit = ?, recent_credit_at = ? WHERE id = ?",
            (
                *add_credit(float(row["recent_credit"]), float(row["recent_credit_at"]), credit=credit, now=now),
                volunteer_id,
            ),
        )
        for table, owner in (("accounts", row["account_id"]), ("teams", row["team_id"])):
            if owner is None:
                continue
            held = self._one(f"SELECT recent_credit, recent_credit_at FROM {table} WHERE id = ?", (owner,))
            if held is None:
                continue
            average, at = add_credit(
                float(held["recent_credit"]), float(held["recent_credit_at"]), credit=credit, now=now
            )
            self._execute(
                f"UPDATE {table} SET credit = credit + ?, recent_credit = ?, recent_credit_at = ? WHERE id = ?",
                (credit, average, at, owner),
            )

    def touch_seen(self, volunteer_id: str) -> None:
        with self.transaction():
            self._execute("UPDATE volunteers SET last_seen = ? WHERE id = ?", (self.clock(), volunteer_id))

    def leaderboard(self, campaign_id: int, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT v.id, v.name, CAST(SUM(s.tokens) AS BIGINT) AS tokens, SUM(s.credit) AS credit, COUNT(*) AS units "
            "FROM submissions s JOIN units u ON u.id = s.unit_id JOIN volunteers v ON v.id = s.volunteer_id "
            "WHERE u.campaign_id = ? AND s.status = 'accepted' GROUP BY v.id ORDER BY credit DESC, v.id LIMIT ?",
            (campaign_id, limit),
        )
        return [dict(r) for r in rows]


def volunteer_row(row: Row) -> VolunteerRow:
    """A volunteers row as the store hands it out."""
    values = dict(row)
    values["capabilities"] = json.loads(values.pop("capabilities_json"))
    values["banned"] = bool(values["banned"])
    values["paused"] = bool(values["paused"])
    return VolunteerRow(**values)
