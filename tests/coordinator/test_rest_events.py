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


def test_a_shared_snapshot_is_computed_once_per_interval_and_again_after_an_event() -> None:
    now = [100.0]
    shared = events.SharedSnapshots(clock=lambda: now[0])
    computed: list[float] = []

    def compute() -> dict[str, object]:
        computed.append(now[0])
        return {"at": now[0]}

    for _ in range(100):  # a hundred subscribers asking at once
        assert shared.get("server", compute, max_age=2.0) == {"at": 100.0}
    now[0] = 101.9
    assert shared.get("server", compute, max_age=2.0) == {"at": 100.0}
    assert shared.get(7, compute, max_age=2.0) == {"at": 101.9}  # each key its own
    now[0] = 102.0
    assert shared.get("server", compute, max_age=2.0) == {"at": 102.0}
    events.Subscription(on_event=shared.stale).put_nowait({"type": "version"})
    assert shared.get("server", compute, max_age=2.0) == {"at": 102.0} and computed == [100.0, 101.9, 102.0, 102.0]


@pytest.mark.parametrize("stream", ["server", "campaign"])
async def test_stats_are_computed_once_per_interval_however_many_subscribers_stream_them(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    interval, subscribers, wanted = 0.1, 40, 4
    monkeypatch.setattr(events, "STATS_INTERVAL_S", interval)
    campaign_id = await _post_campaign(client)
    store = client.app[SERVICE].store
    # What each snapshot reads once: the volunteer totals (server), the outcome counts (a campaign).
    name = "volunteer_totals" if stream == "server" else "submission_counts"
    computed = 0
    original = getattr(store, name)

    def counted(*args: Any) -> Any:
        nonlocal computed
        computed += 1
        return original(*args)

    monkeypatch.setattr(store, name, counted)
    path = "/api/events" if stream == "server" else f"/api/campaigns/{campaign_id}/events"
    loop = asyncio.get_running_loop()
    started = loop.time()
    responses = [await client.get(path) for _ in range(subscribers)]
    try:
        async with asyncio.timeout(WAIT_S):
            for response in responses:
                for _ in range(wanted):
                    await _wait_for(response, "stats")
    finally:
        for response in responses:
            response.close()
    elapsed = loop.time() - started
    # Per subscriber it would be about subscribers × elapsed / interval; shared, one per interval
    # elapsed, plus one for each event that made them stale (the holdout evaluation of version 0, at
    # most). Bounded by the elapsed time, not a fixed count: on a loaded machine the streams take longer.
    assert wanted <= computed <= elapsed / interval + 2, (computed, elapsed)
