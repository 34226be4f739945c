from __future__ import annotations

import stat
from pathlib import Path

import pytest

from volunteer_app.credentials import CredentialError, CredentialStore


def test_a_saved_token_is_read_back_for_its_coordinator_only(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "cfg")
    store.save("ws://a.example:8470/ws", "token-a", volunteer_id="v-a")
    store.save("wss://b.example/ws", "token-b")
    again = CredentialStore(tmp_path / "cfg")  # a fresh process reads the file
    assert again.token_for("ws://a.example:8470/ws") == "token-a"
    assert again.get("ws://a.example:8470/ws").volunteer_id == "v-a"  # type: ignore[union-attr]
    assert again.token_for("wss://b.example/ws/") == "token-b"  # a trailing slash is the same URL
    assert again.token_for("ws://c.example/ws") is None


def test_the_file_is_private_to_its_user(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "cfg")
    store.save("ws://a.example/ws", "secret")
    assert store.path == tmp_path / "cfg" / "credentials.toml"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.config_dir.stat().st_mode) == 0o700
    store.save("ws://b.example/ws", "other")  # rewriting keeps the mode
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [p.name for p in store.config_dir.iterdir()] == ["credentials.toml"]  # no temp files left


def test_forgetting_one_coordinator_keeps_the_others(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    store.save("ws://a.example/ws", "token-a")
    store.save("ws://b.example/ws", "token-b")
    assert store.forget("ws://a.example/ws")
    assert not store.forget("ws://a.example/ws")
    assert store.token_for("ws://a.example/ws") is None
    assert store.token_for("ws://b.example/ws") == "token-b"


def test_a_corrupt_file_is_an_error_that_names_it(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path)
    store.path.write_text("this is = = not toml")
    with pytest.raises(CredentialError, match=r"credentials\.toml"):
        store.token_for("ws://a.example/ws")
