"""The REST API's route table and the OpenAPI 3.1 document built from it.

    >>> routes = [Route("GET", "/api/health", health, "Server health", Reply("Up.", ref("Health")))]
    >>> register(app, routes, guard=require)   # wires the router (roles enforced) and /api/openapi.json
    >>> build_document(routes)["paths"]["/api/health"]["get"]["summary"]
    'Server health'

One declaration per route feeds both the router and the document: who may call it (`roles`,
enforced by the guard `register` wraps the handler in), its parameters, its body and its replies.
A route can't be documented as public while it is guarded, nor exist undocumented. The campaign
spec's schema is derived from `coordinator.campaign`'s dataclasses (fields, types, defaults); its
bounds live in `SPEC_BOUNDS`, which tests hold against `CampaignSpec.problems()`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from coordinator.campaign import NAME_PATTERN, CampaignSpec
from protocol.codecs import CODEC_NAMES
from protocol.codecs.config import MAX_BLOCK_SIZE, MAX_DCT_CHUNK
from protocol.version import RELEASE_VERSION
from training.model import PRESETS
from training.outer import OUTER_DEFAULTS

__all__ = [
    "COMPONENTS",
    "SPEC_BOUNDS",
    "Handler",
    "Param",
    "Reply",
    "Route",
    "array",
    "build_document",
    "campaign_spec_schema",
    "document_route",
    "id_param",
    "obj",
    "ref",
    "register",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Guard = Callable[[tuple[str, ...]], Callable[[Handler], Handler]]
Schema = dict[str, Any]

OPENAPI_PATH = "/api/openapi.json"

ERROR_TEXT = {
    400: "The request is malformed or a value is invalid; `problems` lists each one.",
    401: "No or unknown token: send `Authorization: Bearer <token>`.",
    403: "The token's role may not do this.",
    404: "No such resource.",
    409: "The resource is in a state that doesn't allow this.",
    413: "The body is too large.",
    503: "The server is at capacity for this; retry later.",
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def obj(properties: Mapping[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """An object whose properties are all required except `optional`."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": [name for name in properties if name not in optional],
    }


INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
STR: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
NULLABLE_NUM: Schema = {"type": ["number", "null"]}
NULLABLE_INT: Schema = {"type": ["integer", "null"]}
NULLABLE_STR: Schema = {"type": ["string", "null"]}
COUNTS: Schema = {"type": "object", "additionalProperties": {"type": "integer"}}


@dataclass(frozen=True)
class Reply:
    description: str
    schema: Schema | None = None
    content_type: str = "application/json"


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path | query
    schema: Schema
    description: str
    required: bool = True


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    ok: Reply
    roles: tuple[str, ...] = ()  # empty: anyone
    params: tuple[Param, ...] = ()
    body: Schema | None = None
    status: int = 200
    errors: tuple[int, ...] = ()  # beyond those implied: 400 with a body, 401/403 with roles, 404 with a path id
    description: str = ""
    streaming: bool = False  # a long-lived response (Server-Sent Events)
    operation_id: str = ""  # default: the handler's name
    tag: str = ""  # default: the path's second segment (/api/<tag>/...)

    @property
    def name(self) -> str:
        return self.operation_id or self.handler.__name__

    @property
    def group(self) -> str:
        parts = self.path.strip("/").split("/")
        return self.tag or parts[min(1, len(parts) - 1)]

    def error_statuses(self) -> list[int]:
        implied = set(self.errors)
        if self.body is not None:
            implied |= {400, 413}
        if self.roles:
            implied |= {401, 403}
        if any(p.where == "path" for p in self.params):
            implied.add(404)
        return sorted(implied)


def register(app: web.Application, routes: list[Route], *, guard: Guard) -> list[Route]:
    """Add every route to the router (guarded by its roles) plus the document at /api/openapi.json.

    Returns the full table, the document's own route included."""
    table = [*routes, document_route()]
    document = build_document(table)
    for route in table:
        declared = {p.name for p in route.params if p.where == "path"}
        in_path = set(re.findall(r"{(\w+)", route.path))
        if declared != in_path:
            raise ValueError(f"{route.method} {route.path}: path parameters {in_path} but declared {declared}")
        handler = _serve_document(document) if route.path == OPENAPI_PATH else route.handler
        if route.roles:
            handler = guard(route.roles)(handler)
        app.router.add_route(route.method, route.path, handler, name=route.name)
    return table


def document_route() -> Route:
    """GET /api/openapi.json itself (`register` swaps in the handler that serves the document)."""

    async def placeholder(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound()  # never served: the document needs the whole table first

    document = Reply("The OpenAPI 3.1 description of this API.", {"type": "object"})
    return Route("GET", OPENAPI_PATH, placeholder, "This document", document, operation_id="openapi", tag="server")


def _serve_document(document: Schema) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        return web.json_response(document, headers={"Access-Control-Allow-Origin": "*"})

    return serve


def build_document(routes: list[Route]) -> Schema:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "operationId": route.name,
            "summary": route.summary,
            "tags": [route.group],
        }
        if route.description:
            operation["description"] = route.description
        if route.roles:
            operation["security"] = [{"bearer": []}]
            operation["x-roles"] = list(route.roles)
        else:
            operation["security"] = []
        if route.params:
            operation["parameters"] = [
                {
                    "name": p.name,
                    "in": p.where,
                    "required": p.required or p.where == "path",
                    "description": p.description,
                    "schema": p.schema,
                }
                for p in route.params
            ]
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body}}}
        responses: dict[str, Any] = {str(route.status): _reply(route.ok)}
        for status in route.error_statuses():
            responses[str(status)] = _reply(Reply(ERROR_TEXT[status], ref("Error")))
        operation["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Commonweights coordinator",
            "version": RELEASE_VERSION,
            "description": (
                "Campaigns, versions, rounds, volunteers, stats and admin actions of a Commonweights "
                "coordinator. Reads are public; writes need `Authorization: Bearer <token>` with the "
                "`admin` or `lead` role (see each operation's `x-roles`). Every error is "
                '`{"error": {"code": ..., "message": ...}}`.'
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An admin or project-lead API token (admins create lead tokens).",
                }
            },
        },
    }


def _reply(reply: Reply) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.schema is not None:
        out["content"] = {reply.content_type: {"schema": reply.schema}}
    return out


# The campaign spec -------------------------------------------------------------------------------

SPEC_BOUNDS: dict[str, Schema] = {
    "name": {"pattern": NAME_PATTERN.pattern},
    "dataset": {"minLength": 1, "maxLength": 256},
    "model": {"enum": list(PRESETS)},
    "token_budget": {"minimum": 1},
    "seed": {"minimum": 0, "maximum": 2**63 - 1},
    "shard_plan": {"pattern": "^(full|groups:[1-9][0-9]{0,3})$"},
    "description": {"maxLength": 2000},
    "inner.steps": {"minimum": 1, "maximum": 100_000},
    "inner.batch_size": {"minimum": 1},
    "inner.seq_len": {"minimum": 1, "maximum": 65_536},
    "inner.grad_accum": {"minimum": 1},
    "inner.lr": {"exclusiveMinimum": 0},
    "inner.min_lr_ratio": {"minimum": 0, "maximum": 1},
    "inner.warmup_steps": {"minimum": 0},
    "inner.weight_decay": {"minimum": 0},
    "inner.grad_clip": {"minimum": 0},
    "inner.beta1": {"minimum": 0, "exclusiveMaximum": 1},
    "inner.beta2": {"minimum": 0, "exclusiveMaximum": 1},
    "outer.optimizer": {"enum": list(OUTER_DEFAULTS)},
    "outer.lr": {"exclusiveMinimum": 0},
    "outer.momentum": {"minimum": 0, "exclusiveMaximum": 1},
    "rounds.units_per_round": {"minimum": 1, "maximum": 10_000},
    "rounds.min_accepted": {"minimum": 1},
    "rounds.deadline_s": {"exclusiveMinimum": 0},
    "rounds.lease_s": {"exclusiveMinimum": 0},
    "rounds.staleness_bound": {"minimum": 0},
    "validation.replication_rate": {"minimum": 0, "maximum": 1},
    "validation.replication_rtol": {"exclusiveMinimum": 0},
    "validation.norm_mad_k": {"exclusiveMinimum": 0},
    "validation.min_cosine": {"minimum": -1, "maximum": 1},
}

SPEC_NOTES: dict[str, str] = {
    "name": "Unique on this coordinator.",
    "dataset": "A prepared dataset this coordinator knows (GET /api/datasets).",
    "model": "A model preset.",
    "token_budget": "Training tokens the campaign may spend; it finishes when they are spent.",
    "inner.steps": "H: AdamW steps per work unit.",
    "inner.seq_len": "At most the model preset's context length.",
    "outer.lr": "Omit (or null) for the optimizer's default.",
    "rounds.min_accepted": "At most rounds.units_per_round.",
}

CODEC_BOUNDS: dict[str, Schema] = {
    "block_size": {"type": "integer", "minimum": 1, "maximum": MAX_BLOCK_SIZE},
    "topk_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "dct_chunk": {"type": "integer", "minimum": 1, "maximum": MAX_DCT_CHUNK},
    "dct_topk": {"type": "integer", "minimum": 1, "maximum": MAX_DCT_CHUNK, "description": "At most dct_chunk."},
}


def codec_schema() -> Schema:
    return {
        "description": "A codec name, or a table with its name and parameters.",
        "default": "int8",
        "oneOf": [
            {"type": "string", "enum": list(CODEC_NAMES)},
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": list(CODEC_NAMES)}, **CODEC_BOUNDS},
                "required": ["name"],
                "additionalProperties": False,
            },
        ],
    }


def campaign_spec_schema() -> Schema:
    """The JSON Schema of a campaign spec, from CampaignSpec's dataclass fields plus SPEC_BOUNDS."""
    schema = _dataclass_schema(CampaignSpec, "")
    schema["description"] = "A campaign spec: the JSON form of the TOML that `commonweights campaign post` sends."
    return schema


def _dataclass_schema(kind: type[Any], prefix: str) -> Schema:
    hints = typing.get_type_hints(kind)
    properties: dict[str, Schema] = {}
    required: list[str] = []
    for f in dataclasses.fields(kind):
        path = prefix + f.name
        hint = hints[f.name]
        if f.name == "codec":
            properties[f.name] = codec_schema()
            continue
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            properties[f.name] = _dataclass_schema(hint, path + ".")
            continue
        schema = _type_schema(hint)
        if f.default is not dataclasses.MISSING:
            schema["default"] = f.default
        elif f.default_factory is dataclasses.MISSING:
            required.append(f.name)
        schema.update(SPEC_BOUNDS.get(path, {}))
        if path in SPEC_NOTES:
            schema["description"] = SPEC_NOTES[path]
        properties[f.name] = schema
    out: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def _type_schema(hint: Any) -> Schema:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [_type_schema(arg)["type"] for arg in typing.get_args(hint)]
        return {"type": kinds}
    names = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}
    if hint not in names:
        raise TypeError(f"no JSON Schema type for {hint!r}")
    return {"type": names[hint]}


# Replies -----------------------------------------------------------------------------------------

CAMPAIGN_STATUS: Schema = {"type": "string", "enum": ["active", "paused", "finished", "stopped"]}

CAMPAIGN_SUMMARY = obj(
    {
        "id": INT,
        "name": STR,
        "description": STR,
        "status": CAMPAIGN_STATUS,
        "model": STR,
        "dataset": STR,
        "codec": STR,
        "version": INT,
        "rounds_closed": INT,
        "rounds_total": INT,
        "tokens_trained": INT,
        "token_budget": INT,
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "holdout_loss": NULLABLE_NUM,
        "tokens_per_second": NUM,
        "owner": STR,
        "created_at": NUM,
    }
)

CAMPAIGN_STATS = obj(
    {
        "campaign_id": INT,
        "status": CAMPAIGN_STATUS,
        "version": INT,
        "rounds_closed": INT,
        "rounds_total": INT,
        "tokens_trained": INT,
        "token_budget": INT,
        "progress": NUM,
        "holdout_loss": NULLABLE_NUM,
        "tokens_per_second": NUM,
        "accepted": INT,
        "rejected": INT,
        "pending": INT,
        "rejections": COUNTS,
        "open_round": NULLABLE_INT,
        "volunteers_online": INT,
        "volunteers_training": INT,
    }
)

COMPONENTS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": obj(
                {
                    "code": STR,
                    "message": STR,
                    "problems": array(STR),
                    "field_errors": array(obj({"field": STR, "message": STR})),
                },
                optional=("problems", "field_errors"),
            )
        }
    ),
    "CampaignSpec": campaign_spec_schema(),
    "CampaignSummary": CAMPAIGN_SUMMARY,
    "CampaignStats": CAMPAIGN_STATS,
    "CampaignDetail": {
        "allOf": [
            ref("CampaignSummary"),
            ref("CampaignStats"),
            obj(
                {
                    "spec": {"type": "object"},
                    "model_config": {"type": ["object", "null"]},
                    "checkpoint": obj({"version": INT, "sha256": STR, "bytes": INT}),
                }
            ),
        ]
    },
    "CampaignList": obj({"campaigns": array(ref("CampaignSummary"))}),
    "CampaignOptions": obj(
        {
            "defaults": {"type": "object"},
            "models": array(obj({"name": STR, "parameters": INT, "d_model": INT, "n_layer": INT, "max_seq_len": INT})),
            "codecs": array(STR),
            "optimizers": array(obj({"name": STR, "lr": NUM})),
        }
    ),
    "VersionList": obj(
        {
            "versions": array(
                obj(
                    {
                        "version": INT,
                        "holdout_loss": NULLABLE_NUM,
                        "tokens": INT,
                        "updates": INT,
                        "checkpoint_sha256": STR,
                        "created_at": NUM,
                    }
                )
            )
        }
    ),
    "RoundList": obj(
        {
            "rounds": array(
                obj(
                    {
                        "number": INT,
                        "version": INT,
                        "status": {"type": "string", "enum": ["open", "closed"]},
                        "opened_at": NUM,
                        "deadline": NUM,
                        "closed_at": NULLABLE_NUM,
                        "close_reason": NULLABLE_STR,
                    }
                )
            )
        }
    ),
    "Leaderboard": obj(
        {
            "leaderboard": array(
                obj(
                    {
                        "rank": INT,
                        "id": STR,
                        "name": STR,
                        "tokens": INT,
                        "units": INT,
                        "credit": NUM,
                        "recent_credit": NUM,
                    }
                )
            ),
            "credit_unit": STR,
        }
    ),
    "VolunteerList": obj(
        {
            "volunteers": array(
                obj(
                    {
                        "id": STR,
                        "name": STR,
                        "credit": NUM,
                        "tokens": INT,
                        "units_accepted": INT,
                        "units_rejected": INT,
                        "last_seen": NUM,
                        "banned": BOOL,
                    }
                )
            )
        }
    ),
    "BanResult": obj({"id": STR, "banned": BOOL}),
    "Stats": obj(
        {
            "campaigns": INT,
            "campaigns_active": INT,
            "volunteers": INT,
            "volunteers_connected": INT,
            "tokens_trained": INT,
            "credit": NUM,
        }
    ),
    "Health": obj(
        {
            "status": STR,
            "version": STR,
            "campaigns": INT,
            "volunteers_connected": INT,
            "schema_version": INT,
        }
    ),
    "ServerHealth": obj(
        {
            "status": STR,
            "version": STR,
            "python": STR,
            "uptime_s": NUM,
            "schema_version": INT,
            "campaigns": COUNTS,
            "volunteers": INT,
            "volunteers_connected": INT,
            "eval_queue": INT,
            "event_subscribers": INT,
            "frames": COUNTS,
            "database_bytes": INT,
            "disk_free_bytes": INT,
            "disk_total_bytes": INT,
        }
    ),
    "Datasets": obj(
        {
            "datasets": array(STR),
            "details": array(
                obj(
                    {
                        "name": STR,
                        "train_tokens": NULLABLE_INT,
                        "holdout_tokens": NULLABLE_INT,
                        "vocab_size": NULLABLE_INT,
                        "tokenizer": NULLABLE_STR,
                    }
                )
            ),
        }
    ),
    "Me": obj({"id": INT, "role": {"type": "string", "enum": ["admin", "lead"]}, "label": STR}),
    "TokenRequest": {
        "type": "object",
        "properties": {
            "label": {"type": "string", "minLength": 1, "maxLength": 100},
            "role": {"type": "string", "enum": ["lead", "admin"], "default": "lead"},
        },
        "required": ["label"],
        "additionalProperties": False,
    },
    "TokenCreated": obj(
        {
            "id": INT,
            "role": STR,
            "label": STR,
            "token": {"type": "string", "description": "Shown once; the server keeps only its hash."},
        }
    ),
    "TokenList": obj(
        {"tokens": array(obj({"id": INT, "role": STR, "label": STR, "created_at": NUM, "revoked": BOOL}))}
    ),
    "RevokeResult": obj({"id": INT, "revoked": BOOL}),
}


def id_param(name: str, what: str) -> Param:
    return Param(name, "path", {"type": "integer", "minimum": 0}, f"The {what}'s id.")
