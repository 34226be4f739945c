"""The volunteer stays connected to a coordinator that closes silent connections: a real coordinator
process that wants a frame every second and closes a connection silent for two, and the worker
idle (no campaign) or paused for several times that."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.local import LocalCoordinator, start_coordinator, stop
from volunteer_app.worker import Connected, Notice, Worker, WorkerConfig, WorkerError, WorkerEvent

QUIET_S = 6.0  # three idle deadlines


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> Iterator[LocalCoordinator]:
    root = tmp_path_factory.mktemp("strict")
    log = root / "coordinator.log"
    args = ["--heartbeat-interval", "1", "--idle-timeout", "2"]
    try:
        coordinator = start_coordinator(root / "c", datasets={"stdlib": small_dataset}, log=log, extra_args=args)
    except (RuntimeError, TimeoutError) as error:
        pytest.fail(f"the coordinator did not come up ({error}): {log.read_text(errors='replace')[-2000:]}")
    try:
        yield coordinator
    finally:
        stop(coordinator.process)


async def quiet_run(coordinator: LocalCoordinator, root: Path, *, paused: bool) -> list[WorkerEvent]:
    """The events of a worker left with nothing to do for QUIET_S after its first welcome."""
    events: list[WorkerEvent] = []
    config = WorkerConfig(
        coordinator.ws_url, name="quiet", config_dir=root / "config", cache_dir=root / "cache", data_dir=root / "data"
    )
    worker = Worker(config, events=events.append)
    if paused:
        worker.pause()

    async def stop_later() -> None:
        while not any(isinstance(e, Connected) for e in events):
            await asyncio.sleep(0.05)
        await asyncio.sleep(QUIET_S)
        worker.stop()

    stopper = asyncio.create_task(stop_later())
    summary = await asyncio.wait_for(worker.run(), 60)
    await stopper
    assert summary.error is None
    return events


@pytest.mark.parametrize("paused", [False, True], ids=["waiting-for-work", "paused"])
async def test_a_quiet_worker_keeps_its_connection(strict: LocalCoordinator, tmp_path: Path, paused: bool) -> None:
    events = await quiet_run(strict, tmp_path, paused=paused)
    assert len([e for e in events if isinstance(e, Connected)]) == 1, events
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert not any("disconnected" in n or "idle" in n for n in notices), notices


def test_the_bind_address_must_be_an_ip_address() -> None:
    assert WorkerConfig("ws://127.0.0.1/ws", bind_address="127.0.0.5").bind_address == "127.0.0.5"
    with pytest.raises(WorkerError, match="bind address"):
        WorkerConfig("ws://127.0.0.1/ws", bind_address="localhost")
