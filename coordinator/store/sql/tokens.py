"""The REST API's tokens in SQL, kept as hashes.

>>> token_id = store.add_api_token(token_hash, "lead", "alice")
>>> store.api_token_role(token_hash)
(1, 'lead', 'alice')
"""

from __future__ import annotations

from typing import Any

from coordinator.store.sql.database import SQLDatabase

__all__ = ["SQLTokens"]


class SQLTokens(SQLDatabase):
    """`TokenStore` over the api_tokens table."""

    def add_api_token(self, token_hash: str, role: str, label: str) -> int:
        with self.transaction():
            return self._insert(
                "INSERT INTO api_tokens (token_hash, role, label, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                (token_hash, role, label, self.clock()),
            )

    def api_token_role(self, token_hash: str) -> tuple[int, str, str] | None:
        row = self._one("SELECT id, role, label FROM api_tokens WHERE token_hash = ? AND revoked = 0", (token_hash,))
        return (int(row["id"]), str(row["role"]), str(row["label"])) if row else None

    def api_token_known(self, token_hash: str) -> bool:
        return self._one("SELECT 1 FROM api_tokens WHERE token_hash = ?", (token_hash,)) is not None

    def api_tokens(self) -> list[dict[str, Any]]:
        return list(self._all("SELECT id, role, label, created_at, revoked FROM api_tokens ORDER BY id"))

    def revoke_api_token(self, token_id: int) -> bool:
        with self.transaction():
            changed = self._execute("UPDATE api_tokens SET revoked = 1 WHERE id = ?", (token_id,))
        return changed == 1
