"""The OpenAPI document: valid, complete against the router, and faithful to the campaign spec's rules."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from coordinator.app import create_app
from coordinator.campaign import (
    CampaignSpec,
    InnerSettings,
    OuterSettings,
    PrivacySettings,
    RoundSettings,
    ValidationSettings,
)
from coordinator.dashboard import PAGES
from coordinator.openapi import CODEC_BOUNDS, CODEC_FIELDS, OPENAPI_PATH, campaign_spec_schema
from coordinator.rest import ROUTES
from coordinator.service import CoordinatorConfig
from protocol.codecs import CodecConfig, CodecError
from training.model import PRESETS
from training.outer import OUTER_DEFAULTS

SECTIONS: dict[str, type[msgspec.Struct]] = {
    "inner": InnerSettings,
    "outer": OuterSettings,
    "rounds": RoundSettings,
    "validation": ValidationSettings,
    "privacy": PrivacySettings,
}
# The volunteers' socket, the dashboard's assets, and the routes replicas forward to each other (not
# reachable through the load balancer; documented in coordinator/forwarding.py).
NOT_API = {"/ws", "/static", r"/internal/campaigns/{campaign_id}/{op}"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> web.Application:
    return create_app(CoordinatorConfig(data_dir=tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def document(app: web.Application) -> dict[str, Any]:
    """The document exactly as GET /api/openapi.json answers it."""
    (route,) = [r for r in app.router.routes() if r.resource is not None and r.resource.canonical == OPENAPI_PATH]
    request = make_mocked_request("GET", OPENAPI_PATH)
    response: web.StreamResponse = asyncio.run(route.handler(request))  # type: ignore[arg-type]
    assert isinstance(response, web.Response)
    assert isinstance(response.body, bytes)
    return dict(json.loads(response.body))


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    schemathesis.openapi.from_dict(document).validate()


def test_every_route_the_server_has_is_documented_and_nothing_else(
    app: web.Application, document: dict[str, Any]
) -> None:
    served = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        if path in NOT_API or (route.resource.name or "").startswith("page:"):
            continue
        served.add((route.method.lower(), path))
    documented = {(method, path) for path, operations in document["paths"].items() for method in operations}
    assert served == documented


def test_api_routes_live_under_api_and_pages_never_do() -> None:
    for page in PAGES:
        assert not page.path.startswith(("/api/", "/static", "/ws", "/metrics"))
    for route in ROUTES:
        assert route.path.startswith("/api/") or route.path == "/metrics"


def test_operation_ids_are_unique_and_every_error_reply_uses_the_error_schema(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for operations in document["paths"].values() for op in operations.values()]
    assert len(ids) == len(set(ids))
    for operations in document["paths"].values():
        for op in operations.values():
            assert op["security"] == ([{"bearer": []}] if op.get("x-roles") else [])
            for status, reply in op["responses"].items():
                if int(status) >= 400:
                    assert reply["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def _leaves(schema: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    out = {}
    for name, sub in schema["properties"].items():
        if sub.get("type") == "object" and "properties" in sub:
            out.update(_leaves(sub, f"{prefix}{name}."))
        else:
            out[prefix + name] = sub
    return out


BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern", "minLength", "maxLength", "enum")

# The bounds the served schema documents for each spec field, as msgspec derives them from the
# declarations in coordinator.campaign; the tests below hold them against CampaignSpec.problems().
SPEC_BOUNDS = {
    path: {key: leaf[key] for key in BOUND_KEYS if key in leaf}
    for path, leaf in _leaves(campaign_spec_schema()).items()
    if any(key in leaf for key in BOUND_KEYS)
}


def _default(f: msgspec.structs.FieldInfo) -> object:
    return dataclasses.MISSING if f.default is msgspec.NODEFAULT else f.default


def test_the_spec_schema_has_every_field_of_campaign_spec_with_its_default() -> None:
    expected: dict[str, object] = {}
    for f in msgspec.structs.fields(CampaignSpec):
        if f.name in SECTIONS:
            expected |= {f"{f.name}.{g.name}": _default(g) for g in msgspec.structs.fields(SECTIONS[f.name])}
        elif f.name not in CODEC_FIELDS:
            expected[f.name] = _default(f)
    schema = campaign_spec_schema()
    leaves = _leaves(schema)
    assert set(leaves) == {*expected, *CODEC_FIELDS}
    for path, default in expected.items():
        if default is dataclasses.MISSING:
            assert "default" not in leaves[path]
        else:
            assert leaves[path]["default"] == default, path
    assert schema["required"] == ["name", "dataset"]
    assert set(SPEC_BOUNDS) <= set(leaves), "a bound for a field the spec doesn't have"


def test_every_spec_field_is_described() -> None:
    for path, leaf in _leaves(campaign_spec_schema()).items():
        assert leaf.get("description"), path


def _types(leaf: dict[str, Any]) -> set[str]:
    kind = leaf.get("type", [])
    return {kind} if isinstance(kind, str) else set(kind)


def test_every_number_in_the_spec_has_an_upper_bound_and_every_text_a_longest_length() -> None:
    leaves = _leaves(campaign_spec_schema())
    for field in CODEC_FIELDS:
        (codec_table,) = [arm for arm in leaves.pop(field)["oneOf"] if arm["type"] == "object"]
        leaves |= {f"{field}.{name}": leaf for name, leaf in codec_table["properties"].items()}
    numbers = {path for path, leaf in leaves.items() if _types(leaf) & {"integer", "number"}}
    texts = {path for path, leaf in leaves.items() if "string" in _types(leaf)}
    assert {"token_budget", "seed", "inner.lr", "rounds.deadline_s", "codec.block_size"} <= numbers
    for path in numbers:
        assert "maximum" in leaves[path] or "exclusiveMaximum" in leaves[path], path
    for path in texts:
        assert "maxLength" in leaves[path] or "enum" in leaves[path], path


def test_a_budget_of_2_to_the_64_tokens_is_refused() -> None:
    assert _problems("token_budget", 2**64) == [f"token_budget must be within [1, {10**15}], got {2**64}"]


def _problems(path: str, value: object) -> list[str]:
    """What CampaignSpec says about one field taking `value` (cross-field rules kept satisfied)."""
    if "." in path:
        section, name = path.split(".")
        # min_accepted <= units_per_round at either field's edges
        base: dict[str, Any] = {"min_accepted": 1, "units_per_round": 10_000} if section == "rounds" else {}
        return list(SECTIONS[section](**{**base, name: value}).problems())
    spec = CampaignSpec(**{"name": "ok", "dataset": "d", path: value})  # type: ignore[arg-type]
    return [p for p in spec.problems() if p.startswith(path)]


def _numeric_edges() -> list[tuple[str, float, bool]]:
    """(field, value, accepted) just inside and just outside each documented numeric bound."""
    cases = []
    leaves = _leaves(campaign_spec_schema())
    for path, bounds in SPEC_BOUNDS.items():
        step = 1 if leaves[path]["type"] == "integer" else 1e-9
        for key, inside, outside in (
            ("minimum", 0, -step),
            ("maximum", 0, step),
            ("exclusiveMinimum", step, 0),
            ("exclusiveMaximum", -step, 0),
        ):
            if key in bounds:
                cases += [(path, bounds[key] + inside, True), (path, bounds[key] + outside, False)]
    return cases


@pytest.mark.parametrize(("path", "value", "accepted"), _numeric_edges())
def test_each_documented_bound_is_where_the_spec_starts_refusing(path: str, value: float, accepted: bool) -> None:
    problems = _problems(path, value)
    assert (problems == []) == accepted, (path, value, problems)


def test_the_documented_patterns_and_lengths_agree_with_the_spec() -> None:
    name = re.compile(SPEC_BOUNDS["name"]["pattern"])
    for value in ("a", "stdlib-tiny.v2_0", "x" * 64, "", "-a", "a b", "x" * 65, "é"):
        assert bool(name.fullmatch(value)) == (not _problems("name", value)), value
    shard = re.compile(SPEC_BOUNDS["shard_plan"]["pattern"])
    for value in ("full", "groups:1", "groups:9999", "groups:0", "groups:10000", "half", "groups:"):
        assert bool(shard.fullmatch(value)) == (not _problems("shard_plan", value)), value
    for path, longest in (("dataset", 256), ("description", 2000)):
        assert SPEC_BOUNDS[path]["maxLength"] == longest
        assert not _problems(path, "x" * longest)
        assert _problems(path, "x" * (longest + 1))
    assert SPEC_BOUNDS["dataset"]["minLength"] == 1
    assert _problems("dataset", "")


def test_the_enumerations_are_the_servers_choices() -> None:
    assert SPEC_BOUNDS["model"]["enum"] == list(PRESETS)
    assert SPEC_BOUNDS["outer.optimizer"]["enum"] == list(OUTER_DEFAULTS)
    assert _problems("model", "gigantic")
    assert not _problems("model", "small")


@pytest.mark.parametrize("name", sorted(CODEC_BOUNDS))
def test_codec_parameter_bounds_are_the_codecs_own(name: str) -> None:
    bounds = CODEC_BOUNDS[name]
    step = 1 if bounds["type"] == "integer" else 1e-9
    exclusive = "exclusiveMinimum" in bounds
    low = bounds["exclusiveMinimum"] if exclusive else bounds["minimum"]
    base = {"name": "dct", "dct_chunk": 1024, "dct_topk": 1}  # keeps dct_topk <= dct_chunk at every edge
    for value in (low + step if exclusive else low, bounds["maximum"]):
        CodecConfig.from_dict({**base, name: value})
    for value in (low if exclusive else low - step, bounds["maximum"] + step):
        with pytest.raises(CodecError):
            CodecConfig.from_dict({**base, name: value})
