"""Volunteer accounts over the REST API: machines joined with a link code, remote pause, teams, credit.

    POST /api/accounts {"name": "alice"}              -> {"id": 1, "name": "alice", "key": "cw-account-…"}
    POST /api/account/link-code     (account key)     -> {"code": "K7QX-M2PD", "expires_at": …}
    POST /api/machines/link {"code": "K7QX-M2PD"}     (the machine's volunteer token) -> the machine joins
    GET  /api/account               (account key)     -> the account, its standing and its machines
    POST /api/account/machines/{volunteer_id}/pause   -> the machine leases no more work until resumed

No e-mail and no password: an account is its key, shown once when it is made (the dashboard keeps it
in the browser; copying it signs in elsewhere). A machine is a volunteer identity (its token, from
`welcome`); it joins an account with a one-time code the account's page shows, valid for
`LINK_CODE_TTL_S`, of which an account has one at a time. Codes and keys are kept only as hashes.

A paused machine gets `no_work` with the reason when it asks for work, and its next `progress` on a
leased unit gives the unit back (`not_your_lease`, docs/protocol.md "Paused machines"). An account's
credit is its machines' credit, a team's its members'; recent average credit is BOINC's
(coordinator.store.credit).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from aiohttp import web

from coordinator.appkeys import SERVICE
from coordinator.openapi import MAX_ID, Param, Reply, Route, id_param, ref
from coordinator.request_body import BadBody, error_response, json_body, retry_later
from coordinator.service import Coordinator, hash_token
from coordinator.store import AccountRow, Standing, StoreError, TeamRow, VolunteerRow
from coordinator.store.credit import decayed
from protocol.limits import MAX_ID_LEN

__all__ = [
    "ACCOUNT",
    "ACCOUNT_ROLE",
    "ACCOUNT_ROUTES",
    "LINK_CODE_TTL_S",
    "MACHINE",
    "MACHINE_ROLE",
    "ONLINE_S",
    "authenticate",
    "normalize_code",
]

ACCOUNT_ROLE = "account"  # routes a volunteer's account key opens
MACHINE_ROLE = "machine"  # routes a volunteer's own token (from welcome) opens
ACCOUNT = web.RequestKey("account", AccountRow)
MACHINE = web.RequestKey("machine", VolunteerRow)
LINK_CODE_TTL_S = 15 * 60.0
ONLINE_S = 150.0  # heard from within this long: online (a connected machine's last_seen moves every minute)
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: read off one screen, typed on another
CODE_LENGTH = 8
TEAM_ID_TEXT = re.compile(r"[0-9]{1,18}")  # fits MAX_ID (ASCII digits only: str.isdigit takes "²")
MAX_NAME = 100
MAX_DESCRIPTION = 500


def _service(request: web.Request) -> Coordinator:
    return request.app[SERVICE]


async def authenticate(request: web.Request, role: str, token: str) -> bool:
    """Whether `token` is a live account key (`ACCOUNT_ROLE`) or a volunteer's token (`MACHINE_ROLE`);
    the account or the machine goes into the request."""
    service = _service(request)
    if role == ACCOUNT_ROLE:
        account = await service.workers.run(service.store.account_by_key, hash_token(token))
        if account is not None:
            request[ACCOUNT] = account
        return account is not None
    machine = await service.workers.run(service.volunteer_for_token, token)
    if machine is not None and not machine.banned:
        request[MACHINE] = machine
        return True
    return False


def normalize_code(text: str) -> str | None:
    """A link code as typed ("k7qx m2pd", "K7QX-M2PD") in its one form, or None if it can't be one."""
    code = "".join(ch for ch in text.upper() if ch not in " -")
    if len(code) != CODE_LENGTH or any(ch not in CODE_ALPHABET for ch in code):
        return None
    return code


def _new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


async def _fields(request: web.Request, usage: str, allowed: set[str]) -> dict[str, Any] | web.Response:
    try:
        body = await json_body(request)
    except OverflowError as error:
        return error_response(413, "too_large", str(error))
    except BadBody as error:
        return error_response(400, error.code, f"{error}; {usage}")
    if not isinstance(body, dict):
        return error_response(400, "bad_request", usage)
    unknown = sorted(set(body) - allowed)
    if unknown:
        return error_response(400, "bad_request", f"unknown fields {', '.join(unknown)}; {usage}")
    return body


def _text(value: object, field: str, limit: int, *, required: bool = True) -> str | web.Response:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        return error_response(400, "bad_request", f"{field}: give 1-{limit} characters of text")
    return value.strip()


def _standing(standing: Standing) -> dict[str, Any]:
    return {
        "credit": round(standing.credit, 6),
        "recent_credit": round(standing.recent_credit, 6),
        "machine_count": standing.machines,
    }


def _team(team: TeamRow) -> dict[str, Any]:
    return {
        "id": team.id,
        "name": team.name,
        "description": team.description,
        "created_at": team.created_at,
        "members": team.members,
        **_standing(team.standing),
    }


def _device(capabilities: dict[str, Any]) -> str:
    """The machine's best device, as the app reported it: a GPU before the CPU."""
    devices = [d for d in capabilities.get("devices", []) if isinstance(d, dict)]
    devices.sort(key=lambda d: d.get("kind") == "cpu")
    if not devices:
        return "unknown"
    best = devices[0]
    return f"{best.get('kind', '?')}: {best.get('name', '?')}"


def _state(machine: VolunteerRow, unit: tuple[str, int, str] | None, now: float) -> str:
    if machine.banned:
        return "banned"
    if machine.paused:
        return "paused"
    if unit is not None:
        return "training"
    return "online" if now - machine.last_seen <= ONLINE_S else "offline"


def _machines(service: Coordinator, account_id: int) -> list[dict[str, Any]]:
    machines = service.store.machines(account_id)
    units = service.store.leased_units(account_id)
    now = service.clock()
    views = []
    for machine in machines:
        unit = units.get(machine.id)
        views.append(
            {
                "id": machine.id,
                "name": machine.name,
                "state": _state(machine, unit, now),
                "paused": machine.paused,
                "device": _device(machine.capabilities),
                "platform": str(machine.capabilities.get("platform", "")),
                "client_version": str(machine.capabilities.get("client_version", "")),
                "last_seen": machine.last_seen,
                "credit": round(machine.credit, 6),
                "recent_credit": round(decayed(machine.recent_credit, machine.recent_credit_at, now), 6),
                "tokens": machine.tokens,
                "units_accepted": machine.units_accepted,
                "current_unit": (
                    {"unit_id": unit[0], "campaign_id": unit[1], "campaign_name": unit[2]} if unit else None
                ),
            }
        )
    return views


def _account_view(service: Coordinator, account: AccountRow) -> dict[str, Any]:
    team = service.store.team(account.team_id) if account.team_id is not None else None
    return {
        "id": account.id,
        "name": account.name,
        "created_at": account.created_at,
        "team": {"id": team.id, "name": team.name} if team else None,
        **_standing(service.store.account_standing(account.id)),
        "machines": _machines(service, account.id),
    }


# handlers ----------------------------------------------------------------------------------------


async def create_account(request: web.Request) -> web.Response:
    service = _service(request)
    body = await _fields(request, 'send JSON like {"name": "alice"}', {"name"})
    if isinstance(body, web.Response):
        return body
    name = _text(body.get("name"), "name", MAX_NAME)
    if isinstance(name, web.Response):
        return name
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    wait = service.registration_wait(service.config.sources.source(request.remote, forwarded))
    if wait > 0:
        return retry_later(429, "too_many_requests", "too many new accounts from your network; retry later", wait)
    key = "cw-account-" + secrets.token_urlsafe(24)
    account_id = await service.workers.run(service.store.add_account, name, hash_token(key))
    return web.json_response({"id": account_id, "name": name, "key": key}, status=201)


async def get_account(request: web.Request) -> web.Response:
    service = _service(request)
    return web.json_response(await service.workers.run(_account_view, service, request[ACCOUNT]))


async def rename_account(request: web.Request) -> web.Response:
    service = _service(request)
    body = await _fields(request, 'send JSON like {"name": "alice"}', {"name"})
    if isinstance(body, web.Response):
        return body
    name = _text(body.get("name"), "name", MAX_NAME)
    if isinstance(name, web.Response):
        return name
    await service.workers.run(service.store.rename_account, request[ACCOUNT].id, name)
    account = await service.workers.run(service.store.account, request[ACCOUNT].id)
    assert account is not None
    return web.json_response(await service.workers.run(_account_view, service, account))


async def new_account_key(request: web.Request) -> web.Response:
    service = _service(request)
    key = "cw-account-" + secrets.token_urlsafe(24)
    await service.workers.run(service.store.replace_account_key, request[ACCOUNT].id, hash_token(key))
    return web.json_response({"id": request[ACCOUNT].id, "name": request[ACCOUNT].name, "key": key}, status=201)


async def list_accounts(request: web.Request) -> web.Response:
    service = _service(request)
    ranked = await service.workers.run(service.store.top_accounts)
    return web.json_response({"accounts": [{"id": a.id, "name": a.name, **_standing(s)} for a, s in ranked]})


async def new_link_code(request: web.Request) -> web.Response:
    service = _service(request)
    code = _new_code()
    expires_at = service.clock() + LINK_CODE_TTL_S
    await service.workers.run(service.store.add_link_code, request[ACCOUNT].id, hash_token(code), expires_at)
    shown = f"{code[:4]}-{code[4:]}"
    return web.json_response({"code": shown, "expires_at": expires_at, "expires_in_s": LINK_CODE_TTL_S}, status=201)


async def link_machine(request: web.Request) -> web.Response:
    service = _service(request)
    body = await _fields(request, 'send JSON like {"code": "K7QX-M2PD"}', {"code"})
    if isinstance(body, web.Response):
        return body
    code = normalize_code(body["code"]) if isinstance(body.get("code"), str) else None
    if code is None:
        return error_response(400, "bad_request", f"code: {CODE_LENGTH} letters and digits, as the dashboard shows it")
    machine = request[MACHINE]
    wait = service.link_attempts.take(machine.id)
    if wait > 0:
        return retry_later(429, "too_many_requests", "too many link attempts from this machine; retry later", wait)
    account = await service.workers.run(service.store.redeem_link_code, hash_token(code), machine.id)
    if account is None:
        return error_response(404, "not_found", "no such link code: it was mistyped, used, or expired; make a new one")
    return web.json_response({"volunteer_id": machine.id, "account": {"id": account.id, "name": account.name}})


async def my_machine(request: web.Request) -> web.Response:
    service = _service(request)
    machine = request[MACHINE]
    account = await service.workers.run(service.store.account, machine.account_id) if machine.account_id else None
    return web.json_response(
        {
            "volunteer_id": machine.id,
            "name": machine.name,
            "paused": machine.paused,
            "account": {"id": account.id, "name": account.name} if account else None,
        }
    )


def _pause_action(paused: bool) -> Any:
    async def handler(request: web.Request) -> web.Response:
        service = _service(request)
        volunteer_id = request.match_info["volunteer_id"]
        account = request[ACCOUNT]
        if not await service.workers.run(service.store.set_machine_paused, account.id, volunteer_id, paused):
            return error_response(404, "not_found", "no such machine in your account")
        views = await service.workers.run(_machines, service, account.id)
        view = next((v for v in views if v["id"] == volunteer_id), None)
        if view is None:  # removed from the account meanwhile
            return error_response(404, "not_found", "no such machine in your account")
        return web.json_response(view)

    handler.__name__ = "pause_machine" if paused else "resume_machine"
    return handler


async def unlink_machine(request: web.Request) -> web.Response:
    service = _service(request)
    volunteer_id = request.match_info["volunteer_id"]
    if not await service.workers.run(service.store.unlink_machine, request[ACCOUNT].id, volunteer_id):
        return error_response(404, "not_found", "no such machine in your account")
    return web.json_response({"id": volunteer_id, "unlinked": True})


async def create_team(request: web.Request) -> web.Response:
    service = _service(request)
    body = await _fields(request, 'send JSON like {"name": "Team Tux", "description": "…"}', {"name", "description"})
    if isinstance(body, web.Response):
        return body
    name = _text(body.get("name"), "name", MAX_NAME)
    if isinstance(name, web.Response):
        return name
    description = _text(body.get("description"), "description", MAX_DESCRIPTION, required=False)
    if isinstance(description, web.Response):
        return description
    try:
        team_id = await service.workers.run(service.store.add_team, name, description, request[ACCOUNT].id)
    except StoreError as error:
        return error_response(409, "conflict", str(error))
    team = await service.workers.run(service.store.team, team_id)
    assert team is not None
    return web.json_response(_team(team), status=201)


async def join_team(request: web.Request) -> web.Response:
    service = _service(request)
    usage = 'send JSON like {"team_id": 3}, or {"team_id": null} to leave your team'
    body = await _fields(request, usage, {"team_id"})
    if isinstance(body, web.Response):
        return body
    team_id = body.get("team_id", "missing")
    if team_id is not None and (type(team_id) is not int or not 0 <= team_id <= MAX_ID):
        return error_response(400, "bad_request", usage)
    if not await service.workers.run(service.store.set_team, request[ACCOUNT].id, team_id):
        return error_response(404, "not_found", f"no team {team_id}")
    account = await service.workers.run(service.store.account, request[ACCOUNT].id)
    assert account is not None
    return web.json_response(await service.workers.run(_account_view, service, account))


async def list_teams(request: web.Request) -> web.Response:
    service = _service(request)
    teams = await service.workers.run(service.store.teams)
    return web.json_response({"teams": [_team(t) for t in teams]})


async def get_team(request: web.Request) -> web.Response:
    service = _service(request)
    text = request.match_info["team_id"]
    team = await service.workers.run(service.store.team, int(text)) if TEAM_ID_TEXT.fullmatch(text) else None
    if team is None:
        return error_response(404, "not_found", f"no team {text[:40]}")
    members = await service.workers.run(service.store.team_members, team.id)
    return web.json_response(
        {
            **_team(team),
            "accounts": [{"id": a.id, "name": a.name, **_standing(s)} for a, s in members],
        }
    )


# the table ---------------------------------------------------------------------------------------

OWN = (ACCOUNT_ROLE,)
MINE = (MACHINE_ROLE,)
MACHINE_ID = Param(
    "volunteer_id", "path", {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN}, "The machine's volunteer id."
)
TEAM_ID = id_param("team_id", "team")
PAUSE_NOTES = (
    "A paused machine gets no_work (with the reason) when it asks for work, and gives its current unit back at "
    "its next progress report, within the heartbeat interval (docs/protocol.md, Paused machines)."
)


def _reply(description: str, schema: str) -> Reply:
    return Reply(description, ref(schema))


def _pause_route(action: str, description: str) -> Route:
    return Route(
        "POST",
        f"/api/account/machines/{{volunteer_id}}/{action}",
        _pause_action(action == "pause"),
        f"{action.capitalize()} one of your machines",
        _reply("The machine.", "Machine"),
        roles=OWN,
        params=(MACHINE_ID,),
        description=description,
        operation_id=f"{action}_machine",
    )


ACCOUNT_ROUTES: list[Route] = [
    Route(
        "POST",
        "/api/accounts",
        create_account,
        "Create a volunteer account",
        _reply("The account; its key is shown only here.", "AccountCreated"),
        body=ref("AccountRequest"),
        status=201,
        errors=(429,),
        description="No e-mail or password: the key signs in. New accounts share the volunteer registration limit.",
    ),
    Route(
        "GET",
        "/api/accounts",
        list_accounts,
        "Top volunteer accounts",
        _reply("The 100 accounts with the most credit.", "AccountList"),
    ),
    Route("GET", "/api/account", get_account, "Your account and machines", _reply("It.", "Account"), roles=OWN),
    Route(
        "POST",
        "/api/account/name",
        rename_account,
        "Rename your account",
        _reply("Your account.", "Account"),
        roles=OWN,
        body=ref("AccountRequest"),
    ),
    Route(
        "POST",
        "/api/account/key",
        new_account_key,
        "Replace your account key",
        _reply("The new key, shown only here; the old one stops working.", "AccountCreated"),
        roles=OWN,
        status=201,
        description="For a key that may have leaked: every browser signed in with the old key must sign in again.",
    ),
    Route(
        "POST",
        "/api/account/link-code",
        new_link_code,
        "A code to link a machine",
        _reply("The code, valid 15 minutes, once; it replaces the account's previous one.", "LinkCode"),
        roles=OWN,
        status=201,
    ),
    _pause_route("pause", PAUSE_NOTES),
    _pause_route("resume", "The machine asks for work again at its next request."),
    Route(
        "DELETE",
        "/api/account/machines/{volunteer_id}",
        unlink_machine,
        "Remove a machine from your account",
        _reply("Removed; the machine keeps its credit and goes on working unlinked.", "Unlinked"),
        roles=OWN,
        params=(MACHINE_ID,),
    ),
    Route(
        "POST",
        "/api/account/team",
        join_team,
        "Join or leave a team",
        _reply("Your account.", "Account"),
        roles=OWN,
        body=ref("TeamChoice"),
        errors=(404,),
    ),
    Route(
        "POST",
        "/api/machines/link",
        link_machine,
        "Link this machine to an account",
        _reply("The account it joined.", "Linked"),
        roles=MINE,
        body=ref("LinkRequest"),
        errors=(404, 429),
        description=(
            "Called by the app with its volunteer token and a code from the account's page. A machine may try "
            "10 codes at once, then one a minute (429 with Retry-After)."
        ),
        tag="machines",
    ),
    Route(
        "GET",
        "/api/machines/me",
        my_machine,
        "This machine's account and pause",
        _reply("The machine.", "MachineSelf"),
        roles=MINE,
        tag="machines",
    ),
    Route("GET", "/api/teams", list_teams, "Teams by credit", _reply("Every team.", "TeamList")),
    Route(
        "POST",
        "/api/teams",
        create_team,
        "Create a team (and join it)",
        _reply("The team.", "Team"),
        roles=OWN,
        body=ref("TeamRequest"),
        status=201,
        errors=(409,),
    ),
    Route(
        "GET",
        "/api/teams/{team_id}",
        get_team,
        "A team and its members",
        _reply("The team.", "TeamDetail"),
        params=(TEAM_ID,),
    ),
]
