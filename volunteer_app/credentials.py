"""The volunteer's secret tokens, one per coordinator URL, in a file only its user can read.

    >>> store = CredentialStore()                     # <user config dir>/commonweights/credentials.toml
    >>> store.token_for("wss://example.org/ws") is None
    True
    >>> store.save("wss://example.org/ws", "tok-123", volunteer_id="v-9")
    >>> store.token_for("wss://example.org/ws")
    'tok-123'

A coordinator hands out a token once, in `welcome`; losing it means registering again as a new
volunteer, so the file is written atomically (temp file + rename) and created with mode 0600 in a
0700 directory. A token is forgotten when the coordinator answers it with `unauthorized`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import platformdirs
import tomli_w

from training.atomic_write import write_atomically

__all__ = [
    "APP_NAME",
    "FILE_NAME",
    "CredentialError",
    "CredentialStore",
    "Credentials",
    "coordinator_api",
    "coordinator_websocket",
    "default_config_dir",
    "normalize_url",
    "volunteer_data_dir",
]

APP_NAME = "commonweights"
FILE_NAME = "credentials.toml"
_HEADER = "# Commonweights volunteer tokens, one table per coordinator. Keep this file private.\n\n"


class CredentialError(OSError):
    """The credentials file exists but can't be read or parsed; the message says which file."""

    code = "bad_credentials"


@dataclass(frozen=True)
class Credentials:
    token: str
    volunteer_id: str | None = None


def default_config_dir() -> Path:
    """`<user config dir>/commonweights`, per platformdirs (for example ~/.config/commonweights)."""
    return platformdirs.user_config_path(APP_NAME, appauthor=False)


def volunteer_data_dir(config_dir: Path | None = None, data_dir: Path | None = None) -> Path:
    """Where a volunteer keeps its units in progress, the tokenized copies of its own files and its privacy
    ledger: `data_dir` when given; else next to a given config folder (`<config_dir>/data`, so installs with
    their own config folder, like the demo's, stay apart); else the user data folder. The worker, the app
    and `commonweights volunteer data` all use this one rule."""
    if data_dir is not None:
        return Path(data_dir)
    if config_dir is not None:
        return Path(config_dir) / "data"
    return platformdirs.user_data_path(APP_NAME, appauthor=False) / "volunteer"


def coordinator_websocket(url: str) -> str:
    """The WebSocket URL for what a user typed: http(s) becomes ws(s), and a bare host gets /ws;
    ValueError for text that names no coordinator."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"{url!r} is not a coordinator URL; use one like ws://127.0.0.1:8470/ws")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def coordinator_api(url: str) -> str:
    """The base of the coordinator's REST API (http(s)://host:port) for any URL `coordinator_websocket` takes."""
    parts = urlsplit(coordinator_websocket(url))
    return urlunsplit(({"ws": "http", "wss": "https"}[parts.scheme], parts.netloc, "", "", ""))


def normalize_url(url: str) -> str:
    """The key a URL is stored under: surrounding space and a trailing slash don't make a new one."""
    return url.strip().rstrip("/")


class CredentialStore:
    """Tokens keyed by coordinator URL in `<config_dir>/credentials.toml` (mode 0600)."""

    def __init__(self, config_dir: Path | None = None) -> None:
        self.config_dir = Path(config_dir) if config_dir is not None else default_config_dir()

    @property
    def path(self) -> Path:
        return self.config_dir / FILE_NAME

    def get(self, url: str) -> Credentials | None:
        entry = self._read().get(normalize_url(url))
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) or not entry["token"]:
            return None
        volunteer_id = entry.get("volunteer_id")
        return Credentials(entry["token"], volunteer_id if isinstance(volunteer_id, str) else None)

    def token_for(self, url: str) -> str | None:
        found = self.get(url)
        return found.token if found else None

    def save(self, url: str, token: str, *, volunteer_id: str | None = None) -> None:
        entries = self._read()
        entry: dict[str, object] = {"token": token}
        if volunteer_id is not None:
            entry["volunteer_id"] = volunteer_id
        entries[normalize_url(url)] = entry
        self._write(entries)

    def forget(self, url: str) -> bool:
        """Drop the token for `url`; whether there was one."""
        entries = self._read()
        if entries.pop(normalize_url(url), None) is None:
            return False
        self._write(entries)
        return True

    def _read(self) -> dict[str, object]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise CredentialError(f"can't read {self.path}: {error.strerror}") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise CredentialError(f"{self.path} is not valid TOML ({error}); fix or delete it") from None

    def _write(self, entries: dict[str, object]) -> None:
        self.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # 0600 from the moment the temporary file exists: the token is never readable by others.
        write_atomically(self.path, _HEADER + tomli_w.dumps(entries), mode=0o600)
