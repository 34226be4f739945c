"""The typed messages between the tray app and its training child, and their byte encoding.

Both processes are ours, but the child handles whatever the network sends, so nothing crossing the
pipe is pickled: each message is one of the flat dataclasses below, written as JSON with a type tag
and checked field by field against its annotations on the way back in. Floats may be NaN or
infinite (a diverged loss is).

    >>> decode(encode(Pause()))
    Pause()
    >>> decode(encode(TrainingProgress("u1", 3, 50, 4.2, 192)))
    TrainingProgress(unit_id='u1', step=3, steps_total=50, loss=4.2, tokens=192)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal, Union, get_args, get_origin, get_type_hints

from volunteer_app.events import (
    Connected,
    Downloading,
    Notice,
    StateChanged,
    TrainingProgress,
    UnitResult,
    UnitStarted,
    WorkerEvent,
)

__all__ = [
    "ChildConfig",
    "ChildExited",
    "ChildFinished",
    "ChildMessage",
    "ChildReady",
    "Command",
    "DeviceChosen",
    "IpcError",
    "Pause",
    "Resume",
    "Stop",
    "decode",
    "encode",
]

MAX_MESSAGE_BYTES: Final = 1 << 20
MAX_ITEMS: Final = 64  # the longest list a message holds (GPU numbers)


class IpcError(ValueError):
    """A message that is not one of ours, or whose fields do not match their types."""

    code = "app.bad_message"


# --- app → child ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """Stop at the next step boundary, checkpoint, free the GPU; answered by StateChanged(PAUSED)."""


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Stop:
    """Finish the step, checkpoint, say goodbye to the coordinator and exit."""


Command = Pause | Resume | Stop


@dataclass(frozen=True)
class ChildConfig:
    """What the child needs to build its `WorkerConfig`; sent once, as the process's argument."""

    coordinator_url: str
    device: str = "auto"
    threads: int | None = None
    cpu_percent: int = 100
    gpu_percent: int = 100  # the share of time on a GPU: the app holds the process to it once a GPU is chosen
    gpus: tuple[int, ...] = ()  # the GPUs it may use, by index (CUDA_VISIBLE_DEVICES); empty: all
    memory_limit: int | None = None
    name: str | None = None
    config_dir: str | None = None
    cache_dir: str | None = None
    data_dir: str | None = None
    start_paused: bool = True
    progress_interval_s: float = 0.2  # at most this often a TrainingProgress; the last step always goes
    nice: int = 19  # lower the CPU priority by this much (POSIX); 19: only CPU time nobody else wants
    # The training environment's interpreter (volunteer_app.environment); None: this process's, via
    # multiprocessing (a development install, where the app's environment has torch).
    python: str | None = None


# --- child → app ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildReady:
    """The child is up (before it loads torch)."""

    pid: int


@dataclass(frozen=True)
class DeviceChosen:
    kind: str  # cpu, cuda, mps
    name: str
    memory_bytes: int


@dataclass(frozen=True)
class ChildFinished:
    """The worker's run returned; the process exits next."""

    units: int
    credit: float
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True)
class ChildExited:
    """Not sent over the pipe: the app's own note that the child process is gone."""

    exitcode: int | None  # negative: killed by that signal
    expected: bool  # the app asked it to stop
    finished: bool  # a ChildFinished arrived first


ChildMessage = ChildReady | DeviceChosen | ChildFinished | ChildExited | WorkerEvent

_TYPES: Final[dict[str, type[Any]]] = {
    cls.__name__: cls
    for cls in (
        Pause,
        Resume,
        Stop,
        ChildConfig,
        ChildReady,
        DeviceChosen,
        ChildFinished,
        StateChanged,
        Connected,
        UnitStarted,
        Downloading,
        TrainingProgress,
        UnitResult,
        Notice,
    )
}


def encode(message: object) -> bytes:
    name = type(message).__name__
    if _TYPES.get(name) is not type(message):
        raise IpcError(f"{name} is not an app message")
    fields = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}  # type: ignore[arg-type]
    return json.dumps({"type": name, **fields}, separators=(",", ":")).encode()


def decode(data: bytes) -> Any:
    """The message in `data`; IpcError for anything that is not exactly one of ours."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise IpcError(f"message of {len(data)} bytes is over the {MAX_MESSAGE_BYTES} limit")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IpcError(f"not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise IpcError("a message is a JSON object")
    cls = _TYPES.get(raw.pop("type", None))
    if cls is None:
        raise IpcError("unknown message type")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if set(raw) - names:
        raise IpcError(f"{cls.__name__} has no fields {sorted(set(raw) - names)}")
    values = {name: _check(value, hints[name], f"{cls.__name__}.{name}") for name, value in raw.items()}
    try:
        return cls(**values)
    except TypeError as error:  # a required field is missing
        raise IpcError(f"{cls.__name__}: {error}") from None


def _check(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            try:
                return _check(value, option, where)
            except IpcError:
                continue
        raise IpcError(f"{where}: {value!r} does not fit {hint}")
    if origin is tuple:  # tuple[T, ...]: a JSON list of at most MAX_ITEMS
        item = get_args(hint)[0]
        if isinstance(value, list) and len(value) <= MAX_ITEMS:
            return tuple(_check(v, item, f"{where}[]") for v in value)
        raise IpcError(f"{where}: {value!r} is not a list of at most {MAX_ITEMS} items")
    if origin is Literal:
        if value in get_args(hint):
            return value
        raise IpcError(f"{where}: {value!r} is not one of {get_args(hint)}")
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        with contextlib.suppress(ValueError):
            return hint(value)
    elif hint in _PLAIN and _PLAIN[hint](value):
        return float(value) if hint is float else value
    raise IpcError(f"{where}: {value!r} is not a {getattr(hint, '__name__', hint)}")


_PLAIN: Final[dict[Any, Callable[[Any], bool]]] = {
    type(None): lambda v: v is None,
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}
