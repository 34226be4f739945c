"""Live updates over Server-Sent Events: what a stream carries, and that subscribers stay bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from coordinator import events
from coordinator.app import create_app
from coordinator.appkeys import EVENTS, SERVICE
from coordinator.service import CoordinatorConfig
from tests.coordinator.test_rest import SPEC

WAIT_S = 60.0  # a bound, not a sleep: the first holdout evaluation runs on a worker thread


@pytest.fixture
async def client(tmp_path: Path, small_dataset: Path) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(CoordinatorConfig(data_dir=tmp_path / "data", datasets={"small": small_dataset}))
    async with TestClient(TestServer(app)) as client:
        yield client


def _admin(client: TestClient[Any, Any]) -> dict[str, str]:
    token = client.app[SERVICE].admin_token
    return {"Authorization": f"Bearer {token}"}


async def _post_campaign(client: TestClient[Any, Any]) -> int:
    headers = _admin(client)
    async with client.post("/api/campaigns", json=SPEC, headers=headers) as response:
        assert response.status == 201
        return int((await response.json())["id"])


async def _next_event(response: ClientResponse) -> tuple[str, Any]:
    """The next event (name, data) or comment ("", text) of a stream."""
    name, data = "", list[str]()
    while True:
        line = (await response.content.readline()).decode()
        if line == "":
            raise EOFError("the stream ended")
        line = line.rstrip("\n")
        if line == "":
            if name or data:
                return name, json.loads("\n".join(data))
            continue
        if line.startswith(":"):
            return "", line[1:].strip()
        field, _, value = line.partition(": ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


async def _wait_for(response: ClientResponse, wanted: str) -> Any:
    async with asyncio.timeout(WAIT_S):
        while True:
            name, data = await _next_event(response)
            if name == wanted:
                return data


async def test_a_campaign_stream_sends_stats_at_once_then_each_evaluated_version(client: TestClient[Any, Any]) -> None:
    campaign_id = await _post_campaign(client)
    async with client.get(f"/api/campaigns/{campaign_id}/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        name, stats = await _next_event(response)
        assert name == "stats"
        assert (stats["campaign_id"], stats["status"], stats["version"]) == (campaign_id, "active", 0)
        assert {"tokens_per_second", "accepted", "rejected", "rejections", "volunteers_online"} <= set(stats)
        version = await _wait_for(response, "version")
        assert version["campaign_id"] == campaign_id and version["version"] == 0
        assert version["holdout_loss"] > 0
        stats = await _wait_for(response, "stats")
        assert stats["holdout_loss"] == version["holdout_loss"]


async def test_a_status_change_reaches_the_server_wide_stream(client: TestClient[Any, Any]) -> None:
    campaign_id = await _post_campaign(client)
    async with client.get("/api/events") as response:
        name, stats = await _next_event(response)
        assert name == "stats" and stats["campaigns_active"] == 1
        async with client.post(f"/api/campaigns/{campaign_id}/pause", headers=_admin(client)) as paused:
            assert paused.status == 200
        event = await _wait_for(response, "campaign")
        assert event == {"type": "campaign", "campaign_id": campaign_id, "status": "paused"}


async def test_an_idle_stream_sends_heartbeats(client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "STATS_INTERVAL_S", 3600.0)
    monkeypatch.setattr(events, "HEARTBEAT_S", 0.05)
    async with client.get("/api/events") as response:
        assert (await _next_event(response))[0] == "stats"
        async with asyncio.timeout(WAIT_S):
            assert await _next_event(response) == ("", "heartbeat")


async def test_subscribers_are_bounded_and_removed_when_they_hang_up(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "MAX_SUBSCRIBERS", 2)
    monkeypatch.setattr(events, "STATS_INTERVAL_S", 0.05)  # hang-ups are noticed at the next write
    subscribers = client.app[EVENTS]
    first = await client.get("/api/events")
    second = await client.get("/api/events")
    await _next_event(first)
    await _next_event(second)
    assert len(subscribers) == 2
    async with client.get("/api/events") as refused:
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "60"
        assert (await refused.json())["error"]["code"] == "busy"
    first.close()
    async with asyncio.timeout(WAIT_S):
        while len(subscribers) > 1:
            await asyncio.sleep(0.02)
    async with client.get("/api/events") as third:
        assert third.status == 200
        assert (await _next_event(third))[0] == "stats"
    second.close()


async def test_shutdown_ends_every_open_stream(client: TestClient[Any, Any]) -> None:
    async with client.get("/api/events") as response:
        await _next_event(response)
        await events.end_streams(client.app)
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(EOFError):
                while True:
                    await _next_event(response)
    assert client.app[EVENTS] == []


def test_a_full_subscription_drops_its_oldest_events_and_counts_them() -> None:
    queue = events.Subscription(maxsize=3)
    for n in range(5):
        queue.put_nowait({"n": n})  # never raises QueueFull: a slow browser can't break a producer
    assert queue.dropped == 2
    assert [queue.get_nowait()["n"] for _ in range(3)] == [2, 3, 4]


async def test_a_stream_that_lost_events_is_told_to_resync(client: TestClient[Any, Any]) -> None:
    async with client.get("/api/events") as response:
        await _next_event(response)
        subscription = client.app[EVENTS][0]
        for n in range(events.QUEUE_SIZE + 5):
            subscription.put_nowait({"type": "version", "campaign_id": 1, "version": n, "holdout_loss": 1.0})
        resync = await _wait_for(response, "resync")
        assert resync["dropped"] >= 5
