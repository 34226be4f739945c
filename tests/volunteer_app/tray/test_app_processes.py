"""The app with real processes and real input: a training child that crashes is reported and
restarted while the UI carries on, and xdotool input on the X server pauses training."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from volunteer_app.idle.x11 import X11IdleSource
from volunteer_app.policy import SystemClock
from volunteer_app.preferences import Preferences
from volunteer_app.tray.controller import AppController, AppPaths, AppState, ControllerTuning

from .conftest import MakeApp
from .fakes import FakeIdle, FakePower

pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")

CHILD_START_MS = 60_000  # spawning Python and importing torch, on a slow shared runner


def test_a_crashing_training_process_is_reported_and_restarted(qtbot: Any, qapp: Any, tmp_path: Path) -> None:
    from volunteer_app.tray.app import DesktopApp

    ready: list[int] = []  # pids of training processes that said hello

    def trace(kind: str, fields: Mapping[str, object]) -> None:
        if kind == "child" and fields.get("event") == "ready":
            ready.append(int(str(fields["pid"])))

    controller = AppController(
        Preferences(idle_minutes=1, coordinator_url="ws://127.0.0.1:9/ws"),  # nobody listens: backoff
        idle_source=FakeIdle(600.0),
        power_source=FakePower(),
        paths=AppPaths(tmp_path / "config", tmp_path / "cache", tmp_path / "data"),
        tuning=ControllerTuning(restart_delays_s=(0.5,)),
        trace=trace,
    )
    desktop = DesktopApp(controller, poll_interval_s=0.1, use_tray=False)
    try:
        desktop.start()
        qtbot.waitUntil(lambda: len(ready) == 1, timeout=CHILD_START_MS)
        os.kill(ready[0], signal.SIGKILL)  # like the kernel's out-of-memory killer
        qtbot.waitUntil(lambda: controller.status.state is AppState.ERROR, timeout=10_000)
        assert controller.status.headline.startswith("The training process stopped unexpectedly (killed by SIGKILL)")
        assert [n.kind for n in desktop.notifier.shown] == ["crashed"]
        assert desktop.window is not None and desktop.window.state_label.text() == "Error"
        assert desktop.window.banner.isVisible()
        qtbot.waitUntil(lambda: len(ready) == 2, timeout=CHILD_START_MS)
        assert ready[1] != ready[0] and controller.child_pid == ready[1]
        qtbot.waitUntil(lambda: controller.status.state is not AppState.ERROR, timeout=10_000)
    finally:
        desktop.shutdown()
    assert controller.child_pid is None


def test_xdotool_input_pauses_training_within_a_second(qtbot: Any, make_app: MakeApp, xdisplay: str) -> None:
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool is not installed (apt-get install xdotool)")
    # The test display's real X11 idle counter and the real clock; a recording child.
    desktop, rig = make_app(Preferences(idle_minutes=0.02), idle=X11IdleSource(xdisplay), clock=SystemClock())
    desktop.start()
    qtbot.waitUntil(lambda: bool(rig.children) and not rig.child.paused, timeout=10_000)  # idle for 1.2 s
    subprocess.run(["xdotool", "mousemove", "17", "23"], env={**os.environ, "DISPLAY": xdisplay}, check=True)
    qtbot.waitUntil(lambda: rig.child.paused, timeout=1000)
    qtbot.waitUntil(lambda: rig.controller.status.state is AppState.WAITING, timeout=1000)
