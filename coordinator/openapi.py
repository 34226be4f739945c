"""The REST API's route table and the OpenAPI 3.1 document built from it.

    >>> routes = [Route("GET", "/api/health", health, "Server health", Reply("Up.", ref("Health")))]
    >>> register(app, routes, guard=require)   # wires the router (roles enforced) and /api/openapi.json
    >>> build_document(routes)["paths"]["/api/health"]["get"]["summary"]
    'Server health'

One declaration per route feeds both the router and the document: who may call it (`roles`,
enforced by the guard `register` wraps the handler in), its parameters, its body and its replies.
A route can't be documented as public while it is guarded, nor exist undocumented. The campaign
spec's schema is msgspec's, from the one declaration of each field in `coordinator.campaign`
(type, bounds, default, description): the same declarations `CampaignSpec.problems()` checks.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from coordinator.campaign import DEFAULT_CODEC, CampaignSpec
from protocol.codecs import CODEC_NAMES
from protocol.codecs.config import MAX_BLOCK_SIZE, MAX_DCT_CHUNK
from protocol.version import RELEASE_VERSION

__all__ = [
    "COMPONENTS",
    "MAX_ID",
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
    429: "Too many requests from this client, or the server is busy with one; retry after `Retry-After` seconds.",
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
EPSILON_NULL = "null: infinite (no noise, or past 10⁴, where ε means nothing), as JSON has no Infinity."
EPSILON: Schema = {"type": ["number", "null"], "minimum": 0, "description": "An ε spent; " + EPSILON_NULL}


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
                "`admin` or `lead` role, a volunteer account's key (`account`) or a machine's volunteer "
                "token (`machine`); see each operation's `x-roles`. Every error is "
                '`{"error": {"code": ..., "message": ...}}`. A request body is UTF-8 JSON (TOML where an '
                "operation says so) of at most 256 KiB, nested at most 16 levels deep, with integers of at "
                "most 40 digits and text without lone surrogates; any other body is refused with 400 "
                "`bad_request` (413 past the size)."
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
                    "description": (
                        "An admin or project-lead API token (admins create lead tokens); for `account` "
                        "operations a volunteer account's key; for `machine` operations the volunteer token "
                        "a machine got in the protocol's welcome."
                    ),
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

CODEC_BOUNDS: dict[str, Schema] = {
    "block_size": {"type": "integer", "minimum": 1, "maximum": MAX_BLOCK_SIZE},
    "topk_fraction": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "dct_chunk": {"type": "integer", "minimum": 1, "maximum": MAX_DCT_CHUNK},
    "dct_topk": {"type": "integer", "minimum": 1, "maximum": MAX_DCT_CHUNK, "description": "At most dct_chunk."},
}


def codec_schema() -> Schema:
    return {
        "default": DEFAULT_CODEC,
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


# Spec fields that take a codec: a name or a table.
CODEC_FIELDS = ("codec", "download_codec")


def campaign_spec_schema() -> Schema:
    """The JSON Schema of a campaign spec: msgspec's, from the declarations in coordinator.campaign,
    with the sections inlined, `T | None` as a type list, and the codec as a name or a table."""
    (top,), definitions = msgspec.json.schema_components([CampaignSpec], ref_template="{name}")
    schema = _inline(top, definitions)
    for name in CODEC_FIELDS:
        codec = schema["properties"][name]
        schema["properties"][name] = {"description": codec["description"], **codec_schema()}
    return schema


def _inline(schema: Schema, definitions: Mapping[str, Schema]) -> Schema:
    if "$ref" in schema:
        schema = {**definitions[schema["$ref"]], **{k: v for k, v in schema.items() if k != "$ref"}}
    out: Schema = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: _inline(sub, definitions) for name, sub in value.items()}
        elif key == "anyOf" and len(value) == 2 and {"type": "null"} in value:  # T | None
            (arm,) = [sub for sub in value if sub != {"type": "null"}]
            out |= {**arm, "type": [arm["type"], "null"]}
        elif key != "title" and not (key == "required" and not value):
            out[key] = value
    return out


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
                        "checkpoint_bytes": INT,
                        "delta_sha256": NULLABLE_STR,
                        "delta_bytes": NULLABLE_INT,
                        "moments_sha256": NULLABLE_STR,
                        "moments_bytes": NULLABLE_INT,
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
    "ModelRecord": obj(
        {
            "name": STR,
            "model": STR,
            "config": {"type": "object"},
            "parameters": INT,
            "version": INT,
            "tokenizer": STR,
            "tokens_trained": INT,
            "rounds_closed": INT,
            "codec": STR,
            "outer_optimizer": STR,
            "inner": STR,
            "data_source": STR,
            "data_description": STR,
            "dataset": STR,
            "license": STR,
            "description": STR,
            "coordinator": STR,
            "campaign_id": NULLABLE_INT,
            "volunteers": INT,
            "total_credit": NUM,
            "contributors": array(obj({"name": STR, "credit": NUM, "tokens": INT})),
            "losses": array(obj({"version": INT, "tokens": INT, "holdout_loss": NUM})),
            "created_at": STR,
        }
    ),
    "GenerateRequest": {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": 500},
            "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 64, "default": 48},
            "temperature": {
                "type": "number",
                "minimum": 0,
                "maximum": 2,
                "default": 0,
                "description": "0 (greedy), or 0.05 to 2",
            },
            "seed": {"type": "integer", "minimum": 0, "maximum": 2147483647, "default": 0},
        },
        "required": ["prompt"],
        "additionalProperties": False,
    },
    "Generation": obj(
        {
            "version": INT,
            "prompt": STR,
            "text": STR,
            "new_tokens": INT,
            "prompt_tokens": INT,
            "seconds": NUM,
            "stopped": {"type": "string", "enum": ["length", "eos", "time"]},
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
    "PrivacyAccounting": {
        "oneOf": [
            obj({"data": {"type": "string", "enum": ["coordinator"]}}),
            obj(
                {
                    "data": {"type": "string", "enum": ["volunteer"]},
                    "clip_norm": {"type": "number", "description": "C: each update's L2 norm is clipped to this."},
                    "noise_multiplier": {"type": "number", "description": "z; 0 adds no noise and promises nothing."},
                    "noise_std": {
                        "type": "number",
                        "description": "z·2C: the standard deviation of the noise on every coordinate.",
                    },
                    "delta": NUM,
                    "epsilon_budget": {**NULLABLE_NUM, "description": "null: no limit."},
                    "updates_allowed": {
                        **NULLABLE_INT,
                        "description": "Updates each volunteer may send within the budget; null: no limit.",
                    },
                    "epsilon_per_update": {**EPSILON, "description": "The ε of one update. " + EPSILON_NULL},
                    "volunteers": array(obj({"volunteer_id": STR, "name": STR, "updates": INT, "epsilon": EPSILON})),
                    "volunteer_count": {"type": "integer", "description": "Every volunteer that sent an update."},
                    "max_epsilon": {**EPSILON, "description": "The most any volunteer has spent. " + EPSILON_NULL},
                }
            ),
        ]
    },
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
                        "recent_credit": NUM,
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
    "AccountRequest": {
        "type": "object",
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100}},
        "required": ["name"],
        "additionalProperties": False,
    },
    "AccountCreated": obj(
        {
            "id": INT,
            "name": STR,
            "key": {"type": "string", "description": "Signs in as the account; shown once, kept only as a hash."},
        }
    ),
    "Machine": obj(
        {
            "id": STR,
            "name": STR,
            "state": {"type": "string", "enum": ["training", "online", "offline", "paused", "banned"]},
            "paused": BOOL,
            "device": {"type": "string", "description": "Its best device: kind and name."},
            "platform": STR,
            "client_version": STR,
            "last_seen": NUM,
            "credit": NUM,
            "recent_credit": {"type": "number", "description": "Recent average credit: per day, half-life a week."},
            "tokens": INT,
            "units_accepted": INT,
            "current_unit": {
                "oneOf": [
                    obj({"unit_id": STR, "campaign_id": INT, "campaign_name": STR}),
                    {"type": "null"},
                ]
            },
        }
    ),
    "Account": obj(
        {
            "id": INT,
            "name": STR,
            "created_at": NUM,
            "team": {"oneOf": [obj({"id": INT, "name": STR}), {"type": "null"}]},
            "credit": NUM,
            "recent_credit": NUM,
            "machine_count": INT,
            "machines": array(ref("Machine")),
        }
    ),
    "LinkCode": obj({"code": STR, "expires_at": NUM, "expires_in_s": NUM}),
    "AccountList": obj(
        {"accounts": array(obj({"id": INT, "name": STR, "credit": NUM, "recent_credit": NUM, "machine_count": INT}))}
    ),
    "LinkRequest": {
        "type": "object",
        "properties": {"code": {"type": "string", "maxLength": 20, "description": "As shown, e.g. K7QX-M2PD."}},
        "required": ["code"],
        "additionalProperties": False,
    },
    "Linked": obj({"volunteer_id": STR, "account": obj({"id": INT, "name": STR})}),
    "MachineSelf": obj(
        {
            "volunteer_id": STR,
            "name": STR,
            "paused": BOOL,
            "account": {"oneOf": [obj({"id": INT, "name": STR}), {"type": "null"}]},
        }
    ),
    "Unlinked": obj({"id": STR, "unlinked": BOOL}),
    "TeamChoice": {
        "type": "object",
        "properties": {"team_id": {"type": ["integer", "null"], "minimum": 0, "maximum": 10**18 - 1}},
        "required": ["team_id"],
        "additionalProperties": False,
    },
    "TeamRequest": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "description": {"type": ["string", "null"], "maxLength": 500},
        },
        "required": ["name"],
        "additionalProperties": False,
    },
    "Team": obj(
        {
            "id": INT,
            "name": STR,
            "description": STR,
            "created_at": NUM,
            "members": INT,
            "credit": NUM,
            "recent_credit": NUM,
            "machine_count": INT,
        }
    ),
    "TeamList": obj({"teams": array(ref("Team"))}),
    "TeamDetail": {
        "allOf": [
            ref("Team"),
            obj(
                {
                    "accounts": array(
                        obj({"id": INT, "name": STR, "credit": NUM, "recent_credit": NUM, "machine_count": INT})
                    )
                }
            ),
        ]
    },
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


MAX_ID = 10**18 - 1  # ids and versions are SQLite integers: 18 digits always fit its int64


def id_param(name: str, what: str) -> Param:
    return Param(name, "path", {"type": "integer", "minimum": 0, "maximum": MAX_ID}, f"The {what}'s id.")
