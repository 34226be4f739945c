"""Fallback idle sources for sessions where no OS backend can see keyboard and mouse input.

Both say so in their `name` and `description`, and neither ever reports "always idle":

- `CpuLoadIdleGuess`: a *guess* from CPU load: the machine counts as idle for as long as other
  programs have kept the CPU below a threshold. A person reading or typing uses almost no CPU, so this
  can start work while someone sits at the machine; it is offered, labelled, only where nothing
  better exists.
- `ManualIdleSource`: no guess at all; `idle_seconds()` is always None and the policy runs work only
  when the volunteer says so ("idle detection unavailable — manual mode").

    >>> source = ManualIdleSource(reason="no X display and no D-Bus")
    >>> source.idle_seconds() is None
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable

from volunteer_app.idle.cpu_load import OtherCpuLoad


class ManualIdleSource:
    """Never knows whether the user is there: the policy falls back to manual mode.

    `reason` says why the OS backends were passed over, for a "details" line in the settings dialog.
    """

    name = "manual"

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    @property
    def description(self) -> str:
        return (
            "Idle detection unavailable — manual mode: work runs only when you choose Resume, "
            "and stops when you choose Pause."
        )

    def idle_seconds(self) -> float | None:
        return None


class CpuLoadIdleGuess:
    """Seconds since other programs last used more than `busy_threshold` of the CPU (a guess)."""

    name = "cpu-load-guess"

    def __init__(
        self,
        meter: OtherCpuLoad | None = None,
        *,
        busy_threshold: float = 0.10,
        clock: Callable[[], float] = time.monotonic,
        reason: str = "",
    ) -> None:
        if not 0.0 < busy_threshold <= 1.0:
            raise ValueError(f"busy_threshold must be in (0, 1], got {busy_threshold}")
        self._meter = meter if meter is not None else OtherCpuLoad()
        self._threshold = busy_threshold
        self._clock = clock
        self.reason = reason
        self._meter.sample()  # prime the meter
        # Starting up counts as activity: the guess has to watch a full idle period first.
        self._last_busy = clock()

    @property
    def description(self) -> str:
        return (
            "Guessing idleness from CPU load: the keyboard and mouse cannot be seen, so the PC "
            f"counts as idle while other programs use under {self._threshold:.0%} of the CPU. "
            "This can start work while you read or type."
        )

    def idle_seconds(self) -> float | None:
        load = self._meter.sample()
        now = self._clock()
        if load is None and not self._meter.readable:
            return None
        if load is not None and load > self._threshold:
            self._last_busy = now
        return max(0.0, now - self._last_busy)
