"""Volunteer accounts end to end: a real coordinator on loopback (SQLite, and PostgreSQL + S3 where they
run), its REST API and a volunteer over real websockets. A machine joins an account with a link code,
shows on the account's page with its state and unit, and is paused and resumed from there; teams rank
their members' machines."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from coordinator.accounts import normalize_code
from coordinator.appkeys import SERVICE
from coordinator.campaign import CampaignSpec
from coordinator.service import hash_token
from protocol.errors import ErrorCode
from protocol.messages import ErrorMessage, NoWork, Progress, RequestWork, Welcome, WorkUnit
from tests.coordinator.test_gateway import exchange, hello, server

__all__ = ["server"]  # the fixture, shared with test_gateway


class Rest:
    def __init__(self, http: aiohttp.ClientSession, server: TestServer) -> None:
        self.http = http
        self.server = server

    async def call(self, method: str, path: str, token: str | None = None, body: object = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.server.make_url(path), json=body, headers=headers) as response:
            return response.status, await response.json()

    async def account(self, name: str) -> str:
        status, body = await self.call("POST", "/api/accounts", body={"name": name})
        assert status == 201, body
        assert body["name"] == name and body["key"].startswith("cw-account-")
        return str(body["key"])


async def test_a_machine_joins_an_account_with_a_code_and_is_paused_and_resumed_from_it(server: TestServer) -> None:
    service = server.app[SERVICE]
    spec = {"name": "acc", "dataset": "small", "inner": {"steps": 2, "batch_size": 2, "seq_len": 32}}
    service.create_campaign(CampaignSpec.from_dict(spec), owner="admin:1")
    async with aiohttp.ClientSession() as http, http.ws_connect(server.make_url("/ws")) as ws:
        rest = Rest(http, server)
        alice, mallory = await rest.account("alice"), await rest.account("mallory")
        welcome = await exchange(ws, hello())
        assert isinstance(welcome, Welcome) and welcome.token is not None
        machine = welcome.token

        status, created = await rest.call("POST", "/api/account/link-code", alice)
        assert status == 201 and normalize_code(created["code"]) is not None
        assert (await rest.call("POST", "/api/machines/link", None, {"code": created["code"]}))[0] == 401
        assert (await rest.call("POST", "/api/machines/link", machine, {"code": "not a code"}))[0] == 400
        typed = created["code"].lower().replace("-", " ")  # as a person might type it
        status, linked = await rest.call("POST", "/api/machines/link", machine, {"code": typed})
        assert status == 200 and linked == {"volunteer_id": welcome.volunteer_id, "account": linked["account"]}
        assert linked["account"]["name"] == "alice"
        status, again = await rest.call("POST", "/api/machines/link", machine, {"code": created["code"]})
        assert status == 404 and "used" in again["error"]["message"]
        assert (await rest.call("GET", "/api/machines/me", machine))[1]["account"]["name"] == "alice"

        status, page = await rest.call("GET", "/api/account", alice)
        assert status == 200 and page["machine_count"] == 1
        (shown,) = page["machines"]
        assert (shown["id"], shown["state"], shown["device"]) == (welcome.volunteer_id, "online", "cpu: test cpu")
        assert shown["current_unit"] is None

        unit = await exchange(ws, RequestWork())
        assert isinstance(unit, WorkUnit), unit
        (shown,) = (await rest.call("GET", "/api/account", alice))[1]["machines"]
        assert shown["state"] == "training" and shown["current_unit"]["unit_id"] == unit.unit_id
        assert shown["current_unit"]["campaign_name"] == "acc"

        pause = f"/api/account/machines/{welcome.volunteer_id}/pause"
        assert (await rest.call("POST", pause, mallory))[0] == 404  # not mallory's machine
        assert (await rest.call("GET", "/api/account", mallory))[1]["machines"] == []
        status, paused = await rest.call("POST", pause, alice)
        assert status == 200 and paused["state"] == "paused" and paused["paused"] is True

        # Its next heartbeat gives the unit back, and it gets no work until resumed.
        beat = Progress(unit.unit_id, unit.lease_id, 1, unit.recipe.steps, 3.0, 64, "training")
        refused = await exchange(ws, beat)
        assert isinstance(refused, ErrorMessage) and refused.code == ErrorCode.NOT_YOUR_LEASE
        assert "paused" in refused.message
        row = service.store.unit(unit.unit_id)
        assert row is not None and row.state == "pending"
        idle = await exchange(ws, RequestWork())
        assert isinstance(idle, NoWork) and "paused from its account" in idle.reason
        assert (await rest.call("GET", "/api/machines/me", machine))[1]["paused"] is True

        status, resumed = await rest.call("POST", f"/api/account/machines/{welcome.volunteer_id}/resume", alice)
        assert status == 200 and resumed["paused"] is False
        assert isinstance(await exchange(ws, RequestWork()), WorkUnit)

        status, gone = await rest.call("DELETE", f"/api/account/machines/{welcome.volunteer_id}", alice)
        assert (status, gone) == (200, {"id": welcome.volunteer_id, "unlinked": True})
        assert (await rest.call("GET", "/api/account", alice))[1]["machines"] == []

        # Guessing codes: ten tries at once (two were spent above), then one a minute.
        answers = [(await rest.call("POST", "/api/machines/link", machine, {"code": "AAAA-AAAA"}))[0] for _ in range(9)]
        assert answers == [404] * 8 + [429]


async def test_accounts_form_teams_and_refuse_what_they_cannot_read(server: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        rest = Rest(http, server)
        assert (await rest.call("POST", "/api/accounts", body={"name": " "}))[0] == 400
        assert (await rest.call("POST", "/api/accounts", body={"name": "x", "email": "x@example.org"}))[0] == 400
        assert (await rest.call("GET", "/api/account", "cw-account-forged"))[0] == 401
        alice, bob = await rest.account("alice"), await rest.account("bob")
        status, team = await rest.call("POST", "/api/teams", alice, {"name": "Team Tux", "description": "penguins"})
        assert status == 201 and team["members"] == 1 and team["name"] == "Team Tux"
        assert (await rest.call("POST", "/api/teams", bob, {"name": "Team Tux"}))[0] == 409
        assert (await rest.call("POST", "/api/account/team", bob, {"team_id": team["id"] + 100}))[0] == 404
        assert (await rest.call("POST", "/api/account/team", bob, {"team_id": "1"}))[0] == 400
        status, page = await rest.call("POST", "/api/account/team", bob, {"team_id": team["id"]})
        assert status == 200 and page["team"] == {"id": team["id"], "name": "Team Tux"}
        status, listed = await rest.call("GET", "/api/teams")
        assert status == 200 and [(t["name"], t["members"]) for t in listed["teams"]] == [("Team Tux", 2)]
        status, detail = await rest.call("GET", f"/api/teams/{team['id']}")
        assert status == 200 and sorted(a["name"] for a in detail["accounts"]) == ["alice", "bob"]
        assert (await rest.call("GET", "/api/teams/99999"))[0] == 404
        assert (await rest.call("GET", "/api/teams/%C2%B2"))[0] == 404  # "²" is a digit to str.isdigit
        assert (await rest.call("GET", "/api/teams/" + "9" * 5000))[0] == 404
        status, page = await rest.call("POST", "/api/account/team", bob, {"team_id": None})
        assert status == 200 and page["team"] is None


async def test_an_account_is_renamed_gets_a_new_key_and_ranks_by_credit(server: TestServer) -> None:
    service = server.app[SERVICE]
    async with aiohttp.ClientSession() as http:
        rest = Rest(http, server)
        old_key = await rest.account("alice")
        status, page = await rest.call("POST", "/api/account/name", old_key, {"name": "Alice L."})
        assert status == 200 and page["name"] == "Alice L."
        status, replaced = await rest.call("POST", "/api/account/key", old_key)
        assert status == 201 and replaced["key"] != old_key
        assert (await rest.call("GET", "/api/account", old_key))[0] == 401  # a leaked key is dead
        assert (await rest.call("GET", "/api/account", replaced["key"]))[1]["name"] == "Alice L."

        assert (await rest.call("GET", "/api/accounts"))[1] == {"accounts": []}  # nobody earned anything yet
        service.store.add_volunteer("m", "hash-m", "laptop", {})
        code = (await rest.call("POST", "/api/account/link-code", replaced["key"]))[1]["code"]
        assert service.store.redeem_link_code(hash_token(normalize_code(code) or ""), "m") is not None
        with service.store.transaction():
            service.store.record_outcome(
                "m", accepted=True, credit=2.5, tokens=1, trust={"consecutive_valid": 1, "errors": 0}
            )
        status, top = await rest.call("GET", "/api/accounts")
        assert status == 200 and [(a["name"], a["credit"], a["machine_count"]) for a in top["accounts"]] == [
            ("Alice L.", 2.5, 1)
        ]
