"""DutyCycle: a process held to a share of the CPU by suspending it for the rest of each period."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.processes import app_with_a_child, process_state
from volunteer_app.duty import DutyCycle

pytestmark = pytest.mark.skipif(not DutyCycle.supported(), reason="SIGSTOP/SIGCONT are POSIX only")


class Recorder:
    def __init__(self, *, gone_after: int | None = None) -> None:
        self.sent: list[int] = []
        self.gone_after = gone_after
        self.lock = threading.Lock()

    def __call__(self, pid: int, which: int) -> None:
        with self.lock:
            if self.gone_after is not None and len(self.sent) >= self.gone_after:
                raise ProcessLookupError(pid)
            self.sent.append(which)


def _poll(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_it_alternates_stop_and_continue_and_always_ends_with_the_process_running() -> None:
    recorder = Recorder()
    cycle = DutyCycle(4242, 50, period_s=0.02, signal_process=recorder)
    cycle.start()
    _poll(lambda: cycle.cycles >= 3)
    cycle.stop()
    sent = recorder.sent
    assert sent[:4] == [signal.SIGSTOP, signal.SIGCONT, signal.SIGSTOP, signal.SIGCONT]
    assert sent[-1] == signal.SIGCONT
    assert all(a != b for a, b in itertools.pairwise(sent) if a == signal.SIGSTOP)  # never stopped twice


def test_a_full_share_never_touches_the_process_and_a_vanished_one_ends_the_cycle() -> None:
    untouched = Recorder()
    full = DutyCycle(4242, 100, period_s=0.02, signal_process=untouched)
    full.start()
    full.stop()
    assert untouched.sent == [signal.SIGCONT]  # stop() always leaves it running; nothing else was sent
    gone = Recorder(gone_after=1)
    cycle = DutyCycle(4242, 30, period_s=0.02, signal_process=gone)
    cycle.start()
    _poll(lambda: not cycle._thread or not cycle._thread.is_alive())
    cycle.stop()
    assert gone.sent == [signal.SIGSTOP]


@pytest.mark.parametrize("percent", [0, 101])
def test_a_share_outside_1_to_100_is_refused(percent: int) -> None:
    with pytest.raises(ValueError, match="from 1 to 100"):
        DutyCycle(1, percent)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc (Linux)")
def test_a_busy_process_gets_about_its_share_compared_with_an_unheld_one_in_the_same_run() -> None:
    """Two identical busy loops side by side, one held to 30 %: the held one's CPU time is about 30 % of
    the other's (a ratio, so a loaded machine slows both alike)."""
    busy = [sys.executable, "-c", "while True: pass"]
    held, free = subprocess.Popen(busy), subprocess.Popen(busy)
    cycle = DutyCycle(held.pid, 30, period_s=0.1)
    try:
        cycle.start()
        start = (_cpu_seconds(held.pid), _cpu_seconds(free.pid))
        _poll(lambda: _cpu_seconds(free.pid) - start[1] >= 3.0, timeout=60)
        ratio = (_cpu_seconds(held.pid) - start[0]) / (_cpu_seconds(free.pid) - start[1])
    finally:
        cycle.stop()
        for process in (held, free):
            process.kill()
            process.wait()
    assert 0.15 <= ratio <= 0.45, f"the held process ran {ratio:.2f} of the free one's CPU time"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_training_child_left_stopped_dies_with_the_app() -> None:
    """The app SIGKILLed while its child is stopped (mid duty cycle): the kernel ends the child anyway."""
    child = (
        "import os, signal, time; from volunteer_app.tray.child import die_with_parent; die_with_parent(); "
        "os.kill(os.getpid(), signal.SIGSTOP); time.sleep(600)"
    )
    app, pid = app_with_a_child(
        f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', {child!r}]); print(p.pid, flush=True)"
    )
    _poll(lambda: process_state(pid) == "T")  # stopped, as the duty cycle leaves it
    app.kill()
    app.wait()
    _poll(lambda: process_state(pid) in ("Z", "X", None))


def test_a_full_share_set_lower_while_running_starts_holding_the_process() -> None:
    """How the GPU cap arrives: the cycle starts at the CPU's 100 %, and the GPU's share is set once the
    training process says it chose a GPU."""
    recorder = Recorder()
    cycle = DutyCycle(4242, 100, period_s=0.02, signal_process=recorder)
    cycle.start()
    assert recorder.sent == []
    cycle.set_percent(40)
    _poll(lambda: cycle.cycles >= 2)
    cycle.stop()
    assert recorder.sent[:2] == [signal.SIGSTOP, signal.SIGCONT] and recorder.sent[-1] == signal.SIGCONT
    with pytest.raises(ValueError, match="from 1 to 100"):
        cycle.set_percent(0)
