"""The two small interfaces every idle and power backend implements, and their errors.

A backend answers one question cheaply enough to be asked about once a second:

    source = detect_idle_source()
    source.idle_seconds()   # 12.5: seconds since the last keyboard or mouse input

`None` means "cannot tell right now" (a transient failure, or a backend that never can); callers
treat it as unknown, never as idle.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class IdleSource(Protocol):
    """Seconds since the user last touched the keyboard or mouse.

    `name` is a short stable id ("x11", "windows", "cpu-load-guess"); `description` is a sentence a
    volunteer can read in the settings dialog, saying where the number comes from.
    """

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    def idle_seconds(self) -> float | None: ...


@runtime_checkable
class PowerSource(Protocol):
    """Whether the machine is running on battery.

    A machine without a battery is never on battery. `None` means the OS could not tell.
    """

    @property
    def name(self) -> str: ...

    def on_battery(self) -> bool | None: ...


class BackendUnavailable(Exception):
    """A backend cannot work in this session; `reason` says why, in words for the settings dialog."""

    code = "idle.backend_unavailable"

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend}: {reason}")
        self.backend = backend
        self.reason = reason
