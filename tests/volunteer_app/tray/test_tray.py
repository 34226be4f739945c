"""The tray app on a real X server (Xvfb) with a real system tray (trayer): the icon docks, the menu
actions work, and without a tray a normal window appears instead."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from volunteer_app.preferences import Preferences, load_preferences
from volunteer_app.tray.controller import AppState
from volunteer_app.tray.xsession import SystemTray, tree

from .conftest import MakeApp

pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")

WAIT_MS = 5000


def _docked_icons(display: str) -> list[str]:
    """Windows named Commonweights inside trayer's panel (`xwininfo -tree` indents children)."""
    lines = tree(display).splitlines()
    panel = next((i for i, line in enumerate(lines) if '"panel": ("panel" "trayer")' in line), None)
    if panel is None:
        return []
    depth = len(lines[panel]) - len(lines[panel].lstrip())
    inside = []
    for line in lines[panel + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= depth:
            break
        if '"Commonweights"' in line:
            inside.append(line.strip())
    return inside


def test_the_icon_docks_in_the_system_tray_with_a_tooltip(
    qtbot: Any, make_app: MakeApp, system_tray: SystemTray
) -> None:
    desktop, rig = make_app()
    desktop.start()
    assert desktop.tray is not None and desktop.window is None
    qtbot.waitUntil(lambda: desktop.tray is not None and desktop.tray.isVisible(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: len(_docked_icons(system_tray.display)) == 1, timeout=WAIT_MS)
    assert desktop.tray.geometry().width() > 0
    assert desktop.tray.toolTip().startswith("Commonweights — Waiting\nWaiting for idle")
    rig.idle.seconds = 61.0
    qtbot.waitUntil(lambda: desktop.tray is not None and desktop.tray.state is AppState.TRAINING, timeout=WAIT_MS)
    assert desktop.tray.toolTip().startswith("Commonweights — Training")


def test_pause_and_snooze_from_the_menu_change_the_icon_and_tooltip(
    qtbot: Any, make_app: MakeApp, system_tray: SystemTray
) -> None:
    desktop, rig = make_app()
    desktop.start()
    rig.idle.seconds = 61.0
    qtbot.waitUntil(lambda: bool(rig.children) and not rig.child.paused, timeout=WAIT_MS)
    tray, actions = desktop.tray, desktop.actions
    assert tray is not None
    menu_texts = [a.text() for a in tray.menu.actions() if not a.isSeparator()]
    assert menu_texts[1:] == [
        "Pause",
        "Snooze for 1 hour",
        "Settings…",
        "Statistics…",
        "Open dashboard",
        "Quit Commonweights",
    ]

    actions.pause_resume.trigger()
    qtbot.waitUntil(lambda: tray.state is AppState.PAUSED, timeout=WAIT_MS)
    assert rig.child.paused and actions.pause_resume.text() == "Resume"
    assert tray.toolTip().startswith("Commonweights — Paused")
    actions.pause_resume.trigger()
    qtbot.waitUntil(lambda: tray.state is AppState.TRAINING, timeout=WAIT_MS)
    assert not rig.child.paused

    actions.snooze.trigger()
    qtbot.waitUntil(lambda: tray.state is AppState.SNOOZED, timeout=WAIT_MS)
    until = rig.controller.status.snoozed_until
    assert until is not None and rig.child.paused
    assert f"Snoozed until {until:%H:%M}" in tray.toolTip()
    assert actions.snooze.text() == "Cancel snooze"
    assert load_preferences(rig.prefs_path).snooze_until == until
    actions.snooze.trigger()
    qtbot.waitUntil(lambda: tray.state is AppState.TRAINING, timeout=WAIT_MS)


def test_the_dashboard_action_opens_the_coordinators_page(
    qtbot: Any, make_app: MakeApp, system_tray: SystemTray
) -> None:
    opened: list[str] = []
    desktop, _ = make_app(
        Preferences(coordinator_url="ws://127.0.0.1:8470/ws"), open_url=lambda url: opened.append(url.toString())
    )
    desktop.start()
    desktop.actions.dashboard.trigger()
    assert opened == ["http://127.0.0.1:8470/"]


def test_without_a_tray_a_normal_window_appears_and_works(qtbot: Any, make_app: MakeApp, no_tray: str) -> None:
    from PySide6.QtWidgets import QSystemTrayIcon

    assert not QSystemTrayIcon.isSystemTrayAvailable()
    desktop, rig = make_app()
    desktop.start()
    window = desktop.window
    assert desktop.tray is None and window is not None
    qtbot.waitUntil(window.isVisible, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: re.search(r'"Commonweights": \("[^"]*" "[^"]*"\)', tree(no_tray)) is not None)
    assert window.state_label.text() == "Waiting"
    window.buttons["pause_resume"].click()
    qtbot.waitUntil(lambda: window.state_label.text() == "Paused", timeout=WAIT_MS)
    assert window.buttons["pause_resume"].text() == "Resume"
    rig.controller.notify("crashed", "Training process crashed", "killed by <SIGKILL>")
    assert window.banner.isVisible() and "&lt;SIGKILL&gt;" in window.banner.text()


def test_losing_the_tray_brings_up_the_window(qtbot: Any, make_app: MakeApp, system_tray: SystemTray) -> None:
    desktop, _ = make_app()
    desktop.tray_timer.setInterval(50)
    desktop.start()
    assert desktop.window is None
    system_tray.stop()
    qtbot.waitUntil(lambda: desktop.window is not None and desktop.window.isVisible(), timeout=WAIT_MS)


def test_a_second_launch_brings_the_first_forward(qtbot: Any, make_app: MakeApp, tmp_path: Path, no_tray: str) -> None:
    from volunteer_app.tray.single_instance import SingleInstance, instance_key

    prefs_path = tmp_path / "preferences.toml"
    instance = SingleInstance(instance_key(prefs_path))
    assert instance.claim()
    desktop, _ = make_app(instance=instance)
    desktop.start()
    second = subprocess.Popen(
        [sys.executable, "-m", "volunteer_app.tray.main", "--preferences", str(prefs_path), "--show", "settings"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    qtbot.waitUntil(lambda: second.poll() is not None, timeout=30_000)
    assert second.returncode == 0, second.stdout.read() if second.stdout else ""
    qtbot.waitUntil(lambda: desktop.settings_dialog is not None and desktop.settings_dialog.isVisible())
    assert not SingleInstance(instance.key).claim("statistics")  # in-process too: refused, request delivered
    qtbot.waitUntil(lambda: desktop.statistics_window is not None and desktop.statistics_window.isVisible())
