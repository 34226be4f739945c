"""What the worker tells its caller: its visible state and typed events. No torch here, so the tray
app's own process can read them without loading the training stack.

    >>> StateChanged(WorkerState.PAUSED, "tiny-lm: paused at step 12")
    StateChanged(state=<WorkerState.PAUSED: 'paused'>, detail='tiny-lm: paused at step 12')

`volunteer_app.worker` re-exports every name here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

__all__ = [
    "Connected",
    "Downloading",
    "Notice",
    "StateChanged",
    "TrainingProgress",
    "UnitResult",
    "UnitStarted",
    "WorkerEvent",
    "WorkerState",
]


class WorkerState(StrEnum):
    CONNECTING = "connecting"
    IDLE = "idle"
    DOWNLOADING = "downloading"
    TRAINING = "training"
    PAUSED = "paused"
    SUBMITTING = "submitting"
    BACKOFF = "backoff"
    STOPPED = "stopped"
    ERROR = "error"


@dataclass(frozen=True)
class StateChanged:
    state: WorkerState
    detail: str = ""


@dataclass(frozen=True)
class Connected:
    volunteer_id: str
    server_version: str
    credit_total: float
    dashboard_url: str | None
    registered: bool  # this hello registered a new volunteer


@dataclass(frozen=True)
class UnitStarted:
    unit_id: str
    campaign_id: str
    campaign_name: str
    model_version: int
    steps_total: int
    resumed: bool  # from a local checkpoint or a saved update


@dataclass(frozen=True)
class Downloading:
    sha256: str
    done: int
    total: int
    seconds: float  # since this download (or its resumption) began


@dataclass(frozen=True)
class TrainingProgress:
    unit_id: str
    step: int
    steps_total: int
    loss: float
    tokens: int


@dataclass(frozen=True)
class UnitResult:
    unit_id: str
    status: Literal["accepted", "rejected", "duplicate", "abandoned"]
    code: str | None
    message: str
    credit: float


@dataclass(frozen=True)
class Notice:
    """Something worth a log line that changes nothing: a refused frame, a lost lease."""

    message: str
    code: str | None = None


WorkerEvent = StateChanged | Connected | UnitStarted | Downloading | TrainingProgress | UnitResult | Notice
