"""The REST API (JSON): campaigns, rounds, versions, volunteers, stats, live events and admin actions.

Reads are public; so are published checkpoints (every volunteer can already fetch them) and their
tokenizer. Writes need `Authorization: Bearer TOKEN` with a role: `admin` (everything) or `lead`
(create campaigns; pause, resume and stop their own). Every error is
`{"error": {"code": ..., "message": ...}}`; a bad campaign spec adds `problems` (each one a
sentence) and `field_errors` (the same, keyed by the spec field they name).

`ROUTES` is the single table behind both the router and `/api/openapi.json` (see
`coordinator.openapi`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import platform
import re
import shutil
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coordinator import events
from coordinator.accounts import ACCOUNT_ROLE, ACCOUNT_ROUTES, MACHINE_ROLE, authenticate
from coordinator.appkeys import EVENTS, METRICS, SERVICE
from coordinator.campaign import CampaignSpec, SpecError
from coordinator.engine import model_config_for
from coordinator.exports import EXPORT_FORMATS, ExportBusy, ExportJob, TryItLimits, TryItRefused, campaign_record
from coordinator.metrics import UNMATCHED_ROUTE
from coordinator.openapi import MAX_ID, STR, Handler, Param, Reply, Route, id_param, ref, register
from coordinator.request_body import (
    MAX_BODY_BYTES,
    BadBody,
    decode_body,
    error_response,
)
from coordinator.request_body import json_body as _json_body
from coordinator.request_body import read_body as _body
from coordinator.request_body import retry_later as _retry_later
from coordinator.service import Coordinator
from coordinator.store import BlobNotFound, CampaignRow, StoreError, VersionRow
from coordinator.store.credit import decayed
from protocol.codecs import CODEC_NAMES
from protocol.limits import MAX_ID_LEN
from protocol.version import RELEASE_VERSION as __version__
from training.checkpoint import CheckpointError
from training.data import DataError, TokenDataset
from training.export.card import CampaignRecord
from training.model import PRESETS, ModelConfig, build_model, count_parameters
from training.outer import OUTER_DEFAULTS
from training.privacy_accounting import gaussian_epsilon, releases_within

__all__ = ["MAX_BODY_BYTES", "ROUTES", "add_routes", "campaign_stats", "campaign_summary", "privacy_accounting"]

log = logging.getLogger(__name__)

THROUGHPUT_WINDOW_S = 120.0  # tokens/s is measured over accepted updates of the last two minutes
RECENT_CREDIT_DAYS = 7.0
PRIVACY_ROWS = 1000  # volunteers listed by GET /api/campaigns/{id}/privacy, most updates first
CREDIT_UNIT = "TFLOP of training work (6 × trained parameters × tokens / 1e12), like BOINC's cobblestones"
ID = re.compile(r"[0-9]{1,18}")  # integer ids that fit SQLite's int64 (fullmatch): at most MAX_ID
FIELD = re.compile(r"^([a-z_]+(?:\.[a-z_0-9]+)?)")

STARTED_AT = web.AppKey("started_at", float)
CALLER = web.RequestKey("caller", tuple[int, str, str])  # (token id, role, label) of a guarded request


def _service(request: web.Request) -> Coordinator:
    return request.app[SERVICE]


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    return token or None


def _caller(request: web.Request) -> tuple[int, str, str] | None:
    token = _bearer(request)
    return _service(request).role_for_token(token) if token else None


def require(roles: tuple[str, ...]) -> Callable[[Handler], Handler]:
    """Only callers whose token carries one of `roles`; 401 without a token, 403 with the wrong one."""

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if roles in ((ACCOUNT_ROLE,), (MACHINE_ROLE,)):
                token = _bearer(request)
                if token is None or not await authenticate(request, roles[0], token):
                    whose = "your account's key" if roles[0] == ACCOUNT_ROLE else "this machine's volunteer token"
                    return error_response(401, "unauthorized", f"sign in: send 'Authorization: Bearer <{whose}>'")
                return await handler(request)
            caller = _caller(request)
            if caller is None:
                return error_response(401, "unauthorized", "sign in: send 'Authorization: Bearer <token>'")
            if caller[1] not in roles:
                return error_response(403, "forbidden", f"this needs the {' or '.join(roles)} role")
            request[CALLER] = caller
            return await handler(request)

        return guarded

    return wrap


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every HTTP request in /metrics, by method, route template and final status, with its duration.
    Outermost, so it sees the status `api_errors` turned an exception into."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer (nginx's code for it)
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED_ROUTE
        request.app[METRICS].request_finished(request.method, route, status, time.perf_counter() - started)


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors under /api/ (unknown paths, wrong methods, oversized bodies, bugs)."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        code, message = {
            404: ("not_found", f"no API path {request.path}; the API is described at /api/openapi.json"),
            405: ("method_not_allowed", f"{request.path} doesn't take {request.method}"),
            413: ("too_large", "the body is too large"),
        }.get(error.status, ("bad_request", error.reason))
        response = error_response(error.status, code, message)
        if headers:
            response.headers.update(headers)
        return response
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal", "the coordinator hit an unexpected error; it is in the server log")


def _quoted(text: str | None) -> str:
    """A value from the request, as an error message repeats it: at most 40 characters of it."""
    return str(text) if text is None or len(text) <= 40 else text[:37] + "..."


def _int_or_none(text: str) -> int | None:
    return int(text) if ID.fullmatch(text) else None


def _campaign_or_404(request: web.Request) -> CampaignRow | web.Response:
    campaign_id = _int_or_none(request.match_info["campaign_id"])
    if campaign_id is None:
        return error_response(404, "not_found", "campaign ids are integers")
    row = _service(request).store.campaign(campaign_id)
    if row is None:
        return error_response(404, "not_found", f"no campaign {campaign_id}")
    return row


# campaigns -------------------------------------------------------------------------------------


def _tokens_per_second(service: Coordinator, row: CampaignRow) -> float:
    now = service.clock()
    window = min(THROUGHPUT_WINDOW_S, max(1.0, now - row.created_at))
    return round(service.store.tokens_accepted_since(row.id, now - window) / window, 2)


def campaign_summary(service: Coordinator, row: CampaignRow) -> dict[str, Any]:
    spec = CampaignSpec.from_dict(row.spec)
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
        "progress": 1.0 if row.status == "finished" else min(1.0, row.tokens_trained / spec.token_budget),
        "holdout_loss": service.store.latest_holdout_loss(row.id),
        "tokens_per_second": _tokens_per_second(service, row),
        "owner": row.owner,
        "created_at": row.created_at,
    }


def campaign_stats(service: Coordinator, connected: int, row: CampaignRow) -> dict[str, Any]:
    """What the campaign page shows live: progress, throughput, outcomes and who is online."""
    summary = campaign_summary(service, row)
    counts = service.store.submission_counts(row.id)
    runtime = service.runtimes.get(row.id)
    leased = service.store.units(row.id, ("leased",))
    return {
        "campaign_id": row.id,
        **{
            key: summary[key]
            for key in (
                "status",
                "version",
                "rounds_closed",
                "rounds_total",
                "tokens_trained",
                "token_budget",
                "progress",
                "holdout_loss",
                "tokens_per_second",
            )
        },
        "accepted": counts.get("accepted", 0),
        "rejected": counts.get("rejected", 0),
        "pending": counts.get("pending_replica", 0) + counts.get("pending_check", 0),
        "rejections": service.store.rejection_counts(row.id),
        "open_round": runtime.round.row.number if runtime and runtime.round else None,
        "volunteers_online": connected,
        "volunteers_training": len({u.volunteer_id for u in leased if u.volunteer_id}),
    }


def _model_config(service: Coordinator, row: CampaignRow) -> dict[str, Any] | None:
    runtime = service.runtimes.get(row.id)
    if runtime is not None:
        return dataclasses.asdict(runtime.model_config)
    try:
        dataset = TokenDataset.open(Path(row.dataset_path))
        return dataclasses.asdict(model_config_for(CampaignSpec.from_dict(row.spec), dataset))
    except (DataError, OSError):
        return None


async def health(request: web.Request) -> web.Response:
    service = _service(request)
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "campaigns": len(service.runtimes),
            "volunteers_connected": request.app[METRICS].connected,
            "schema_version": service.store.schema_version,
        }
    )


async def list_campaigns(request: web.Request) -> web.Response:
    service = _service(request)
    return web.json_response({"campaigns": [campaign_summary(service, r) for r in service.store.campaigns()]})


def _field_errors(problems: list[str]) -> list[dict[str, str]]:
    known = CampaignSpec.field_paths()
    out = []
    for problem in problems:
        match = FIELD.match(problem)
        if match and match.group(1) in known:
            out.append({"field": match.group(1), "message": problem})
    return out


async def create_campaign(request: web.Request) -> web.Response:
    try:
        body = await _body(request)
    except OverflowError:
        return error_response(413, "too_large", f"a campaign spec must be under {MAX_BODY_BYTES} bytes")
    service = _service(request)
    try:
        spec = CampaignSpec.from_dict(decode_body(body, request.content_type))
        caller = request[CALLER]
        if service.store.campaign_by_name(spec.name) is not None:
            raise StoreError(f"a campaign named {spec.name!r} already exists; choose another name")
        # Building θ_0 can take a while for the larger presets: off the event loop.
        prepared = await service.workers.run(service.prepare_campaign, spec)
        # Off the loop too: storing θ_0 and loading the campaign's runtime took 0.2 s for `small`.
        campaign_id = await service.workers.run(
            service.register_campaign, spec, prepared, owner=f"{caller[1]}:{caller[0]}"
        )
    except BadBody as error:
        return error_response(400, error.code, str(error))
    except SpecError as error:
        return error_response(
            400, error.code, str(error), problems=error.problems, field_errors=_field_errors(error.problems)
        )
    except StoreError as error:
        return error_response(409, "conflict", str(error), field_errors=[{"field": "name", "message": str(error)}])
    row = service.store.campaign(campaign_id)
    assert row is not None
    events.publish(request.app, {"type": "campaign", "campaign_id": row.id, "status": row.status})
    return web.json_response(campaign_summary(service, row), status=201)


async def get_campaign(request: web.Request) -> web.Response:
    row = _campaign_or_404(request)
    if isinstance(row, web.Response):
        return row
    service = _service(request)
    latest = service.store.version(row.id, row.current_version)
    assert latest is not None
    return web.json_response(
        {
            **campaign_summary(service, row),
            **campaign_stats(service, request.app[METRICS].connected, row),
            "spec": row.spec,
            "model_config": _model_config(service, row),
            "checkpoint": {"version": latest.version, "sha256": latest.checkpoint_sha, "bytes": latest.checkpoint_size},
        }
    )


def _status_action(status: str, allowed_from: tuple[str, ...]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        row = _campaign_or_404(request)
        if isinstance(row, web.Response):
            return row
        caller = request[CALLER]
        if caller[1] != "admin" and row.owner != f"{caller[1]}:{caller[0]}":
            return error_response(403, "forbidden", "only the campaign's owner or an admin can change it")
        if row.status not in allowed_from:
            return error_response(409, "conflict", f"campaign {row.name} is {row.status}; it can't become {status}")
        service = _service(request)
        service.set_status(row.id, status)
        updated = service.store.campaign(row.id)
        assert updated is not None
        events.publish(request.app, {"type": "campaign", "campaign_id": row.id, "status": updated.status})
        return web.json_response(campaign_summary(service, updated))

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
                    "checkpoint_bytes": v.checkpoint_size,
                    "delta_sha256": v.delta_sha,
                    "delta_bytes": v.delta_size,
                    "moments_sha256": v.moments_sha,
                    "moments_bytes": v.moments_size,
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
    service = _service(request)
    recent = service.store.credit_since(row.id, service.clock() - RECENT_CREDIT_DAYS * 86400)
    board = [
        {
            "rank": rank,
            "id": str(entry["id"]),
            "name": str(entry["name"]),
            "tokens": int(entry["tokens"] or 0),
            "units": int(entry["units"] or 0),
            "credit": float(entry["credit"] or 0.0),
            "recent_credit": recent.get(str(entry["id"]), 0.0) / RECENT_CREDIT_DAYS,
        }
        for rank, entry in enumerate(service.store.leaderboard(row.id), start=1)
    ]
    return web.json_response({"leaderboard": board, "credit_unit": CREDIT_UNIT})


def privacy_accounting(service: Coordinator, row: CampaignRow) -> dict[str, Any]:
    """The privacy a campaign on volunteers' own data promises, and what each volunteer has spent of it:
    every update a volunteer submitted is one Gaussian release of their data (docs/protocol.md, units on
    volunteers' own data). An infinite ε (no noise) is null, as is a budget without limit: JSON has
    no Infinity. A campaign on the coordinator's data answers only `{"data": "coordinator"}`."""
    spec = CampaignSpec.from_dict(row.spec)
    if not spec.private:
        return {"data": spec.data}
    terms = spec.privacy
    known: dict[int, float | None] = {}

    def epsilon(updates: int) -> float | None:
        if updates not in known:  # many volunteers share a count: solve each count once
            value = gaussian_epsilon(terms.noise_multiplier, updates, terms.delta)
            known[updates] = None if math.isinf(value) else value
        return known[updates]

    counts = service.store.release_counts(row.id)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    volunteers = []
    for volunteer_id, updates in ranked[:PRIVACY_ROWS]:
        volunteer = service.store.volunteer(volunteer_id)
        name = volunteer.name if volunteer is not None else ""
        volunteers.append({"volunteer_id": volunteer_id, "name": name, "updates": updates, "epsilon": epsilon(updates)})
    budget = terms.epsilon_budget
    return {
        "data": spec.data,
        "clip_norm": terms.clip_norm,
        "noise_multiplier": terms.noise_multiplier,
        "noise_std": terms.noise_multiplier * 2 * terms.clip_norm,
        "delta": terms.delta,
        "epsilon_budget": budget,
        "updates_allowed": None if budget is None else releases_within(budget, terms.delta, terms.noise_multiplier),
        "epsilon_per_update": epsilon(1),
        "volunteers": volunteers,
        "volunteer_count": len(counts),
        "max_epsilon": epsilon(ranked[0][1]) if ranked else 0.0,
    }


async def privacy(request: web.Request) -> web.Response:
    row = _campaign_or_404(request)
    if isinstance(row, web.Response):
        return row
    service = _service(request)
    # One store read per listed volunteer and a bisection per distinct count: off the event loop.
    return web.json_response(await service.workers.run(privacy_accounting, service, row))


async def download_checkpoint(request: web.Request) -> web.StreamResponse:
    found = _campaign_version(request)
    if isinstance(found, web.Response):
        return found
    row, version = found
    try:
        # From S3 that is a download: off the event loop.
        path = await asyncio.to_thread(_service(request).blobs.local_copy, version.checkpoint_sha)
    except BlobNotFound:
        return error_response(404, "not_found", f"the checkpoint of version {version.version} is missing on the server")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{row.name}-v{version.version}.safetensors"',
            "X-Checkpoint-Sha256": version.checkpoint_sha,
            "X-Model-Version": str(version.version),
        },
    )


async def download_tokenizer(request: web.Request) -> web.StreamResponse:
    row = _campaign_or_404(request)
    if isinstance(row, web.Response):
        return row
    path = Path(row.dataset_path) / "tokenizer.json"
    if not path.is_file():
        return error_response(404, "not_found", f"the tokenizer of dataset {row.spec.get('dataset')} is missing")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "application/json",
            "Content-Disposition": f'attachment; filename="{row.name}-tokenizer.json"',
        },
    )


def _campaign_version(request: web.Request) -> tuple[CampaignRow, VersionRow] | web.Response:
    """The campaign in the path and the version `?version=` names (default: its latest), or a 404 answer."""
    row = _campaign_or_404(request)
    if isinstance(row, web.Response):
        return row
    wanted = request.query.get("version")
    number = row.current_version if wanted is None else _int_or_none(wanted)
    version = _service(request).store.version(row.id, number) if number is not None else None
    if version is None:
        return error_response(404, "not_found", f"campaign {row.name} has no version {_quoted(wanted)}")
    return row, version


def _record(service: Coordinator, row: CampaignRow, version: int) -> CampaignRecord | None:
    config = _model_config(service, row)
    if config is None:
        return None
    return campaign_record(
        service.store, row, ModelConfig.from_dict(config), version=version, coordinator=service.config.public_url
    )


async def campaign_card(request: web.Request) -> web.Response:
    found = _campaign_version(request)
    if isinstance(found, web.Response):
        return found
    row, version = found
    service = _service(request)
    record = await service.workers.run(_record, service, row, version.version)
    if record is None:
        return error_response(404, "not_found", f"the dataset of campaign {row.name} is missing on the server")
    return web.json_response(record.to_dict())


async def download_export(request: web.Request) -> web.StreamResponse:
    fmt = request.match_info["format"]
    if fmt not in EXPORT_FORMATS:
        return error_response(
            404, "not_found", f"no export format {_quoted(fmt)}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    found = _campaign_version(request)
    if isinstance(found, web.Response):
        return found
    row, version = found
    service = _service(request)
    try:
        checkpoint = await asyncio.to_thread(service.blobs.local_copy, version.checkpoint_sha)
    except BlobNotFound:
        return error_response(404, "not_found", f"the checkpoint of version {version.version} is missing on the server")
    tokenizer = Path(row.dataset_path) / "tokenizer.json"
    job = ExportJob(row.id, version.version, fmt, row.name, checkpoint, tokenizer)
    path = service.exports.built(job)
    if path is None:
        if version.version != row.current_version and _caller(request) is None:
            return error_response(
                403,
                "forbidden",
                f"anyone may export the latest version ({row.current_version}); earlier ones are built for "
                "project leads and admins (send a token), or download that version's checkpoint",
            )
        if not (checkpoint.is_file() and tokenizer.is_file()):
            return error_response(
                404, "not_found", f"the weights or tokenizer of version {version.version} are missing"
            )
        record = await service.workers.run(_record, service, row, version.version)
        if record is None:
            return error_response(404, "not_found", f"the dataset of campaign {row.name} is missing on the server")
        try:
            path = await service.exports.get(dataclasses.replace(job, record=record.to_dict()))
        except ExportBusy as busy:
            return _retry_later(503, "busy", str(busy), busy.retry_after_s)
        except RuntimeError as error:
            return error_response(
                503, "export_failed", f"the {fmt} export of version {version.version} failed: {error}"
            )
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "application/octet-stream",  # hf: a zip
            "Content-Disposition": f'attachment; filename="{job.filename}"',
            "X-Model-Version": str(version.version),
        },
    )


GENERATE_USAGE = 'send JSON like {"prompt": "def main(", "max_new_tokens": 48, "temperature": 0}'


def _generate_problems(body: dict[str, Any], limits: TryItLimits) -> list[str]:
    prompt, new_tokens = body.get("prompt"), body.get("max_new_tokens", 48)
    temperature, seed = body.get("temperature", 0.0), body.get("seed", 0)
    problems = []
    if not isinstance(prompt, str) or not prompt or len(prompt) > limits.max_prompt_chars:
        problems.append(f"prompt: 1 to {limits.max_prompt_chars} characters of text")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or not 1 <= new_tokens <= limits.max_new_tokens:
        problems.append(f"max_new_tokens: an integer from 1 to {limits.max_new_tokens}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not (temperature == 0 or limits.min_temperature <= temperature <= 2)
    ):
        problems.append(f"temperature: 0 (greedy), or a number from {limits.min_temperature:g} to 2")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        problems.append("seed: an integer from 0 to 2^31 - 1")
    return problems


async def try_generate(request: web.Request) -> web.Response:
    row = _campaign_or_404(request)
    if isinstance(row, web.Response):
        return row
    service = _service(request)
    desk = service.try_it
    try:
        body = await _json_body(request)
    except OverflowError as error:
        return error_response(413, "too_large", str(error))
    except BadBody as error:
        return error_response(400, error.code, f"{error}; {GENERATE_USAGE}")
    if not isinstance(body, dict) or set(body) - {"prompt", "max_new_tokens", "temperature", "seed"}:
        return error_response(
            400, "bad_request", f"fields are prompt, max_new_tokens, temperature, seed; {GENERATE_USAGE}"
        )
    problems = _generate_problems(body, desk.limits)
    if problems:
        return error_response(400, "bad_request", "; ".join(problems), problems=problems)
    version = service.store.version(row.id, row.current_version)
    try:
        checkpoint = await asyncio.to_thread(service.blobs.local_copy, version.checkpoint_sha) if version else None
    except BlobNotFound:
        checkpoint = None
    config = _model_config(service, row)
    tokenizer = Path(row.dataset_path) / "tokenizer.json"
    if version is None or checkpoint is None or config is None or not checkpoint.is_file() or not tokenizer.is_file():
        return error_response(404, "not_found", f"the model of campaign {row.name} is missing on the server")
    model_config = ModelConfig.from_dict(config)
    if count_parameters(build_model(model_config, device="meta")) > desk.limits.max_parameters:
        return error_response(
            409, "conflict", "this model is too large to run on the coordinator; download it instead (Model, above)"
        )
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    network = service.config.sources.source(request.remote, forwarded) or "unknown"  # a prefix: IPv6 hosts have many
    try:
        desk.admit(network)
    except TryItRefused as refused:
        return _retry_later(429, "too_many_requests", str(refused), refused.retry_after_s)
    try:
        answer = await desk.run(
            (row.id, version.version),
            checkpoint,
            tokenizer,
            model_config,
            str(body["prompt"]),
            max_new_tokens=int(body.get("max_new_tokens", 48)),
            temperature=float(body.get("temperature", 0.0)),
            seed=int(body.get("seed", 0)),
        )
    except (CheckpointError, DataError, OSError) as error:
        log.error("Try it could not load version %d of campaign %s: %s", version.version, row.name, error)
        return error_response(503, "model_unavailable", f"the model of version {version.version} could not be loaded")
    finally:
        desk.release()
    return web.json_response(answer)


@cache
def _model_presets() -> list[dict[str, int | str]]:
    out: list[dict[str, int | str]] = []
    for name, config in PRESETS.items():
        parameters = count_parameters(build_model(config, device="meta"))
        out.append(
            {
                "name": name,
                "parameters": parameters,
                "d_model": config.d_model,
                "n_layer": config.n_layer,
                "max_seq_len": config.max_seq_len,
            }
        )
    return out


async def campaign_options(request: web.Request) -> web.Response:
    defaults = CampaignSpec(name="", dataset="").to_dict()
    return web.json_response(
        {
            "defaults": defaults,
            "models": _model_presets(),
            "codecs": list(CODEC_NAMES),
            "optimizers": [{"name": name, "lr": values["lr"]} for name, values in OUTER_DEFAULTS.items()],
        }
    )


# live events -------------------------------------------------------------------------------------


def _busy() -> web.Response:
    return _retry_later(503, "busy", "too many live dashboards are open; try again in a minute", 60)


async def campaign_events(request: web.Request) -> web.StreamResponse:
    row = _campaign_or_404(request)
    if isinstance(row, web.Response):
        return row
    if not events.can_subscribe(request.app):
        return _busy()
    service, metrics, campaign_id = _service(request), request.app[METRICS], row.id

    def snapshot() -> dict[str, object]:
        current = service.store.campaign(campaign_id)
        assert current is not None
        return campaign_stats(service, metrics.connected, current)

    return await events.stream(
        request, snapshot=snapshot, key=campaign_id, wants=lambda e: e.get("campaign_id") == campaign_id
    )


async def all_events(request: web.Request) -> web.StreamResponse:
    if not events.can_subscribe(request.app):
        return _busy()
    app = request.app
    return await events.stream(request, snapshot=lambda: _stats(app), key="server", wants=lambda e: True)


# volunteers, stats, server ----------------------------------------------------------------------


async def list_volunteers(request: web.Request) -> web.Response:
    rows = _service(request).store.volunteers()
    now = _service(request).clock()
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
                    "recent_credit": round(decayed(v.recent_credit, v.recent_credit_at, now), 6),
                }
                for v in rows
            ]
        }
    )


def _ban_action(banned: bool) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        volunteer_id = request.match_info["volunteer_id"]
        if not _service(request).store.set_banned(volunteer_id, banned):
            return error_response(404, "not_found", f"no volunteer {_quoted(volunteer_id)}")
        return web.json_response({"id": volunteer_id, "banned": banned})

    return handler


def _stats(app: web.Application) -> dict[str, object]:
    service = app[SERVICE]
    volunteers, credit = service.store.volunteer_totals()
    campaigns = service.store.campaigns()
    return {
        "campaigns": len(campaigns),
        "campaigns_active": sum(1 for c in campaigns if c.status == "active"),
        "volunteers": volunteers,
        "volunteers_connected": app[METRICS].connected,
        "tokens_trained": sum(c.tokens_trained for c in campaigns),
        "credit": credit,
    }


async def stats(request: web.Request) -> web.Response:
    return web.json_response(_stats(request.app))


async def server_health(request: web.Request) -> web.Response:
    app = request.app
    service = _service(request)
    data_dir = service.config.data_dir
    disk = shutil.disk_usage(data_dir)
    database = data_dir / "coordinator.sqlite3"
    by_status: dict[str, int] = {}
    for row in service.store.campaigns():
        by_status[row.status] = by_status.get(row.status, 0) + 1
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "python": platform.python_version(),
            "uptime_s": round(time.time() - app[STARTED_AT], 1),
            "schema_version": service.store.schema_version,
            "campaigns": by_status,
            "volunteers": service.store.volunteer_totals()[0],
            "volunteers_connected": app[METRICS].connected,
            "eval_queue": len(service.eval_queue),
            "event_subscribers": len(app[EVENTS]),
            "frames": dict(app[METRICS].frames),
            "database_bytes": sum(
                p.stat().st_size for p in (database, database.with_name(database.name + "-wal")) if p.exists()
            ),
            "disk_free_bytes": disk.free,
            "disk_total_bytes": disk.total,
        }
    )


async def list_datasets(request: web.Request) -> web.Response:
    service = _service(request)
    names = service.dataset_names()
    details = []
    for name in names:
        info: dict[str, object] = {
            "name": name,
            "train_tokens": None,
            "holdout_tokens": None,
            "vocab_size": None,
            "tokenizer": None,
        }
        try:
            manifest = TokenDataset.open(service.dataset_path(name)).manifest
            info.update(
                train_tokens=manifest.train_tokens,
                holdout_tokens=manifest.holdout_tokens,
                vocab_size=manifest.vocab_size,
                tokenizer=manifest.tokenizer,
            )
        except (DataError, SpecError, OSError):
            pass  # listed by name; its manifest can't be read right now
        details.append(info)
    return web.json_response({"datasets": names, "details": details})


async def me(request: web.Request) -> web.Response:
    token_id, role, label = request[CALLER]
    return web.json_response({"id": token_id, "role": role, "label": label})


# tokens --------------------------------------------------------------------------------------------


async def create_token(request: web.Request) -> web.Response:
    usage = 'send JSON like {"label": "alice", "role": "lead"}'
    try:
        body = await _json_body(request)
    except OverflowError as error:
        return error_response(413, "too_large", str(error))
    except BadBody as error:
        return error_response(400, error.code, f"{error}; {usage}")
    if not isinstance(body, dict):
        return error_response(400, "bad_request", usage)
    unknown = sorted(set(body) - {"label", "role"})
    if unknown:
        return error_response(400, "bad_request", f"unknown fields {', '.join(unknown)}; {usage}")
    label, role = body.get("label"), body.get("role", "lead")
    if not isinstance(label, str) or not label.strip() or len(label) > 100:
        return error_response(400, "bad_request", "label: give the token a name of 1-100 characters")
    if role not in ("lead", "admin"):
        return error_response(400, "bad_request", "role must be lead or admin")
    label = label.strip()
    token_id, token = _service(request).create_api_token(role, label)
    return web.json_response({"id": token_id, "role": role, "label": label, "token": token}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    tokens = [{**t, "revoked": bool(t["revoked"])} for t in _service(request).store.api_tokens()]
    return web.json_response({"tokens": tokens})


async def revoke_token(request: web.Request) -> web.Response:
    token_id = _int_or_none(request.match_info["token_id"])
    if token_id is None:
        return error_response(404, "not_found", "token ids are integers")
    if not _service(request).store.revoke_api_token(token_id):
        return error_response(404, "not_found", f"no token {token_id}")
    return web.json_response({"id": token_id, "revoked": True})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "X-Content-Type-Options": "nosniff"})


# the table -----------------------------------------------------------------------------------------

LEAD = ("admin", "lead")
ADMIN = ("admin",)
CAMPAIGN = id_param("campaign_id", "campaign")
VOLUNTEER = Param(
    "volunteer_id", "path", {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN}, "The volunteer's id."
)
SUMMARY = Reply("The campaign, as listed.", ref("CampaignSummary"))


def _status_route(action: str, status: str, allowed_from: tuple[str, ...]) -> Route:
    return Route(
        "POST",
        f"/api/campaigns/{{campaign_id}}/{action}",
        _status_action(status, allowed_from),
        f"{action.capitalize()} a campaign",
        SUMMARY,
        roles=LEAD,
        params=(CAMPAIGN,),
        errors=(409,),
        description=f"Allowed from {' or '.join(allowed_from)}; a lead may only change its own campaigns.",
        operation_id=f"{action}_campaign",
    )


def _json(description: str, schema: str) -> Reply:
    return Reply(description, ref(schema))


VERSION_QUERY = Param(
    "version", "query", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, "A version; default: the latest.", False
)
CREATE_NOTES = (
    "The body is a campaign spec as JSON (or the same as TOML with Content-Type application/toml). "
    "`dataset` is one of the names GET /api/datasets lists (the datasets the admin serves), never a path. "
    "A spec with problems gets 400 listing every one; a taken name gets 409."
)
CHECKPOINT_NOTES = (
    "Public: every volunteer can already fetch published checkpoints. The model's shape is "
    "`model_config` in GET /api/campaigns/{campaign_id}."
)
CAMPAIGN_STREAM = Reply(
    "An event stream: `stats` (CampaignStats) every few seconds, `version` when a version's holdout loss is "
    "known, `campaign` on a status change, `resync` after lost events.",
    STR,
    "text/event-stream",
)
SERVER_STREAM = Reply(
    "An event stream: `stats` (Stats) every few seconds, plus each campaign's `version` and `campaign` events.",
    STR,
    "text/event-stream",
)
WEIGHTS = Reply(
    "The weights of the latest version (or `version`) as safetensors.",
    {"type": "string", "format": "binary"},
    "application/octet-stream",
)
TOKENIZER = Reply("The campaign dataset's tokenizer (Hugging Face tokenizers format).", {"type": "object"})
EXPORT_FILE = Reply(
    "The file: a zip of the Hugging Face folder (hf), a GGUF file, or an ONNX model.",
    {"type": "string", "format": "binary"},
    "application/octet-stream",
)
EXPORT_FORMAT = Param(
    "format",
    "path",
    {"type": "string", "enum": list(EXPORT_FORMATS)},
    "; ".join(f"{k}: {v}" for k, v in EXPORT_FORMATS.items()),
)
EXPORT_NOTES = (
    "Public for the latest version, like the checkpoint; earlier versions need a token (403 otherwise). "
    "Built on the first request for a version and format (seconds for small models; the request waits up "
    "to two minutes), then served from the coordinator's disk, where each campaign keeps its last three "
    "versions' exports. 503 busy (with Retry-After): the build is still running or too many are queued. "
    "503 export_failed says why a build failed; it is not retried for 5 minutes."
)
GENERATE_NOTES = (
    "Public and rate-limited: one generation at a time on the server and 10 per minute per client network "
    "(429 with Retry-After otherwise). The prompt is at most 500 characters; at most 64 new tokens and 5 "
    "seconds. temperature 0 is greedy; from 0.05 to 2, sampling from the 40 likeliest tokens with `seed`. "
    "Models over 200M parameters are not run on the coordinator (409)."
)
PRIVACY_NOTES = (
    "For a campaign with data = volunteer: each volunteer's update is clipped to L2 norm clip_norm (C) and gets "
    "Gaussian noise of standard deviation noise_std = noise_multiplier·2C on their device, so k updates are "
    "(ε, δ)-differentially private with respect to all of that volunteer's data, ε from the Gaussian-DP "
    "composition of k releases (docs/protocol.md). Every update a volunteer submitted counts, whatever became "
    f"of it. Lists the {PRIVACY_ROWS} volunteers with the most updates, ties by id; volunteer_count counts them "
    "all. Every ε here is a number or null, and null means infinite (JSON has no Infinity): an ε spent is "
    "infinite without noise (noise_multiplier 0: nothing is promised) or past 10⁴; an epsilon_budget of null is "
    "no limit, and updates_allowed is null then too. A campaign on the coordinator's data answers only `data`: "
    "coordinator."
)
METRICS_TEXT = Reply("The Prometheus text exposition format.", STR, "text/plain")
C = "/api/campaigns/{campaign_id}"

ROUTES: list[Route] = [
    Route("GET", "/api/health", health, "Is the server up", _json("Up.", "Health"), tag="server"),
    Route("GET", "/api/campaigns", list_campaigns, "List campaigns", _json("Every campaign.", "CampaignList")),
    Route(
        "POST",
        "/api/campaigns",
        create_campaign,
        "Post a campaign",
        _json("The new campaign.", "CampaignSummary"),
        roles=LEAD,
        body=ref("CampaignSpec"),
        status=201,
        errors=(409,),
        description=CREATE_NOTES,
    ),
    Route(
        "GET",
        "/api/campaign-options",
        campaign_options,
        "Choices and defaults for a campaign spec",
        _json("Model presets, codecs, outer optimizers and the spec's defaults.", "CampaignOptions"),
        tag="campaigns",
    ),
    Route(
        "GET",
        C,
        get_campaign,
        "A campaign: spec and live stats",
        _json("The campaign.", "CampaignDetail"),
        params=(CAMPAIGN,),
    ),
    _status_route("pause", "paused", ("active",)),
    _status_route("resume", "active", ("paused",)),
    _status_route("stop", "stopped", ("active", "paused")),
    Route(
        "GET",
        C + "/versions",
        list_versions,
        "Model versions and holdout loss",
        _json("Oldest first.", "VersionList"),
        params=(CAMPAIGN,),
    ),
    Route("GET", C + "/rounds", list_rounds, "Rounds", _json("Oldest first.", "RoundList"), params=(CAMPAIGN,)),
    Route(
        "GET",
        C + "/leaderboard",
        leaderboard,
        "Contributors by credit",
        _json("The top 50; recent_credit is credit per day over the last 7 days.", "Leaderboard"),
        params=(CAMPAIGN,),
    ),
    Route(
        "GET",
        C + "/privacy",
        privacy,
        "Privacy promised and spent (campaigns on volunteers' own data)",
        _json("The campaign's privacy terms and each volunteer's ε spent.", "PrivacyAccounting"),
        params=(CAMPAIGN,),
        description=PRIVACY_NOTES,
    ),
    Route(
        "GET",
        C + "/checkpoint",
        download_checkpoint,
        "Download model weights (safetensors)",
        WEIGHTS,
        params=(CAMPAIGN, VERSION_QUERY),
        description=CHECKPOINT_NOTES,
    ),
    Route("GET", C + "/tokenizer", download_tokenizer, "Download the tokenizer", TOKENIZER, params=(CAMPAIGN,)),
    Route(
        "GET",
        C + "/card",
        campaign_card,
        "The records a model card is made of",
        _json(
            "Preset, shape, tokens, rounds, optimizers, data source, license, credit and holdout losses.", "ModelRecord"
        ),
        params=(CAMPAIGN, VERSION_QUERY),
        tag="models",
    ),
    Route(
        "GET",
        C + "/exports/{format}",
        download_export,
        "Download the model as Hugging Face, GGUF or ONNX",
        EXPORT_FILE,
        params=(CAMPAIGN, EXPORT_FORMAT, VERSION_QUERY),
        errors=(403, 503),
        description=EXPORT_NOTES,
        tag="models",
    ),
    Route(
        "POST",
        C + "/generate",
        try_generate,
        "Try the model: continue a prompt",
        _json("The continuation from the latest version.", "Generation"),
        params=(CAMPAIGN,),
        body=ref("GenerateRequest"),
        errors=(409, 429, 503),
        description=GENERATE_NOTES,
        tag="models",
    ),
    Route(
        "GET",
        C + "/events",
        campaign_events,
        "Live updates of a campaign (Server-Sent Events)",
        CAMPAIGN_STREAM,
        params=(CAMPAIGN,),
        errors=(503,),
        streaming=True,
        tag="live",
    ),
    Route(
        "GET",
        "/api/events",
        all_events,
        "Live updates of every campaign (Server-Sent Events)",
        SERVER_STREAM,
        errors=(503,),
        streaming=True,
        tag="live",
    ),
    Route("GET", "/api/volunteers", list_volunteers, "Volunteers by credit", _json("The top 1000.", "VolunteerList")),
    Route(
        "POST",
        "/api/volunteers/{volunteer_id}/ban",
        _ban_action(True),
        "Ban a volunteer",
        _json("Banned.", "BanResult"),
        roles=ADMIN,
        params=(VOLUNTEER,),
        operation_id="ban_volunteer",
    ),
    Route(
        "POST",
        "/api/volunteers/{volunteer_id}/unban",
        _ban_action(False),
        "Lift a volunteer's ban",
        _json("Not banned.", "BanResult"),
        roles=ADMIN,
        params=(VOLUNTEER,),
        operation_id="unban_volunteer",
    ),
    Route("GET", "/api/stats", stats, "Totals over the server", _json("Totals.", "Stats"), tag="server"),
    Route(
        "GET",
        "/api/server",
        server_health,
        "Server health in detail",
        _json("Uptime, queues, disk and database size.", "ServerHealth"),
        roles=ADMIN,
    ),
    Route(
        "GET",
        "/api/datasets",
        list_datasets,
        "Datasets campaigns may use",
        _json("The prepared datasets this coordinator serves.", "Datasets"),
        roles=LEAD,
        tag="campaigns",
    ),
    Route("GET", "/api/me", me, "Who this token is", _json("Its id, role and label.", "Me"), roles=LEAD, tag="tokens"),
    Route("GET", "/api/tokens", list_tokens, "API tokens", _json("Never the secrets.", "TokenList"), roles=ADMIN),
    Route(
        "POST",
        "/api/tokens",
        create_token,
        "Create an API token",
        _json("The new token; its secret is shown only here.", "TokenCreated"),
        roles=ADMIN,
        body=ref("TokenRequest"),
        status=201,
    ),
    Route(
        "DELETE",
        "/api/tokens/{token_id}",
        revoke_token,
        "Revoke an API token",
        _json("Revoked.", "RevokeResult"),
        roles=ADMIN,
        params=(id_param("token_id", "token"),),
    ),
    Route("GET", "/metrics", metrics, "Prometheus metrics", METRICS_TEXT, tag="server"),
    *ACCOUNT_ROUTES,
]


def add_routes(app: web.Application) -> list[Route]:
    """Wire the API into `app`; returns the route table, /api/openapi.json included."""
    app[STARTED_AT] = time.time()
    app[events.SNAPSHOTS] = events.SharedSnapshots()
    app[METRICS].read_campaigns(lambda: app[SERVICE])
    app.middlewares.append(count_requests)
    app.middlewares.append(api_errors)
    app.on_shutdown.append(events.end_streams)
    return register(app, ROUTES, guard=require)
