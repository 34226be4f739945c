"""This machine and the volunteer's account on a coordinator: link it with a code, read whether it is linked
and whether the account paused it. Plain HTTPS from the standard library, so the tray app (which has no
PyTorch) uses it as well as `commonweights volunteer link`.

    >>> link_machine("https://example.org", "K7QX-M2PD", config_dir=None)
    Linked(volunteer_id='3f…', account_id=4, account_name='alice')
    >>> machine_status("https://example.org", config_dir=None)
    MachineStatus(volunteer_id='3f…', name='laptop', account_name='alice', paused=False)

The machine proves who it is with the token the coordinator gave it at its first connection (kept in
credentials.toml); a machine that has never connected has none yet and is told to start once. The code
comes from the account's "My machines" page on the dashboard. Answers are read as hostile: at most
`MAX_ANSWER_BYTES`, JSON objects with the fields expected, or an `AccountError` saying what went wrong.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volunteer_app.credentials import CredentialError, CredentialStore, coordinator_api, coordinator_websocket

__all__ = ["MAX_ANSWER_BYTES", "AccountError", "Linked", "MachineStatus", "link_machine", "machine_status"]

MAX_ANSWER_BYTES = 64 * 1024
TIMEOUT_S = 15.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following one would send the machine's token to wherever it points."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class AccountError(RuntimeError):
    """Linking or reading failed; the message is for the user, `code` for programs."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Linked:
    volunteer_id: str
    account_id: int
    account_name: str


@dataclass(frozen=True)
class MachineStatus:
    volunteer_id: str
    name: str
    account_name: str | None  # None: in no account
    paused: bool  # paused from the account's page


def link_machine(coordinator: str, code: str, *, config_dir: Path | None, timeout: float = TIMEOUT_S) -> Linked:
    """Join the account whose page shows `code`."""
    answer = _call(coordinator, "POST", "/api/machines/link", {"code": code}, config_dir, timeout)
    account = answer.get("account")
    if not isinstance(account, dict):
        raise AccountError("bad_answer", "the coordinator's answer has no account")
    return Linked(_field(answer, "volunteer_id", str), _field(account, "id", int), _field(account, "name", str))


def machine_status(coordinator: str, *, config_dir: Path | None, timeout: float = TIMEOUT_S) -> MachineStatus:
    """Which account this machine is in, and whether it is paused from there."""
    answer = _call(coordinator, "GET", "/api/machines/me", None, config_dir, timeout)
    account = answer.get("account")
    if account is not None and not isinstance(account, dict):
        raise AccountError("bad_answer", "the coordinator's answer has a malformed account")
    return MachineStatus(
        _field(answer, "volunteer_id", str),
        _field(answer, "name", str),
        _field(account, "name", str) if account is not None else None,
        _field(answer, "paused", bool),
    )


def _call(
    coordinator: str, method: str, path: str, body: object, config_dir: Path | None, timeout: float
) -> dict[str, Any]:
    try:
        websocket, base = coordinator_websocket(coordinator), coordinator_api(coordinator)
    except ValueError as error:
        raise AccountError("bad_url", str(error)) from None
    try:
        token = CredentialStore(config_dir).token_for(websocket)
    except CredentialError as error:
        raise AccountError(error.code, str(error)) from None
    if token is None:
        raise AccountError(
            "not_registered",
            f"this machine has not connected to {base} yet, so it has no identity to link: start it once "
            "(the app, or `commonweights volunteer run`), then link it",
        )
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return _object(response.read(MAX_ANSWER_BYTES + 1))
    except urllib.error.HTTPError as error:
        with error:
            answer = _object(error.read(MAX_ANSWER_BYTES + 1), strict=False)
        found = answer.get("error")
        problem: dict[str, Any] = found if isinstance(found, dict) else {}
        message = str(problem.get("message") or f"the coordinator answered {error.code}")[:500]
        raise AccountError(str(problem.get("code") or f"http_{error.code}")[:40], message) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
        reason = getattr(error, "reason", None) or error or type(error).__name__
        raise AccountError("unreachable", f"can't reach {base}: {reason}") from None


def _object(raw: bytes, *, strict: bool = True) -> dict[str, Any]:
    if len(raw) > MAX_ANSWER_BYTES:
        raise AccountError("bad_answer", f"the coordinator's answer is over {MAX_ANSWER_BYTES} bytes")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        if strict:
            raise AccountError("bad_answer", "the coordinator's answer is not a JSON object")
        return {}
    return value


def _field(values: dict[str, Any], name: str, kind: type) -> Any:
    value = values.get(name)
    if type(value) is not kind or (isinstance(value, str) and len(value) > 1000):
        raise AccountError("bad_answer", f"the coordinator's answer has no valid {name}")
    return value
