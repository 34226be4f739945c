"""The REST API's tokens in SQLite, kept as hashes.

>>> token_id = store.add_api_token(token_hash, "lead", "alice")
>>> store.api_token_role(token_hash)
(1, 'lead', 'alice')
"""

from __future__ import annotations

from typing import Any

from coordinator.store.sqlite.database import SQLiteDatabase

__all__ = ["SQLiteTokens"]


class SQLiteTokens(SQLiteDatabase):
    """`TokenStore` over the api_tokens table."""

    def add_api_token(self, token_hash: str, role: str, label: str) -> int:
        with self.transaction():
            cursor = self.db.execute(
                "INSERT INTO api_tokens (token_hash, role, label, created_at) VALUES (?, ?, ?, ?)",
                (token_hash, role, label, self.clock()),
            )
        return int(cursor.lastrowid or 0)

    def api_token_role(self, token_hash: str) -> tuple[int, str, str] | None:
        row = self._one("SELECT id, role, label FROM api_tokens WHERE token_hash = ? AND revoked = 0", (token_hash,))
        return (int(row["id"]), str(row["role"]), str(row["label"])) if row else None

    def api_token_known(self, token_hash: str) -> bool:
        return self._one("SELECT 1 FROM api_tokens WHERE token_hash = ?", (token_hash,)) is not None

    def api_tokens(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._all("SELECT id, role, label, created_at, revoked FROM api_tokens ORDER BY id")]

    def revoke_api_token(self, token_id: int) -> bool:
        with self.transaction():
            changed = self.db.execute("UPDATE api_tokens SET revoked = 1 WHERE id = ?", (token_id,)).rowcount
        return changed == 1
