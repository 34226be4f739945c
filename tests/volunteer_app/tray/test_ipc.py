"""The pipe between the app and its training child carries only our own typed messages, as JSON."""

from __future__ import annotations

import json
import math

import pytest

from volunteer_app.events import Notice, StateChanged, TrainingProgress, UnitResult, UnitStarted, WorkerState
from volunteer_app.tray.ipc import (
    ChildConfig,
    ChildFinished,
    DeviceChosen,
    IpcError,
    Pause,
    Resume,
    Stop,
    decode,
    encode,
)

MESSAGES = [
    Pause(),
    Resume(),
    Stop(),
    ChildConfig(
        "ws://127.0.0.1:8470/ws", device="cuda:1", threads=4, cpu_percent=30, memory_limit=1 << 30, data_dir="/tmp/d"
    ),
    DeviceChosen("cuda", "NVIDIA H100", 80 << 30),
    ChildFinished(3, 4.5, "banned", "this volunteer is banned"),
    StateChanged(WorkerState.PAUSED, "tiny-lm: paused at step 12"),
    UnitStarted("u1", "7", "tiny-lm", 3, 50, resumed=True),
    TrainingProgress("u1", 12, 50, 3.25, 768),
    UnitResult("u1", "accepted", None, "ok", 1.5),
    Notice("the coordinator refused a frame", "rate_limited"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_survives_the_round_trip(message: object) -> None:
    assert decode(encode(message)) == message


def test_the_wire_format_is_json_with_a_type_tag_not_a_pickle() -> None:
    assert json.loads(encode(Pause())) == {"type": "Pause"}


def test_a_diverged_loss_still_crosses() -> None:
    message = decode(encode(TrainingProgress("u1", 1, 2, math.nan, 64)))
    assert isinstance(message, TrainingProgress) and math.isnan(message.loss)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x80\x04K\x01.",  # a pickle
        b"[1, 2]",
        b'{"type": "os.system"}',
        b'{"type": "Pause", "extra": 1}',
        b'{"type": "StateChanged", "state": "exploded"}',
        b'{"type": "StateChanged"}',
        b'{"type": "TrainingProgress", "unit_id": "u", "step": true, "steps_total": 2, "loss": 1.0, "tokens": 1}',
        b'{"type": "UnitResult", "unit_id": "u", "status": "great", "code": null, "message": "", "credit": 0}',
        b'{"type": "ChildConfig", "coordinator_url": 5}',
    ],
)
def test_anything_else_is_refused(raw: bytes) -> None:
    with pytest.raises(IpcError):
        decode(raw)


def test_only_app_messages_are_encoded() -> None:
    with pytest.raises(IpcError):
        encode(object())
