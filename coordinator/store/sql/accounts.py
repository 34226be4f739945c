"""Volunteer accounts, the machines that join them, teams and credit standings in SQL.

>>> account_id = store.add_account("alice", key_hash)
>>> store.add_link_code(account_id, code_hash, expires_at=now + 900)
>>> store.redeem_link_code(code_hash, volunteer_id).name      # the machine joins alice's account
'alice'
>>> store.set_machine_paused(account_id, volunteer_id, True)
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from coordinator.store.credit import decayed
from coordinator.store.rows import AccountRow, Standing, StoreError, TeamRow, VolunteerRow
from coordinator.store.sql.database import SQLDatabase
from coordinator.store.sql.volunteers import volunteer_row

__all__ = ["SQLAccounts"]


class SQLAccounts(SQLDatabase):
    """`AccountStore` over the accounts, link_codes and teams tables (and volunteers.account_id)."""

    def add_account(self, name: str, key_hash: str) -> int:
        with self.transaction():
            return self._insert(
                "INSERT INTO accounts (name, key_hash, created_at) VALUES (?, ?, ?) RETURNING id",
                (name, key_hash, self.clock()),
            )

    def account(self, account_id: int) -> AccountRow | None:
        row = self._one("SELECT * FROM accounts WHERE id = ?", (account_id,))
        return AccountRow(**dict(row)) if row else None

    def account_by_key(self, key_hash: str) -> AccountRow | None:
        row = self._one("SELECT * FROM accounts WHERE key_hash = ?", (key_hash,))
        return AccountRow(**dict(row)) if row else None

    def machines(self, account_id: int) -> list[VolunteerRow]:
        rows = self._all("SELECT * FROM volunteers WHERE account_id = ? ORDER BY created_at, id", (account_id,))
        return [volunteer_row(r) for r in rows]

    def leased_units(self, volunteer_ids: Iterable[str]) -> dict[str, tuple[str, int, str]]:
        ids = list(volunteer_ids)
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = self._all(
            "SELECT u.volunteer_id, u.id, u.campaign_id, c.name FROM units u JOIN campaigns c ON c.id = u.campaign_id "
            f"WHERE u.state = 'leased' AND u.volunteer_id IN ({marks}) ORDER BY u.created_at",
            ids,
        )
        return {str(r["volunteer_id"]): (str(r["id"]), int(r["campaign_id"]), str(r["name"])) for r in rows}

    def add_link_code(self, account_id: int, code_hash: str, expires_at: float) -> None:
        with self.transaction():
            self._execute("DELETE FROM link_codes WHERE account_id = ? OR expires_at <= ?", (account_id, self.clock()))
            self._execute(
                "INSERT INTO link_codes (code_hash, account_id, expires_at) VALUES (?, ?, ?)",
                (code_hash, account_id, expires_at),
            )

    def redeem_link_code(self, code_hash: str, volunteer_id: str) -> AccountRow | None:
        with self.transaction():
            row = self._one(
                "SELECT account_id FROM link_codes WHERE code_hash = ? AND expires_at > ?", (code_hash, self.clock())
            )
            if row is None:
                return None
            self._execute("DELETE FROM link_codes WHERE code_hash = ?", (code_hash,))
            self._execute(
                "UPDATE volunteers SET account_id = ?, paused = 0 WHERE id = ?", (row["account_id"], volunteer_id)
            )
        return self.account(int(row["account_id"]))

    def set_machine_paused(self, account_id: int, volunteer_id: str, paused: bool) -> bool:
        with self.transaction():
            changed = self._execute(
                "UPDATE volunteers SET paused = ? WHERE id = ? AND account_id = ?",
                (int(paused), volunteer_id, account_id),
            )
        return changed == 1

    def unlink_machine(self, account_id: int, volunteer_id: str) -> bool:
        with self.transaction():
            changed = self._execute(
                "UPDATE volunteers SET account_id = NULL, paused = 0 WHERE id = ? AND account_id = ?",
                (volunteer_id, account_id),
            )
        return changed == 1

    def add_team(self, name: str, description: str, founder: int) -> int:
        with self.transaction():
            if self._one("SELECT 1 FROM teams WHERE name = ?", (name,)):
                raise StoreError(f"a team named {name!r} already exists; join it or choose another name")
            team_id = self._insert(
                "INSERT INTO teams (name, description, created_at) VALUES (?, ?, ?) RETURNING id",
                (name, description, self.clock()),
            )
            self._execute("UPDATE accounts SET team_id = ? WHERE id = ?", (team_id, founder))
        return team_id

    def set_team(self, account_id: int, team_id: int | None) -> bool:
        with self.transaction():
            if team_id is not None and self._one("SELECT 1 FROM teams WHERE id = ?", (team_id,)) is None:
                return False
            self._execute("UPDATE accounts SET team_id = ? WHERE id = ?", (team_id, account_id))
        return True

    def team(self, team_id: int) -> TeamRow | None:
        return next(iter(self._teams("WHERE t.id = ?", (team_id,))), None)

    def teams(self, limit: int = 1000) -> list[TeamRow]:
        ranked = sorted(self._teams("", ()), key=lambda t: (-t.standing.credit, t.id))
        return ranked[:limit]

    def team_members(self, team_id: int) -> list[tuple[AccountRow, Standing]]:
        accounts = [AccountRow(**dict(r)) for r in self._all("SELECT * FROM accounts WHERE team_id = ?", (team_id,))]
        standings = self._standings("WHERE a.team_id = ?", (team_id,), by="v.account_id")
        members = [(a, standings.get(a.id, Standing(0.0, 0.0, 0))) for a in accounts]
        return sorted(members, key=lambda m: (-m[1].credit, m[0].id))

    def account_standing(self, account_id: int) -> Standing:
        return self._standings("WHERE v.account_id = ?", (account_id,), by="v.account_id").get(
            account_id, Standing(0.0, 0.0, 0)
        )

    def _teams(self, where: str, args: tuple[Any, ...]) -> list[TeamRow]:
        rows = self._all(
            "SELECT t.id, t.name, t.description, t.created_at, COUNT(a.id) AS members FROM teams t "
            f"LEFT JOIN accounts a ON a.team_id = t.id {where} GROUP BY t.id, t.name, t.description, t.created_at",
            args,
        )
        team_where = where.replace("t.id", "a.team_id")
        standings = self._standings(team_where or "WHERE a.team_id IS NOT NULL", args, by="a.team_id")
        return [
            TeamRow(
                id=int(r["id"]),
                name=str(r["name"]),
                description=str(r["description"]),
                created_at=float(r["created_at"]),
                members=int(r["members"]),
                standing=standings.get(int(r["id"]), Standing(0.0, 0.0, 0)),
            )
            for r in rows
        ]

    def _standings(self, where: str, args: tuple[Any, ...], *, by: str) -> dict[int, Standing]:
        """Credit, recent credit as of now and machines, summed per `by` over machines in accounts."""
        rows = self._all(
            f"SELECT {by} AS owner, v.credit, v.recent_credit, v.recent_credit_at FROM volunteers v "
            f"JOIN accounts a ON a.id = v.account_id {where}",
            args,
        )
        now = self.clock()
        sums: dict[int, list[float]] = {}
        for row in rows:
            total = sums.setdefault(int(row["owner"]), [0.0, 0.0, 0.0])
            total[0] += float(row["credit"])
            total[1] += decayed(float(row["recent_credit"]), float(row["recent_credit_at"]), now)
            total[2] += 1
        return {owner: Standing(credit, recent, int(n)) for owner, (credit, recent, n) in sums.items()}
