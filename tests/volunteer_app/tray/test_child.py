"""The training child process against a real coordinator: it trains, pauses at a step boundary with
the unit checkpointed, resumes, finishes the unit, and stops cleanly, all over the typed pipe."""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.local import LocalCoordinator, start_coordinator, stop
from volunteer_app.duty import DutyCycle
from volunteer_app.events import StateChanged, TrainingProgress, UnitResult, WorkerState
from volunteer_app.tray.child import ChildStartError, TrainingChild
from volunteer_app.tray.ipc import ChildConfig, ChildExited, ChildMessage, ChildReady, DeviceChosen

TIMEOUT_S = 120.0  # a spawned Python importing torch, on a busy runner


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> Iterator[LocalCoordinator]:
    running = start_coordinator(tmp_path_factory.mktemp("coordinator"), datasets={"stdlib": small_dataset})
    try:
        yield running
    finally:
        stop(running.process)


def _next(messages: queue.Queue[ChildMessage], kind: type, test: object = None) -> ChildMessage:
    """The next message of `kind` (passing `test`), skipping others, within TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        message = messages.get(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(message, ChildExited) and kind is not ChildExited:
            pytest.fail(f"the training process exited early: {message}")
        if isinstance(message, kind) and (test is None or test(message)):  # type: ignore[operator]
            return message


def _post_one_unit_campaign(coordinator: LocalCoordinator, name: str, steps: int) -> None:
    """A `tiny` campaign of one unit of `steps` steps, accepted on its own."""
    coordinator.api.post_campaign(
        {
            "name": name,
            "model": "tiny",
            "dataset": "stdlib",
            "codec": "int8",
            "token_budget": steps * 2 * 32,
            "inner": {"steps": steps, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
            "rounds": {"units_per_round": 1, "min_accepted": 1},
            "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
        }
    )


@pytest.mark.parametrize("launch", ["multiprocessing", "interpreter"])
def test_the_child_trains_pauses_with_a_checkpoint_resumes_and_stops(
    coordinator: LocalCoordinator, tmp_path: Path, launch: str
) -> None:
    """`multiprocessing`: a development install, where the app's Python has torch. `interpreter`: an
    installed app, whose training child runs from the training environment's Python (here another
    process of this one's) and reaches the app over loopback."""
    steps = 200  # long enough that the pause lands mid-unit
    _post_one_unit_campaign(coordinator, f"child-test-{launch}", steps)
    messages: queue.Queue[ChildMessage] = queue.Queue()
    config = ChildConfig(
        coordinator.ws_url,
        device="cpu",
        threads=1,
        config_dir=str(tmp_path / "config"),
        cache_dir=str(tmp_path / "cache"),
        data_dir=str(tmp_path / "data"),
        start_paused=False,
        progress_interval_s=0.0,
        nice=0,  # this test is about the pipe, not the priority: don't starve on a busy runner
        python=sys.executable if launch == "interpreter" else None,
    )
    child = TrainingChild(config, messages.put)
    child.start()
    try:
        ready = _next(messages, ChildReady)
        assert isinstance(ready, ChildReady) and ready.pid == child.pid
        device = _next(messages, DeviceChosen)
        assert isinstance(device, DeviceChosen) and device.kind == "cpu"
        _next(messages, TrainingProgress)
        child.pause()
        paused = _next(messages, StateChanged, lambda m: m.state is WorkerState.PAUSED)
        assert isinstance(paused, StateChanged) and f"child-test-{launch}: paused at step" in paused.detail
        assert list((tmp_path / "data").glob("*/units/*/state.safetensors")), "paused without a checkpoint"
        child.resume()
        _next(messages, StateChanged, lambda m: m.state is WorkerState.TRAINING)
        last = _next(messages, TrainingProgress, lambda m: m.step == steps)
        assert isinstance(last, TrainingProgress) and last.steps_total == steps
        result = _next(messages, UnitResult)
        assert isinstance(result, UnitResult) and result.status == "accepted"
        child.stop()
        exited = _next(messages, ChildExited)
        assert exited == ChildExited(0, expected=True, finished=True)
    finally:
        child.kill()
        child.join(10.0)


@pytest.mark.skipif(not DutyCycle.supported(), reason="the CPU cap suspends the child with SIGSTOP (POSIX)")
def test_a_capped_child_is_duty_cycled_trains_and_still_stops_cleanly(
    coordinator: LocalCoordinator, tmp_path: Path
) -> None:
    """The cap is held by suspending the process for the rest of each second, not by the child resting
    between steps (it is told 100 %); a stop request ends the cycle first, so it is heard at once."""
    _post_one_unit_campaign(coordinator, "child-test-capped", 400)
    messages: queue.Queue[ChildMessage] = queue.Queue()
    config = ChildConfig(
        coordinator.ws_url,
        device="cpu",
        threads=1,
        cpu_percent=50,
        config_dir=str(tmp_path / "config"),
        cache_dir=str(tmp_path / "cache"),
        data_dir=str(tmp_path / "data"),
        start_paused=False,
        progress_interval_s=0.0,
        nice=0,
    )
    child = TrainingChild(config, messages.put)
    child.start()
    try:
        assert child.duty_cycle is not None and child.duty_cycle.percent == 50
        _next(messages, TrainingProgress)
        deadline = time.monotonic() + TIMEOUT_S
        while child.duty_cycle.cycles < 3:
            assert time.monotonic() < deadline, "the duty cycle never went round"
            time.sleep(0.1)
        child.stop()
        exited = _next(messages, ChildExited)
        assert isinstance(exited, ChildExited) and exited.expected and exited.exitcode == 0
    finally:
        child.kill()
        child.join(10.0)


def test_an_interpreter_that_cannot_run_the_child_is_reported_at_start(tmp_path: Path) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'No module named volunteer_app' >&2\nexit 1\n")
    broken.chmod(0o755)
    child = TrainingChild(ChildConfig("ws://127.0.0.1:9/ws", python=str(broken)), lambda message: None)
    with pytest.raises(ChildStartError, match="exited with code 1 before it was up"):
        child.start()
