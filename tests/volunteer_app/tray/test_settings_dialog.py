"""The settings dialog: what it shows comes from the preferences file, what it saves goes back to
it (and takes effect at once), and a bad value is pointed out instead of saved."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Any

import pytest

from volunteer_app.autostart import XdgAutostart
from volunteer_app.preferences import Preferences, load_preferences
from volunteer_app.tray.settings_dialog import parse_windows

from .conftest import MakeApp

pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")


def test_settings_round_trip_through_the_toml_file_and_apply_at_once(
    qtbot: Any, make_app: MakeApp, tmp_path: Path
) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QDialogButtonBox

    autostart = XdgAutostart(tmp_path / "xdg")
    prefs = Preferences(idle_minutes=1, coordinator_url="ws://127.0.0.1:9/ws", extra={"future_key": 1})
    desktop, rig = make_app(prefs, autostart=autostart)
    desktop.start()
    desktop.actions.settings.trigger()
    dialog = desktop.settings_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.coordinator_url.text() == "ws://127.0.0.1:9/ws" and dialog.idle_minutes.value() == 1.0

    dialog.coordinator_url.setText("https://weights.example.org")
    dialog.idle_minutes.setValue(7.5)
    dialog.time_windows.setText("22:00-07:00, 12:00–13:30")
    dialog.cpu_cores.setValue(1)
    dialog.gpu_memory_limit_mb.setValue(2048)
    dialog.device.setCurrentText("cpu")
    dialog.run_on_battery.setChecked(True)
    dialog.autostart.setChecked(True)
    dialog.pause_above_celsius.setValue(88)
    dialog.exclusive_programs.setText("steam, Blender.exe,")
    dialog.suspend_while_fullscreen.setChecked(False)
    dialog.keep_awake_on_ac.setChecked(True)
    dialog.gpu_percent.setValue(60)
    dialog.gpus.setText("1, 0")
    qtbot.mouseClick(dialog.buttons.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton)
    assert not dialog.isVisible() and not dialog.error.isVisible()

    saved = load_preferences(rig.prefs_path)
    assert saved.coordinator_url == "https://weights.example.org"
    assert (saved.idle_minutes, saved.cpu_cores, saved.gpu_memory_limit_mb, saved.device) == (7.5, 1, 2048, "cpu")
    assert [(w.start, w.end) for w in saved.time_windows] == [(time(22), time(7)), (time(12), time(13, 30))]
    assert saved.run_on_battery and saved.autostart and saved.extra == {"future_key": 1}
    assert saved.pause_above_celsius == 88 and saved.exclusive_programs == ("steam", "Blender.exe")
    assert not saved.suspend_while_fullscreen and saved.keep_awake_on_ac
    assert (saved.gpu_percent, saved.gpus) == (60, (0, 1))
    assert rig.controller.preferences == saved  # in effect now
    assert autostart.is_enabled()

    desktop.actions.settings.trigger()  # opens again with what was saved
    assert dialog.time_windows.text() == "22:00-07:00, 12:00-13:30" and dialog.idle_minutes.value() == 7.5
    assert dialog.exclusive_programs.text() == "steam, Blender.exe" and dialog.pause_above_celsius.value() == 88


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("coordinator_url", "ftp://nowhere", "Coordinator url: must be an http(s):// or ws(s):// address"),
        ("time_windows", "22:00", "Time windows: write a window as start-end"),
        ("time_windows", "25:00-07:00", "Time windows: is not a time of day: '25:00'"),
        ("time_windows", "09:00-09:00", "Time windows: window 09:00–09:00 starts and ends at the same time"),
    ],
)
def test_an_invalid_value_is_shown_next_to_its_field_and_nothing_is_saved(
    qtbot: Any, make_app: MakeApp, field: str, value: str, message: str
) -> None:
    desktop, rig = make_app()
    desktop.start()
    desktop.show_settings()
    dialog = desktop.settings_dialog
    assert dialog is not None
    before = rig.prefs_path.read_text()
    getattr(dialog, field).setText(value)
    assert not dialog.apply()
    assert dialog.isVisible() and dialog.error.isVisible()
    assert dialog.error.text().startswith(message)
    assert "border" in dialog.fields[field].styleSheet()
    assert rig.prefs_path.read_text() == before


def test_time_windows_are_written_start_dash_end() -> None:
    assert parse_windows(" 22:00 - 07:00 ,, 12:00–13:00") == [("22:00", "07:00"), ("12:00", "13:00")]
    assert parse_windows("") == []


def test_an_installed_apps_settings_set_up_pytorch_again_at_the_next_start(
    qtbot: Any, qapp: Any, tmp_path: Path
) -> None:
    from volunteer_app.environment import STEPS, TrainingEnvironment
    from volunteer_app.tray.settings_dialog import SettingsDialog

    env = TrainingEnvironment(tmp_path / "training-env")
    env.interpreter.parent.mkdir(parents=True)
    env.interpreter.write_text("")  # what setup made, as far as the app can tell
    (env.root / "setup.json").write_text('{"app_version": "1", "done": ' + str(list(STEPS)).replace("'", '"') + "}")
    assert env.python() == env.interpreter
    dialog = SettingsDialog(Preferences(), apply=lambda prefs: None, rebuild=env.request_rebuild)
    qtbot.addWidget(dialog)
    assert dialog.rebuild is not None
    dialog.rebuild.click()
    assert env.python() is None, "the next start sets PyTorch up again"
    assert env.status()["done"] == ["python"], "the Python itself is kept"
    assert not dialog.rebuild.isEnabled() and "next starts" in dialog.rebuild.text()
    # A development install has no such button: it trains in its own Python.
    plain = SettingsDialog(Preferences(), apply=lambda prefs: None)
    qtbot.addWidget(plain)
    assert plain.rebuild is None
