"""The data directory's admin token across restarts of a real coordinator process."""

from __future__ import annotations

import stat
from pathlib import Path

from tests.support.live import live_coordinator


def test_a_revoked_admin_token_is_replaced_at_the_next_start_and_stays_revoked(
    tmp_path: Path, small_dataset: Path
) -> None:
    with live_coordinator(tmp_path, small_dataset) as server:
        first = server.admin_token
        (token_id, role, _) = server.api.me().values()
        assert role == "admin"
        ops = str(server.api.create_token("ops", role="admin")["token"])
        assert server.call("DELETE", f"/api/tokens/{token_id}", token=ops) == (200, {"id": token_id, "revoked": True})
        assert server.call("GET", "/api/me", token=first)[0] == 401

    # The same data directory: the coordinator starts, with a new admin token written where the old one was.
    with live_coordinator(tmp_path, small_dataset) as server:
        second = server.admin_token
        token_file = server.data_dir / "admin_token"
        assert second != first and token_file.read_text() == second + "\n"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert server.call("GET", "/api/me", token=second)[1]["role"] == "admin"
        assert server.call("GET", "/api/me", token=first)[0] == 401
        assert server.call("GET", "/api/me", token=ops)[1]["label"] == "ops"
        tokens = {t["id"]: t for t in server.api.tokens()}
        assert tokens[token_id]["revoked"] is True
        assert [t["revoked"] for t in tokens.values() if t["label"] == "admin (data_dir/admin_token)"] == [True, False]
        assert "was revoked; a new one is written there" in server.server_log()

    # And the start after that keeps the new one.
    with live_coordinator(tmp_path, small_dataset) as server:
        assert server.admin_token == second
        assert len(server.api.tokens()) == 3


def test_an_empty_admin_token_file_is_never_a_token(tmp_path: Path, small_dataset: Path) -> None:
    data_dir = tmp_path / "coordinator"
    data_dir.mkdir()
    (data_dir / "admin_token").write_text("\n")
    with live_coordinator(tmp_path, small_dataset) as server:
        assert server.admin_token.startswith("cw-admin-")
        assert server.call("GET", "/api/me", token=server.admin_token)[1]["role"] == "admin"
        status, body = server.call("GET", "/api/me", token=" ")
        assert status == 401, body
