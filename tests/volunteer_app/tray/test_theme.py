"""Light or dark: the app follows the desktop's scheme or the volunteer's choice, under a real X server
(Xvfb) where Qt itself knows no scheme, as on a bare X11 session."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from volunteer_app.preferences import Preferences
from volunteer_app.tray.theme import desktop_scheme

from .conftest import MakeApp

pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")


def _window_luminance() -> float:
    from PySide6.QtGui import QPalette
    from PySide6.QtWidgets import QApplication

    colour = QApplication.palette().color(QPalette.ColorRole.Window)
    return 0.2126 * colour.redF() + 0.7152 * colour.greenF() + 0.0722 * colour.blueF()


def test_gtk_theme_names_the_desktops_scheme() -> None:
    assert desktop_scheme({"GTK_THEME": "Adwaita:dark"}) == "dark"
    assert desktop_scheme({"GTK_THEME": "Arc-Dark"}) == "dark"
    assert desktop_scheme({"GTK_THEME": "Adwaita"}) == "light"
    if shutil.which("gsettings") is None:
        assert desktop_scheme({}) is None  # nothing says: the app stays light


def test_the_app_turns_dark_and_light_as_chosen_and_follows_a_dark_desktop(
    qtbot: Any, make_app: MakeApp, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("GTK_THEME", "Adwaita:dark")  # the desktop is dark
    desktop, rig = make_app(Preferences(idle_minutes=1, coordinator_url="ws://127.0.0.1:9/ws"))
    desktop.start()
    assert desktop.theme == "dark" and _window_luminance() < 0.3
    desktop.actions.settings.trigger()
    dialog = desktop.settings_dialog
    assert dialog is not None and dialog.theme.currentText() == "system"
    shots = os.environ.get("COMMONWEIGHTS_SCREENSHOTS")
    if shots:
        qtbot.waitExposed(dialog)
        dialog.grab().save(os.path.join(shots, "app-settings-dark.png"))
    dialog.theme.setCurrentText("light")  # the volunteer prefers light whatever the desktop says
    dialog.buttons.button(dialog.buttons.StandardButton.Apply).click()
    assert rig.controller.preferences.theme == "light"
    assert desktop.theme == "light" and _window_luminance() > 0.7
    monkeypatch.setenv("GTK_THEME", "Adwaita")
    dialog.theme.setCurrentText("dark")
    dialog.buttons.button(dialog.buttons.StandardButton.Apply).click()
    assert desktop.theme == "dark" and _window_luminance() < 0.3
    dialog.theme.setCurrentText("system")  # back to following a (now light) desktop
    dialog.buttons.button(dialog.buttons.StandardButton.Apply).click()
    assert desktop.theme == "light" and _window_luminance() > 0.7
