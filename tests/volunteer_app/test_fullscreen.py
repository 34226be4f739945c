"""Full-screen windows, seen on a real X server (Xvfb) with real Qt windows in processes of their own:
none, a normal window, a full-screen one, and the window manager's active window (xprop plays the
window manager's part, setting `_NET_ACTIVE_WINDOW` on the root). Windows' SHQueryUserNotificationState
is not reachable here."""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from tests.volunteer_app.test_idle_x11 import start_xvfb
from volunteer_app.fullscreen import X11Fullscreen
from volunteer_app.policy import ComputePolicy, ManualClock, Observation, RunState
from volunteer_app.preferences import Preferences

_MISSING = [
    what
    for what, present in [
        ("Xvfb (Debian package xvfb)", shutil.which("Xvfb")),
        ("libX11 (Debian package libx11-6)", ctypes.util.find_library("X11")),
        ("PySide6 (for real windows)", importlib.util.find_spec("PySide6")),
    ]
    if not present
]
needs_x = pytest.mark.skipif(bool(_MISSING), reason="needs " + ", ".join(_MISSING))

WINDOW = (
    "from PySide6.QtWidgets import QApplication, QWidget; app = QApplication([]); w = QWidget(); w.{}(); app.exec()"
)


def _poll(what: str, condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def display() -> Iterator[str]:
    server, name = start_xvfb()
    try:
        yield name
    finally:
        server.kill()
        server.wait()


@needs_x
def test_a_full_screen_window_is_seen_and_a_normal_one_is_not(display: str) -> None:
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
    watcher = X11Fullscreen(display)
    windows: list[subprocess.Popen[bytes]] = []
    try:
        assert watcher.fullscreen() is False  # an empty screen
        before = {w for w in watcher._children() if watcher._viewable(w)}
        windows.append(subprocess.Popen([sys.executable, "-c", WINDOW.format("show")], env=env))
        _poll("the normal window", lambda: {w for w in watcher._children() if watcher._viewable(w)} != before)
        normal = next(w for w in watcher._children() if watcher._viewable(w) and w not in before)
        assert watcher.fullscreen() is False
        full = subprocess.Popen([sys.executable, "-c", WINDOW.format("showFullScreen")], env=env)
        windows.append(full)
        _poll("the full-screen window to be seen", lambda: watcher.fullscreen() is True)
        if shutil.which("xprop"):  # a window manager names the active window: only that one counts
            subprocess.run(
                ["xprop", "-root", "-f", "_NET_ACTIVE_WINDOW", "32x", "-set", "_NET_ACTIVE_WINDOW", hex(normal)],
                env=env,
                check=True,
                timeout=10,
            )
            _poll("the active normal window to count", lambda: watcher.fullscreen() is False)
            subprocess.run(["xprop", "-root", "-remove", "_NET_ACTIVE_WINDOW"], env=env, check=True, timeout=10)
        full.kill()
        full.wait()
        _poll("the full-screen window's end", lambda: watcher.fullscreen() is False)
    finally:
        for window in windows:
            window.kill()
            window.wait()
        watcher.close()
    assert watcher.fullscreen() is None  # closed: no answer rather than a crash


def test_the_policy_pauses_for_a_full_screen_window_unless_told_not_to() -> None:
    clock = ManualClock(datetime(2026, 12, 3, tzinfo=UTC))
    policy = ComputePolicy(Preferences(idle_minutes=0), clock)
    decision = policy.decide(Observation(idle_seconds=600, fullscreen=True))
    assert decision.state is RunState.SUSPEND and decision.reason == "a window is full screen"
    policy.preferences = Preferences(idle_minutes=0, suspend_while_fullscreen=False)
    assert policy.decide(Observation(idle_seconds=600, fullscreen=True)).state is RunState.RUN
    assert policy.decide(Observation(idle_seconds=600, fullscreen=None)).state is RunState.RUN


@needs_x
def test_a_lost_x_server_answers_none_instead_of_ending_the_app() -> None:
    server, name = start_xvfb()
    watcher = X11Fullscreen(name)
    if not hasattr(watcher._x, "XSetIOErrorExitHandler"):
        server.kill()
        pytest.skip("libX11 before 1.7 can only exit() on a lost connection")
    assert watcher.fullscreen() is False
    server.kill()
    server.wait()
    _poll("the lost connection to be noticed", lambda: watcher.fullscreen() is None)
    watcher.close()  # a lost connection is left to the OS, not closed through Xlib
