"""The REST API (JSON): campaigns, rounds, versions, volunteers, stats and admin actions.

Reads are public. Writes need `Authorization: Bearer TOKEN` with a role: `admin` (everything) or
`lead` (create campaigns; pause, resume and stop their own). Every error is
`{"error": {"code": ..., "message": ...}}`, with `problems` listing each one for a bad spec.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from coordinator.appkeys import METRICS, SERVICE
from coordinator.campaign import CampaignSpec, SpecError
from coordinator.metrics import render_metrics
from coordinator.service import Coordinator
from coordinator.store import CampaignRow, StoreError
from coordinator.version import SERVER_VERSION

__all__ = ["MAX_BODY_BYTES", "add_routes", "campaign_summary"]

MAX_BODY_BYTES = 256 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


def _service(request: web.Request) -> Coordinator:
    return request.app[SERVICE]


def _caller(request: web.Request) -> tuple[int, str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    return _service(request).role_for_token(header.removeprefix("Bearer ").strip())


def require(*roles: str) -> Callable[[Handler], Handler]:
    """Only callers whose token carries one of `roles`; 401 without a token, 403 with the wrong one."""

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            caller = _caller(request)
            if caller is None:
                return error_response(401, "unauthorized", "sign in: send 'Authorization: Bearer <token>'")
            if caller[1] not in roles:
                return error_response(403, "forbidden", f"this needs the {' or '.join(roles)} role")
            request["caller"] = caller
            return await handler(request)

        return guarded

    return wrap


def _campaign_or_404(request: web.Request) -> CampaignRow | web.Response:
    try:
        campaign_id = int(request.match_info["campaign_id"])
    except ValueError:
        return error_response(404, "not_found", "campaign ids are integers")
    row = _service(request).store.campaign(campaign_id)
    if row is None:
        return error_response(404, "not_found", f"no campaign {campaign_id}")
    return row


def campaign_summary(service: Coordinator, row: CampaignRow) -> dict[str, Any]:
    spec = CampaignSpec.from_dict(row.spec)
    versions = service.store.versions(row.id)
    losses = [v.holdout_loss for v in versions if v.holdout_loss is not None]
    return {
        "id": row.id,
        "name": row.name,
        "description": spec.description,
        "status": row.status,
        "model": spec.model,
        "dataset": spec.dataset,
        "codec": spec.codec.name,
        "version": row.current_version,
        "rounds_closed": row.rounds_closed,
        "rounds_total": spec.total_rounds,
        "tokens_trained": row.tokens_trained,
        "token_budget": spec.token_budget,
        "progress": min(1.0, row.rounds_closed / spec.total_rounds),
        "holdout_loss": losses[-1] if losses else None,
        "owner": row.owner,
        "created_at": row.created_at,
    }


async def health(request: web.Request) -> web.Response:
    service = _service(request)
    return web.json_response(
        {
            "status": "ok",
            "version": SERVER_VERSION,
            "campaigns": len(service.runtimes),
            "volunteers_connected": request.app[METRICS].connected,
            "schema_version": service.store.schema_version,
        }
    )


async def list_campaigns(request: web.Request) -> web.Response:
    service = _service(request)
    return web.json_response({"campaigns": [campaign_summary(service, r) for r in service.store.campaigns()]})


@require("admin", "lead")
async def create_campaign(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return error_response(413, "too_large", f"a campaign spec must be under {MAX_BODY_BYTES} bytes")
    body = await request.content.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return error_response(413, "too_large", f"a campaign spec must be under {MAX_BODY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
        data = tomllib.loads(text) if "toml" in request.content_type else json.loads(text)
        spec = CampaignSpec.from_dict(data)
        caller = request["caller"]
        campaign_id = _service(request).create_campaign(spec, owner=f"{caller[1]}:{caller[0]}")
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        return error_response(400, "bad_request", f"the body is not valid {request.content_type}: {error}")
    except SpecError as error:
        return error_response(400, error.code, str(error), problems=error.problems)
    except StoreError as error:
        return error_response(409, "conflict", str(error))
    row = _service(request).store.campaign(campaign_id)
    assert row is not None
    return web.json_response(campaign_summary(_service(request), row), status=201)


async def get_campaign(request: web.Request) -> web.Response:
    row = _campaign_or_404(request)
    if isinstance(row, web.Response):
        return row
    service = _service(request)
    runtime = service.runtimes.get(row.id)
    summary = campaign_summary(service, row)
    summary["spec"] = row.spec
    summary["rejections"] = service.store.rejection_counts(row.id)
    summary["accepted"] = len(service.store.submissions(campaign_id=row.id, statuses=("accepted",)))
    summary["open_round"] = runtime.round.row.number if runtime and runtime.round else None
    return web.json_response(summary)


def _status_action(status: str, allowed_from: tuple[str, ...]) -> Handler:
    @require("admin", "lead")
    async def handler(request: web.Request) -> web.Response:
        row = _campaign_or_404(request)
        if isinstance(row, web.Response):
            return row
        caller = request["caller"]
        if caller[1] != "admin" and row.owner != f"{caller[1]}:{caller[0]}":
            return error_response(403, "forbidden", "only the campaign's owner or an admin can change it")
        if row.status not in allowed_from:
            return error_response(409, "conflict", f"campaign {row.name} is {row.status}; it can't become {status}")
        _service(request).set_status(row.id, status)
        updated = _service(request).store.campaign(row.id)
        assert updated is not None
        return web.json_response(campaign_summary(_service(request), updated))

    return handler


async def list_versions(request: web.Request) -> web.Response:
    row = _campaign_or_404(request)
    if isinstance(row, web.Response):
        return row
    versions = _service(request).store.versions(row.id)
    return web.json_response(
        {
            "versions": [
                {
                    "version": v.version,
                    "holdout_loss": v.holdout_loss,
                    "tokens": v.tokens_total,
                    "updates": v.updates,
                    "checkpoint_sha256": v.checkpoint_sha,
                    "created_at": v.created_at,
                }
                for v in versions
            ]
        }
    )


async def list_rounds(request: web.Request) -> web.Response:
    row = _campaign_or_404(request)
    if isinstance(row, web.Response):
        return row
    rounds = _service(request).store.rounds(row.id)
    return web.json_response(
        {
            "rounds": [
                {
                    "number": r.number,
                    "version": r.version,
                    "status": r.status,
                    "opened_at": r.opened_at,
                    "deadline": r.deadline,
                    "closed_at": r.closed_at,
                    "close_reason": r.close_reason,
                }
                for r in rounds
            ]
        }
    )


async def leaderboard(request: web.Request) -> web.Response:
    row = _campaign_or_404(request)
    if isinstance(row, web.Response):
        return row
    return web.json_response({"leaderboard": _service(request).store.leaderboard(row.id)})


async def list_volunteers(request: web.Request) -> web.Response:
    rows = _service(request).store.volunteers()
    return web.json_response(
        {
            "volunteers": [
                {
                    "id": v.id,
                    "name": v.name,
                    "credit": v.credit,
                    "tokens": v.tokens,
                    "units_accepted": v.units_accepted,
                    "units_rejected": v.units_rejected,
                    "last_seen": v.last_seen,
                    "banned": v.banned,
                }
                for v in rows
            ]
        }
    )


def _ban_action(banned: bool) -> Handler:
    @require("admin")
    async def handler(request: web.Request) -> web.Response:
        volunteer_id = request.match_info["volunteer_id"]
        if not _service(request).store.set_banned(volunteer_id, banned):
            return error_response(404, "not_found", f"no volunteer {volunteer_id}")
        return web.json_response({"id": volunteer_id, "banned": banned})

    return handler


async def stats(request: web.Request) -> web.Response:
    service = _service(request)
    volunteers = service.store.volunteers(limit=1_000_000)
    campaigns = service.store.campaigns()
    return web.json_response(
        {
            "campaigns": len(campaigns),
            "campaigns_active": sum(1 for c in campaigns if c.status == "active"),
            "volunteers": len(volunteers),
            "volunteers_connected": request.app[METRICS].connected,
            "tokens_trained": sum(c.tokens_trained for c in campaigns),
            "credit": sum(v.credit for v in volunteers),
        }
    )


@require("admin", "lead")
async def list_datasets(request: web.Request) -> web.Response:
    return web.json_response({"datasets": _service(request).dataset_names()})


@require("admin")
async def create_token(request: web.Request) -> web.Response:
    try:
        body = await request.json()
        label = str(body.get("label", "")).strip()
        role = str(body.get("role", "lead"))
    except (json.JSONDecodeError, AttributeError):
        return error_response(400, "bad_request", 'send JSON like {"label": "alice", "role": "lead"}')
    if not label or len(label) > 100:
        return error_response(400, "bad_request", "label: give the token a name of 1-100 characters")
    if role not in ("lead", "admin"):
        return error_response(400, "bad_request", "role must be lead or admin")
    token_id, token = _service(request).create_api_token(role, label)
    return web.json_response({"id": token_id, "role": role, "label": label, "token": token}, status=201)


@require("admin")
async def list_tokens(request: web.Request) -> web.Response:
    return web.json_response({"tokens": _service(request).store.api_tokens()})


@require("admin")
async def revoke_token(request: web.Request) -> web.Response:
    try:
        token_id = int(request.match_info["token_id"])
    except ValueError:
        return error_response(404, "not_found", "token ids are integers")
    if not _service(request).store.revoke_api_token(token_id):
        return error_response(404, "not_found", f"no token {token_id}")
    return web.json_response({"id": token_id, "revoked": True})


async def metrics(request: web.Request) -> web.Response:
    text = render_metrics(request.app[METRICS], _service(request))
    return web.Response(
        text=text, content_type="text/plain", charset="utf-8", headers={"X-Content-Type-Options": "nosniff"}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/campaigns", list_campaigns)
    app.router.add_post("/api/campaigns", create_campaign)
    app.router.add_get("/api/campaigns/{campaign_id}", get_campaign)
    app.router.add_post("/api/campaigns/{campaign_id}/pause", _status_action("paused", ("active",)))
    app.router.add_post("/api/campaigns/{campaign_id}/resume", _status_action("active", ("paused",)))
    app.router.add_post("/api/campaigns/{campaign_id}/stop", _status_action("stopped", ("active", "paused")))
    app.router.add_get("/api/campaigns/{campaign_id}/versions", list_versions)
    app.router.add_get("/api/campaigns/{campaign_id}/rounds", list_rounds)
    app.router.add_get("/api/campaigns/{campaign_id}/leaderboard", leaderboard)
    app.router.add_get("/api/volunteers", list_volunteers)
    app.router.add_post("/api/volunteers/{volunteer_id}/ban", _ban_action(True))
    app.router.add_post("/api/volunteers/{volunteer_id}/unban", _ban_action(False))
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/datasets", list_datasets)
    app.router.add_get("/api/tokens", list_tokens)
    app.router.add_post("/api/tokens", create_token)
    app.router.add_delete("/api/tokens/{token_id}", revoke_token)
    app.router.add_get("/metrics", metrics)
