"""Volunteer accounts, the machines that join them, teams and credit standings in SQL.

>>> account_id = store.add_account("alice", key_hash)
>>> store.add_link_code(account_id, code_hash, expires_at=now + 900)
>>> store.redeem_link_code(code_hash, volunteer_id).name      # the machine joins alice's account
'alice'
>>> store.set_machine_paused(account_id, volunteer_id, True)
True
"""

from __future__ import annotations

from typing import Any

from coordinator.store.credit import decayed
from coordinator.store.rows import AccountRow, Standing, StoreError, TeamRow, VolunteerRow
from coordinator.store.sql.database import Row, SQLDatabase
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

    def rename_account(self, account_id: int, name: str) -> None:
        with self.transaction():
            self._execute("UPDATE accounts SET name = ? WHERE id = ?", (name, account_id))

    def replace_account_key(self, account_id: int, key_hash: str) -> None:
        with self.transaction():
            self._execute("UPDATE accounts SET key_hash = ? WHERE id = ?", (key_hash, account_id))

    def top_accounts(self, limit: int = 100) -> list[tuple[AccountRow, Standing]]:
        rows = self._all(
            "SELECT a.*, (SELECT COUNT(*) FROM volunteers v WHERE v.account_id = a.id) AS machines "
            f"FROM accounts a WHERE a.credit > 0 ORDER BY a.credit DESC, a.id LIMIT {int(limit)}",
        )
        return [self._member(row) for row in rows]

    def machines(self, account_id: int) -> list[VolunteerRow]:
        rows = self._all("SELECT * FROM volunteers WHERE account_id = ? ORDER BY created_at, id", (account_id,))
        return [volunteer_row(r) for r in rows]

    def leased_units(self, account_id: int) -> dict[str, tuple[str, int, str]]:
        rows = self._all(
            "SELECT u.volunteer_id, u.id, u.campaign_id, c.name FROM units u "
            "JOIN volunteers v ON v.id = u.volunteer_id JOIN campaigns c ON c.id = u.campaign_id "
            "WHERE v.account_id = ? AND u.state = 'leased' ORDER BY u.created_at",
            (account_id,),
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
        # A wrong code is answered from a read, without the write path: guessing costs the writers nothing.
        found = self._one(
            "SELECT account_id FROM link_codes WHERE code_hash = ? AND expires_at > ?", (code_hash, self.clock())
        )
        if found is None:
            return None
        with self.transaction():
            if self._execute("DELETE FROM link_codes WHERE code_hash = ?", (code_hash,)) != 1:
                return None  # another machine spent it meanwhile
            self._execute(
                "UPDATE volunteers SET account_id = ?, paused = 0 WHERE id = ?", (found["account_id"], volunteer_id)
            )
        return self.account(int(found["account_id"]))

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
            if self._one("SELECT 1 FROM teams WHERE LOWER(name) = LOWER(?)", (name,)):
                raise StoreError(f"a team named {name!r} already exists; join it or choose another name")
            team_id = self._insert(
                "INSERT INTO teams (name, description, created_at) VALUES (?, ?, ?) RETURNING id",
                (name, description, self.clock()),
            )
            self._move(founder, team_id)
        return team_id

    def set_team(self, account_id: int, team_id: int | None) -> bool:
        with self.transaction():
            if team_id is not None and self._one("SELECT 1 FROM teams WHERE id = ?", (team_id,)) is None:
                return False
            self._move(account_id, team_id)
        return True

    def _move(self, account_id: int, team_id: int | None) -> None:
        """The account joins `team_id`; a team it leaves empty, having earned nothing, is dropped (so that
        making and leaving teams can't fill the list)."""
        before = self._one("SELECT team_id FROM accounts WHERE id = ?", (account_id,))
        self._execute("UPDATE accounts SET team_id = ? WHERE id = ?", (team_id, account_id))
        left = before["team_id"] if before is not None else None
        if left is not None and left != team_id:
            self._execute(
                "DELETE FROM teams WHERE id = ? AND credit = 0 AND NOT EXISTS "
                "(SELECT 1 FROM accounts WHERE team_id = ?)",
                (left, left),
            )

    def team(self, team_id: int) -> TeamRow | None:
        rows = self._teams("WHERE t.id = ?", (team_id,))
        return rows[0] if rows else None

    def teams(self, limit: int = 1000) -> list[TeamRow]:
        return self._teams("", (), order=f"ORDER BY t.credit DESC, t.id LIMIT {int(limit)}")

    def team_members(self, team_id: int) -> list[tuple[AccountRow, Standing]]:
        rows = self._all(
            "SELECT a.*, (SELECT COUNT(*) FROM volunteers v WHERE v.account_id = a.id) AS machines "
            "FROM accounts a WHERE a.team_id = ? ORDER BY a.credit DESC, a.id",
            (team_id,),
        )
        return [self._member(row) for row in rows]

    def _member(self, row: Row) -> tuple[AccountRow, Standing]:
        values = dict(row)
        machines = int(values.pop("machines"))
        account = AccountRow(**values)
        return account, self._standing(account.credit, account.recent_credit, account.recent_credit_at, machines)

    def account_standing(self, account_id: int) -> Standing:
        row = self._one(
            "SELECT a.credit, a.recent_credit, a.recent_credit_at, "
            "(SELECT COUNT(*) FROM volunteers v WHERE v.account_id = a.id) AS machines FROM accounts a WHERE a.id = ?",
            (account_id,),
        )
        if row is None:
            return Standing(0.0, 0.0, 0)
        return self._standing(row["credit"], row["recent_credit"], row["recent_credit_at"], row["machines"])

    def _standing(self, credit: float, recent: float, recent_at: float, machines: int) -> Standing:
        return Standing(float(credit), decayed(float(recent), float(recent_at), self.clock()), int(machines))

    def _teams(self, where: str, args: tuple[Any, ...], *, order: str = "") -> list[TeamRow]:
        rows = self._all(
            "SELECT t.*, (SELECT COUNT(*) FROM accounts a WHERE a.team_id = t.id) AS members, "
            "(SELECT COUNT(*) FROM volunteers v JOIN accounts a ON a.id = v.account_id WHERE a.team_id = t.id) "
            f"AS machines FROM teams t {where} {order}",
            args,
        )
        return [
            TeamRow(
                id=int(r["id"]),
                name=str(r["name"]),
                description=str(r["description"]),
                created_at=float(r["created_at"]),
                members=int(r["members"]),
                standing=self._standing(r["credit"], r["recent_credit"], r["recent_credit_at"], r["machines"]),
            )
            for r in rows
        ]
