"""Units of a campaign on volunteers' own data, over real loopback websockets on each backend: only a
volunteer that chose files of its own gets them; they carry no data, the campaign's terms and its
tokenizer; the coordinator stops leasing past a volunteer's ε budget; and an update without the stated
noise, or with losses of the owner's data, is refused."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import torch
from aiohttp.test_utils import TestServer

from coordinator.app import create_app
from coordinator.appkeys import SERVICE
from coordinator.campaign import CampaignSpec
from coordinator.service import CoordinatorConfig
from protocol.codecs import CodecConfig, encode
from protocol.errors import ErrorCode
from protocol.messages import (
    Abandon,
    BlobChunk,
    BlobRequest,
    Message,
    NoWork,
    RequestWork,
    Result,
    Submit,
    TrainMetrics,
    Welcome,
    WorkUnit,
    decode,
)
from protocol.messages import encode as encode_frame
from tests.coordinator.test_gateway import hello
from tests.support.backends import Backend
from training.privacy_accounting import releases_within
from volunteer_app.unit_runner import privatize

SPEC: dict[str, Any] = {
    "name": "notes", "dataset": "small", "data": "volunteer", "codec": "int8",
    "inner": {"steps": 2, "batch_size": 2, "seq_len": 32},
    "rounds": {"units_per_round": 6, "min_accepted": 6, "max_leases_per_volunteer": 5},
    "privacy": {"clip_norm": 1.0, "noise_multiplier": 2.0, "delta": 1e-5, "epsilon_budget": 3.0,
                "file_kinds": ".txt .md"},
}  # fmt: skip


@pytest.fixture
async def server(tmp_path: Path, small_dataset: Path, backend: Backend) -> AsyncIterator[TestServer]:
    config = CoordinatorConfig(
        data_dir=tmp_path / "c", database=backend.database, blobs=backend.blobs, datasets={"small": small_dataset}
    )
    test_server = TestServer(create_app(config), host="127.0.0.1")
    await test_server.start_server()
    test_server.app[SERVICE].create_campaign(CampaignSpec.from_dict(SPEC), owner="admin:1")
    yield test_server
    await test_server.close()


async def exchange(ws: aiohttp.ClientWebSocketResponse, message: Message) -> Message:
    await ws.send_bytes(encode_frame(message))
    frame = await ws.receive(timeout=60)
    assert frame.type == aiohttp.WSMsgType.BINARY, frame
    return decode(frame.data, direction="to_client")


def update_for(unit: WorkUnit, delta: dict[str, torch.Tensor]) -> bytes:
    return encode(delta, CodecConfig.from_dict(unit.codec))


def submit(unit: WorkUnit, update: bytes, losses: tuple[float, ...] = ()) -> Submit:
    metrics = TrainMetrics(losses, unit.recipe.tokens_needed - 1, 1.0, "cpu", "test cpu", "torch")
    return Submit(unit.unit_id, unit.lease_id, update, hashlib.sha256(update).hexdigest(), metrics)


async def test_only_a_volunteer_with_its_own_files_gets_a_unit_and_it_carries_no_data(
    server: TestServer, small_dataset: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/ws")) as ws:
            assert isinstance(await exchange(ws, hello(own_data=False)), Welcome)
            answer = await exchange(ws, RequestWork())
            assert isinstance(answer, NoWork) and "own files" in answer.reason
        async with session.ws_connect(server.make_url("/ws")) as ws:
            assert isinstance(await exchange(ws, hello(own_data=True)), Welcome)
            unit = await exchange(ws, RequestWork())
            assert isinstance(unit, WorkUnit) and unit.private is not None, unit
            assert unit.data is None and unit.data_tokens == 0 and not unit.recipe.shared_moments
            private = unit.private
            assert (private.clip_norm, private.noise_multiplier, private.delta, private.epsilon_budget) == (
                1.0, 2.0, 1e-5, 3.0,
            )  # fmt: skip
            assert private.file_kinds == (".txt", ".md")
            assert private.min_tokens == unit.recipe.tokens_needed  # at least one unit's tokens
            chunk = await exchange(ws, BlobRequest(private.tokenizer.sha256, 0, 4 << 20))
            assert isinstance(chunk, BlobChunk)
            assert chunk.data == (small_dataset / "tokenizer.json").read_bytes()


async def test_leases_stop_where_the_volunteers_budget_would_be_passed(server: TestServer) -> None:
    allowed = releases_within(3.0, 1e-5, 2.0)
    assert allowed == 2
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        assert isinstance(await exchange(ws, hello(own_data=True)), Welcome)
        units = [await exchange(ws, RequestWork()) for _ in range(allowed)]
        assert all(isinstance(u, WorkUnit) for u in units)
        refused = await exchange(ws, RequestWork())
        assert isinstance(refused, NoWork) and "privacy budget" in refused.reason, refused
        # Sending one counts as the release it is: the budget stays spent.
        unit = units[0]
        assert isinstance(unit, WorkUnit) and unit.private is not None
        zeros = {name: torch.zeros(tuple(unit.shard_shapes[name])) for name in unit.shard}
        result = await exchange(ws, submit(unit, update_for(unit, privatize(zeros, unit.private))))
        assert isinstance(result, Result) and result.status == "accepted", result
        again = await exchange(ws, RequestWork())
        assert isinstance(again, NoWork) and "privacy budget" in again.reason


async def test_a_campaign_the_owner_declines_is_not_offered_again_on_that_connection(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        assert isinstance(await exchange(ws, hello(own_data=True)), Welcome)
        first = await exchange(ws, RequestWork())
        assert isinstance(first, WorkUnit)
        await ws.send_bytes(encode_frame(Abandon(first.unit_id, first.lease_id, "error", "files unreadable")))
        second = await exchange(ws, RequestWork())  # a failure is no refusal: work is offered again
        assert isinstance(second, WorkUnit)
        await ws.send_bytes(encode_frame(Abandon(second.unit_id, second.lease_id, "user_request", "budget spent")))
        declined = await exchange(ws, RequestWork())
        assert isinstance(declined, NoWork) and "gave back campaign notes" in declined.reason, declined
        assert declined.retry_after_s >= 3600


async def test_an_update_without_its_noise_or_with_losses_is_refused(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        assert isinstance(await exchange(ws, hello(own_data=True)), Welcome)
        first, second = await exchange(ws, RequestWork()), await exchange(ws, RequestWork())
        assert isinstance(first, WorkUnit) and isinstance(second, WorkUnit) and first.private is not None
        plain = {name: torch.full(tuple(first.shard_shapes[name]), 1e-4) for name in first.shard}
        result = await exchange(ws, submit(first, update_for(first, plain)))
        assert isinstance(result, Result) and result.code == ErrorCode.NORM_OUTLIER, result
        assert "too little noise" in result.message
        noised = privatize(plain, first.private)
        result = await exchange(ws, submit(second, update_for(second, noised), losses=(5.0, 4.9)))
        assert isinstance(result, Result) and result.code == ErrorCode.IMPLAUSIBLE_LOSS, result
        assert "reports no losses" in result.message
