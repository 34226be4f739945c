"""The REST client (coordinator/client.py) against a real app on loopback: typed calls, errors with codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestServer

from commonweights.cli import main
from coordinator.app import create_app
from coordinator.client import ApiError, CoordinatorClient
from coordinator.local import free_port
from coordinator.service import CoordinatorConfig
from protocol.version import RELEASE_VERSION

T = TypeVar("T")

SPEC: dict[str, Any] = {
    "name": "client-test",
    "dataset": "small",
    "model": "tiny",
    "token_budget": 100_000,
    "inner": {"steps": 2, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
    "rounds": {"units_per_round": 2, "min_accepted": 2},
    "validation": {"replication_rate": 0.0},
}
TOML_SPEC = """
name = "client-toml"
dataset = "small"
model = "tiny"
token_budget = 100000

[inner]
steps = 2
batch_size = 2
seq_len = 32
warmup_steps = 0
"""


@pytest.fixture
async def admin(tmp_path: Path, small_dataset: Path) -> AsyncIterator[CoordinatorClient]:
    """A client with the admin token of a fresh coordinator app."""
    app = create_app(CoordinatorConfig(data_dir=tmp_path / "data", datasets={"small": small_dataset}))
    async with TestServer(app) as server:
        token = (tmp_path / "data" / "admin_token").read_text().strip()
        yield CoordinatorClient(str(server.make_url("")), token)


async def blocking(call: Callable[..., T], *args: Any) -> T:
    """The client blocks; the server runs on this test's event loop."""
    return await asyncio.to_thread(call, *args)


async def test_health_campaigns_versions_and_rounds_come_back_typed(admin: CoordinatorClient) -> None:
    assert (await blocking(admin.health))["version"] == RELEASE_VERSION
    created = await blocking(admin.post_campaign, SPEC)
    assert (created["name"], created["status"]) == ("client-test", "active")
    assert [c["id"] for c in await blocking(admin.campaigns)] == [created["id"]]
    assert (await blocking(admin.campaign, created["id"]))["checkpoint"]["version"] == 0
    assert [v["version"] for v in await blocking(admin.versions, created["id"])] == [0]
    assert await blocking(admin.rounds, created["id"]) == []  # no round yet
    assert await blocking(admin.metric, "commonweights_no_such_metric") == 0


async def test_a_toml_spec_is_posted_as_toml(admin: CoordinatorClient) -> None:
    created = await blocking(admin.post_campaign, TOML_SPEC)
    assert created["name"] == "client-toml"


async def test_a_refusal_carries_the_status_code_message_and_problems(admin: CoordinatorClient) -> None:
    with pytest.raises(ApiError) as refused:
        await blocking(admin.post_campaign, {**SPEC, "inner": {"steps": 0}})
    assert refused.value.status == 400
    assert any("inner.steps" in problem for problem in refused.value.problems)

    created = await blocking(admin.post_campaign, SPEC)
    assert (await blocking(admin.pause, created["id"]))["status"] == "paused"
    with pytest.raises(ApiError) as conflict:
        await blocking(admin.pause, created["id"])
    assert (conflict.value.status, conflict.value.code) == (409, "conflict")
    assert "paused" in conflict.value.message
    assert (await blocking(admin.resume, created["id"]))["status"] == "active"


async def test_each_token_acts_with_its_own_role(admin: CoordinatorClient) -> None:
    lead = admin.with_token((await blocking(admin.create_token, "alice"))["token"])
    assert (await blocking(lead.me))["role"] == "lead"
    with pytest.raises(ApiError) as forbidden:
        await blocking(lead.tokens)
    assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
    with pytest.raises(ApiError) as anonymous:
        await blocking(admin.with_token(None).me)
    assert (anonymous.value.status, anonymous.value.code) == (401, "unauthorized")
    status, body = await blocking(admin.with_token(None).call, "GET", "/api/me")
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_an_unreachable_coordinator_is_an_os_error_not_an_api_error() -> None:
    with pytest.raises(OSError):
        CoordinatorClient(f"http://127.0.0.1:{free_port()}", timeout=5).health()


async def test_campaign_post_from_the_cli(admin: CoordinatorClient, tmp_path: Path, capsys: Any) -> None:
    spec = tmp_path / "spec.toml"
    spec.write_text(TOML_SPEC)
    argv = ["campaign", "post", str(spec), "--coordinator", admin.base_url, "--token", str(admin.token)]
    assert await blocking(main, argv) == 0
    assert "campaign client-toml posted as #1" in capsys.readouterr().out

    spec.write_text(TOML_SPEC.replace("steps = 2", "steps = 0"))
    assert await blocking(main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("refused (400)") and "  - inner.steps" in err
