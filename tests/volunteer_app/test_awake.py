"""KeepAwake: the inhibitor runs while held, ends on release, and never outlives the app. logind isn't
running here, so the held command is a stand-in (`cat` on the app's pipe, what systemd-inhibit would
run); the systemd-inhibit command line itself is checked as built."""

from __future__ import annotations

import shutil
import signal
import sys
import time

import pytest

from tests.support.processes import app_with_a_child, process_state
from volunteer_app.awake import KeepAwake

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the POSIX inhibitor child")
CAT = shutil.which("cat") or "/bin/cat"


def _running(pid: int) -> bool:
    return process_state(pid) not in ("Z", "X", None)  # a zombie left to a container's init has ended


def _poll(what: str, condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_held_while_asked_once_and_gone_on_release() -> None:
    awake = KeepAwake([CAT], name="stand-in")
    awake.hold("a test")
    child = awake._child
    assert awake.held and child is not None and _running(child.pid)
    awake.hold("again")
    assert awake._child is child
    awake.release()
    assert not awake.held and not _running(child.pid)


def test_the_inhibitor_ends_when_the_app_is_killed() -> None:
    app, held = app_with_a_child(
        "from volunteer_app.awake import KeepAwake\n"
        f"a = KeepAwake([{CAT!r}], name='stand-in'); a.hold('x'); print(a._child.pid, flush=True)"
    )
    assert _running(held)
    app.send_signal(signal.SIGKILL)
    app.wait()
    _poll("the held command to end with the app", lambda: not _running(held))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd-inhibit is Linux's")
def test_on_linux_it_holds_sleep_through_systemd_inhibit_when_there_is_one() -> None:
    awake = KeepAwake.for_this_os()
    if shutil.which("systemd-inhibit") is None:
        assert awake is None
        return
    assert awake is not None and awake.name == "systemd-inhibit" and awake.command is not None
    assert awake.command[1:5] == ["--what=sleep:idle", "--who=Commonweights", "--why={why}", "--mode=block"]
    assert awake.command[-1].endswith("cat")


def test_an_inhibitor_that_dies_by_itself_is_noticed_and_not_respawned_at_every_tick() -> None:
    now = [1000.0]
    awake = KeepAwake([sys.executable, "-c", "pass"], name="short-lived", clock=lambda: now[0])
    awake.hold("x")
    _poll("the short-lived inhibitor to end", lambda: not awake.held)
    awake.hold("again")  # the app asks at its next tick: not yet
    assert awake._child is None
    now[0] += 301
    awake.hold("later")
    assert awake._child is not None
    awake.release()
