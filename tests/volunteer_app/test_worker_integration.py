"""The volunteer against a real coordinator process on loopback: real sockets, SQLite and training.

One coordinator serves the whole module; each test posts its own small campaign and asks for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.local import LocalCoordinator, start_coordinator, stop
from training.checkpoint import load_state
from volunteer_app.credentials import CredentialStore
from volunteer_app.events import Notice
from volunteer_app.local_data import LocalData
from volunteer_app.worker import (
    Connected,
    Downloading,
    RunSummary,
    StateChanged,
    TrainingProgress,
    UnitResult,
    UnitStarted,
    Worker,
    WorkerConfig,
    WorkerEvent,
    WorkerState,
)

REPO = Path(__file__).resolve().parents[2]
VOLUNTEER_S = 50.0


@dataclass
class Coordinator:
    local: LocalCoordinator
    names: int = 0

    @property
    def ws(self) -> str:
        return self.local.ws_url

    def get(self, path: str) -> Any:
        return self.local.api.request("GET", path)

    def post_campaign(self, *, steps: int = 4, units: int = 1, rounds: int = 1) -> str:
        """A campaign of `rounds` rounds of `units` units of `steps` inner steps; its id."""
        self.names += 1
        spec = {
            "name": f"volunteer-test-{self.names}",
            "model": "tiny",
            "dataset": "stdlib",
            "token_budget": 64 if rounds == 1 else rounds * units * steps * 2 * 32,
            "codec": "int8",
            "inner": {"steps": steps, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
            "rounds": {"units_per_round": units, "min_accepted": units},
            "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
        }
        return str(self.local.api.post_campaign(spec)["id"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    data_dir = tmp_path_factory.mktemp("coordinator")
    log = data_dir / "serve.log"
    try:
        local = start_coordinator(data_dir, log=log)
    except (RuntimeError, TimeoutError) as error:
        pytest.fail(f"the coordinator did not come up ({error}): {log.read_text()[-2000:]}")
    try:
        yield Coordinator(local)
    finally:
        stop(local.process)


def _volunteer(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "commonweights", "volunteer", "run", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _dirs(root: Path) -> list[str]:
    return ["--config-dir", str(root / "config"), "--cache-dir", str(root / "cache"), "--data-dir", str(root / "data")]


def test_two_volunteer_processes_train_a_round_and_version_1_is_published(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    campaign = coordinator.post_campaign(units=2)
    common = ["--coordinator", coordinator.ws, "--campaign", campaign, "--max-units", "1", "--threads", "1"]
    volunteers = [_volunteer(*common, "--name", f"tester-{i}", *_dirs(tmp_path / f"v{i}")) for i in range(2)]
    outputs: list[str] = []
    try:
        for process in volunteers:
            outputs.append(process.communicate(timeout=VOLUNTEER_S)[0].decode(errors="replace"))
    finally:
        for process in volunteers:
            _stop(process)
    for process, text in zip(volunteers, outputs, strict=True):
        assert process.returncode == 0, text
        assert "accepted" in text, text
    versions = coordinator.get(f"/api/campaigns/{campaign}/versions")["versions"]
    assert [v["version"] for v in versions] == [0, 1]
    assert versions[1]["updates"] == 2
    for i in range(2):
        credentials = tmp_path / f"v{i}" / "config" / "credentials.toml"
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
        assert CredentialStore(credentials.parent).token_for(coordinator.ws)


async def _run(config: WorkerConfig, on_event: Any = None) -> tuple[RunSummary, list[WorkerEvent]]:
    events: list[WorkerEvent] = []
    worker: Worker

    def record(event: WorkerEvent) -> None:
        events.append(event)
        if on_event is not None:
            on_event(worker, event)

    worker = Worker(config, events=record)
    return await worker.run(), events


def _config(coordinator: Coordinator, root: Path, campaign: str, **extra: Any) -> WorkerConfig:
    return WorkerConfig(
        coordinator.ws,
        name="in-process",
        config_dir=root / "config",
        cache_dir=root / "cache",
        data_dir=root / "data",
        preferred_campaign=campaign,
        max_units=1,
        max_retries=2,
        **extra,
    )


async def test_a_worker_stopped_mid_unit_resumes_the_unit_from_its_local_checkpoint(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    campaign = coordinator.post_campaign(steps=6)

    def stop_at_step_2(worker: Worker, event: WorkerEvent) -> None:
        if isinstance(event, TrainingProgress) and event.step == 2:
            worker.stop()

    first, events = await _run(_config(coordinator, tmp_path, campaign), stop_at_step_2)
    assert first.units == 0 and first.error is None
    assert events[-1] == StateChanged(WorkerState.STOPPED)
    # The stop lands at the next step boundary the training thread reaches: after step 2 or 3.
    done = [e.step for e in events if isinstance(e, TrainingProgress)]
    assert done in ([1, 2], [1, 2, 3])

    second, events = await _run(_config(coordinator, tmp_path, campaign))
    assert second.units == 1 and second.error is None
    started = [e for e in events if isinstance(e, UnitStarted)]
    assert len(started) == 1 and started[0].resumed
    assert [e.step for e in events if isinstance(e, TrainingProgress)] == list(range(len(done) + 1, 7))
    results = [e for e in events if isinstance(e, UnitResult)]
    assert [(r.status, r.code) for r in results] == [("accepted", None)]
    assert [v["version"] for v in coordinator.get(f"/api/campaigns/{campaign}/versions")["versions"]] == [0, 1]


async def test_each_new_version_is_rebuilt_from_a_delta_instead_of_downloaded(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    campaign = coordinator.post_campaign(steps=3, rounds=3)
    summary, events = await _run(dataclasses.replace(_config(coordinator, tmp_path, campaign), max_units=3))
    assert summary.units == 3 and summary.error is None
    versions = coordinator.get(f"/api/campaigns/{campaign}/versions")["versions"]
    assert [v["version"] for v in versions] == [0, 1, 2, 3]
    assert versions[0]["delta_sha256"] is None
    assert all(0 < v["delta_bytes"] < v["checkpoint_bytes"] / 3 for v in versions[1:])
    fetched = {e.sha256 for e in events if isinstance(e, Downloading)}
    # Version 0 came whole; versions 1 and 2 came as int8 deltas (version 3 was never trained from).
    assert versions[0]["checkpoint_sha256"] in fetched
    assert {v["delta_sha256"] for v in versions[1:3]} <= fetched
    assert not {v["checkpoint_sha256"] for v in versions[1:]} & fetched
    cached = {path.name for path in (tmp_path / "cache").rglob("*") if path.is_file()}
    assert {v["checkpoint_sha256"] for v in versions[1:3]} <= cached
    # Each version shares the second moment its round's unit returned, and the next unit started from it.
    assert versions[0]["moments_sha256"] is None
    assert all(v["moments_sha256"] is not None and v["moments_bytes"] > 0 for v in versions[1:])
    assert {v["moments_sha256"] for v in versions[1:3]} <= fetched


async def test_a_worker_at_half_the_cpu_rests_between_steps_and_still_finishes_its_unit(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    campaign = coordinator.post_campaign(steps=3)
    summary, events = await _run(_config(coordinator, tmp_path, campaign, cpu_percent=50))
    assert [e.status for e in events if isinstance(e, UnitResult)] == ["accepted"]
    assert summary.units == 1 and summary.rested_s > 0


async def test_a_paused_worker_checkpoints_and_goes_on_when_resumed(coordinator: Coordinator, tmp_path: Path) -> None:
    campaign = coordinator.post_campaign(steps=5)

    def pause_then_resume(worker: Worker, event: WorkerEvent) -> None:
        if isinstance(event, TrainingProgress) and event.step == 1:
            worker.pause()
        elif isinstance(event, StateChanged) and event.state is WorkerState.PAUSED:
            assert worker.paused and list((tmp_path / "data").glob("*/units/*/state.safetensors"))
            worker.resume()

    summary, events = await _run(_config(coordinator, tmp_path, campaign), pause_then_resume)
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert states.count(WorkerState.PAUSED) == 1
    assert states[states.index(WorkerState.PAUSED) + 1] is WorkerState.TRAINING
    assert [e.step for e in events if isinstance(e, TrainingProgress)] == [1, 2, 3, 4, 5]
    assert [e.status for e in events if isinstance(e, UnitResult)] == ["accepted"]
    assert summary.units == 1


async def test_an_unanswered_update_is_resent_after_a_restart_and_counted_once(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    campaign = coordinator.post_campaign()
    kept = tmp_path / "kept"

    def keep_the_submission(worker: Worker, event: WorkerEvent) -> None:
        # As if the process died between sending the update and reading the result.
        if isinstance(event, StateChanged) and event.state is WorkerState.SUBMITTING:
            shutil.copytree(tmp_path / "data", kept)

    first, events = await _run(_config(coordinator, tmp_path, campaign), keep_the_submission)
    assert first.units == 1
    original = next(e for e in events if isinstance(e, UnitResult))
    assert original.status == "accepted" and original.credit > 0
    shutil.rmtree(tmp_path / "data")
    shutil.copytree(kept, tmp_path / "data")

    second, events = await _run(_config(coordinator, tmp_path, campaign))
    assert second.units == 1
    assert not any(isinstance(e, TrainingProgress) for e in events)  # nothing was trained again
    resent = next(e for e in events if isinstance(e, UnitResult))
    assert (resent.unit_id, resent.status, resent.credit) == (original.unit_id, "accepted", original.credit)
    assert coordinator.get(f"/api/campaigns/{campaign}")["accepted"] == 1


async def test_a_token_the_coordinator_does_not_know_is_dropped_and_the_volunteer_registers_again(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    store = CredentialStore(tmp_path / "config")
    store.save(coordinator.ws, "forgotten-token")

    def stop_when_connected(worker: Worker, event: WorkerEvent) -> None:
        if isinstance(event, Connected):
            worker.stop()

    summary, events = await _run(_config(coordinator, tmp_path, "none"), stop_when_connected)
    assert summary.error is None
    connected = [e for e in events if isinstance(e, Connected)]
    assert len(connected) == 1 and connected[0].registered
    token = store.token_for(coordinator.ws)
    assert token and token != "forgotten-token"


async def test_a_replayed_update_gets_the_first_verdict_and_a_different_one_is_a_duplicate(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    campaign = coordinator.post_campaign()
    summary, events = await _run(_config(coordinator, tmp_path, campaign, inject_fault="replay"))
    results = [(e.status, e.code) for e in events if isinstance(e, UnitResult)]
    assert results == [("accepted", None), ("accepted", None), ("duplicate", "duplicate_submission")]
    assert summary.units == 1
    assert coordinator.get(f"/api/campaigns/{campaign}")["accepted"] == 1


async def test_an_unreachable_coordinator_gives_up_after_max_retries(tmp_path: Path) -> None:
    config = WorkerConfig(f"ws://127.0.0.1:{_free_port()}/ws", config_dir=tmp_path, data_dir=tmp_path, max_retries=1)
    summary, events = await _run(config)
    assert summary.error is not None and summary.error.code == "unreachable"
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert WorkerState.BACKOFF in states and states[-1] is WorkerState.ERROR


def test_ctrl_c_stops_at_a_step_boundary_keeps_the_unit_and_exits_0(coordinator: Coordinator, tmp_path: Path) -> None:
    campaign = coordinator.post_campaign(steps=40)  # a progress line every 4 steps
    process = _volunteer("--coordinator", coordinator.ws, "--campaign", campaign, "--threads", "1", *_dirs(tmp_path))
    lines: queue.Queue[bytes] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read_lines() -> None:
        for line in iter(stdout.readline, b""):
            lines.put(line)

    reader = threading.Thread(target=read_lines)
    reader.start()
    seen: list[bytes] = []
    try:
        while not seen or not seen[-1].startswith(b"step "):
            seen.append(lines.get(timeout=VOLUNTEER_S))
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, b"".join(seen)
    finally:
        _stop(process)
        reader.join(timeout=10)
    states = list((tmp_path / "data").glob("*/units/*/state.safetensors"))
    assert len(states) == 1  # the unit waits, checkpointed, for the next run
    assert load_state(states[0].read_bytes())["step"] < 40


def test_bad_flags_exit_2_with_a_hint() -> None:
    process = _volunteer("--coordinator", "ws://127.0.0.1:1/ws", "--memory-limit", "lots")
    output, _ = process.communicate(timeout=VOLUNTEER_S)
    assert process.returncode == 2 and b"4GiB" in output
    process = _volunteer("--coordinator", "ws://127.0.0.1:1/ws", "--cpu-percent", "0")
    output, _ = process.communicate(timeout=VOLUNTEER_S)
    assert process.returncode == 2 and b"--cpu-percent" in output


async def test_a_campaign_promising_more_privacy_spend_than_the_owner_accepts_gets_no_update(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "letter.txt").write_text("Dear diary, nothing here may leave this machine. " * 400)
    LocalData(tmp_path / "config", tmp_path / "data").add(notes)  # the default limit: ε = 10
    spec = {
        "name": "no-promise", "model": "tiny", "dataset": "stdlib", "token_budget": 64, "codec": "int8",
        "data": "volunteer", "privacy": {"clip_norm": 1.0, "noise_multiplier": 0.5},  # no ε budget: unlimited
        "inner": {"steps": 2, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
        "rounds": {"units_per_round": 1, "min_accepted": 1},
    }  # fmt: skip
    campaign = str(coordinator.local.api.post_campaign(spec)["id"])

    def stop_when_refused(worker: Worker, event: WorkerEvent) -> None:
        if isinstance(event, Notice) and "you accept at most ε = 10" in event.message:
            worker.stop()

    summary, events = await asyncio.wait_for(_run(_config(coordinator, tmp_path, campaign), stop_when_refused), 120)
    assert summary.units == 0
    refusals = [e for e in events if isinstance(e, Notice) and e.code == "privacy"]
    assert refusals and "no-promise may spend no limit of your privacy" in refusals[0].message
    assert not any(isinstance(e, TrainingProgress) for e in events)  # nothing trained
    assert {e.status for e in events if isinstance(e, UnitResult)} == {"abandoned"}  # given back, nothing sent
    assert not (tmp_path / "data" / "privacy-ledger.json").exists()  # no privacy spent
    assert coordinator.get(f"/api/campaigns/{campaign}/leaderboard")["leaderboard"] == []
