"""A CPU-time cap that holds whatever the training does: the process is run for `percent` of every period
and suspended for the rest, as BOINC does for "use at most X % of CPU time".

    >>> cycle = DutyCycle(child_pid, percent=40)      # runs 0.4 s, stopped 0.6 s, each second
    >>> cycle.start()
    >>> cycle.stop()                                  # continued for good (before asking it to stop)

A per-step rest inside the trainer (`worker.Throttle`) can only act between steps, and a step of a
large model lasts seconds to minutes: its share swings around the cap. Suspending the whole process
every period keeps the share within the period's granularity, whatever a step costs, and needs nothing
from the trainer. POSIX only (SIGSTOP/SIGCONT); on Windows the app falls back to `worker.Throttle`.

The suspended process is the training child, which holds no lock the app needs; its connection to
the coordinator waits out a stop of at most one period, well under any protocol timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable

__all__ = ["PERIOD_S", "DutyCycle"]

log = logging.getLogger(__name__)

PERIOD_S = 1.0  # BOINC's throttle period too: short enough for a steady share, long against signal costs


class DutyCycle:
    def __init__(
        self,
        pid: int,
        percent: int,
        *,
        period_s: float = PERIOD_S,
        signal_process: Callable[[int, int], None] = os.kill,
    ) -> None:
        if not 1 <= percent <= 100:
            raise ValueError(f"percent must be from 1 to 100, got {percent}")
        self.pid = pid
        self.percent = percent
        self.period_s = period_s
        self._signal = signal_process
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.cycles = 0  # periods completed (the app's diagnostics, and tests)

    @staticmethod
    def supported() -> bool:
        return hasattr(signal, "SIGSTOP") and hasattr(signal, "SIGCONT")

    def start(self) -> None:
        if self.percent >= 100 or self._thread is not None or self._stopping.is_set():
            return
        self._thread = threading.Thread(target=self._run, name="commonweights-duty-cycle", daemon=True)
        self._thread.start()

    def set_percent(self, percent: int) -> None:
        """Hold the process to `percent` from the next period on (100: let it run, checking each period)."""
        if not 1 <= percent <= 100:
            raise ValueError(f"percent must be from 1 to 100, got {percent}")
        self.percent = percent
        self.start()

    def stop(self) -> None:
        """End the cycle with the process running (its last SIGCONT is sent before this returns)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.period_s)
        self._continue()

    def _run(self) -> None:
        try:
            while not self._stopping.wait(self.period_s * self.percent / 100):
                if self.percent >= 100:
                    continue  # set back to 100 %: no stop this period
                self._send(signal.SIGSTOP)
                self._stopping.wait(self.period_s * (100 - self.percent) / 100)
                self._continue()
                self.cycles += 1
        except ProcessLookupError:  # the process ended: nothing left to hold
            return

    def _continue(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._send(signal.SIGCONT)

    def _send(self, which: int) -> None:
        self._signal(self.pid, which)
