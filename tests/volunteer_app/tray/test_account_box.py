"""The settings dialog's Account box under Xvfb, against a real coordinator process: it says whether this
machine is in an account, links it with a code from the dashboard, and shows a pause made there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import live_coordinator
from tests.volunteer_app.test_account import account_with_code, register
from volunteer_app.preferences import Preferences

from .conftest import MakeApp

pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")

ANSWER_MS = 20_000  # a bound on the coordinator's answer, not a sleep


def test_the_settings_link_this_machine_to_an_account_and_show_a_pause_made_there(
    qtbot: Any, make_app: MakeApp, tmp_path: Path, small_dataset: Path
) -> None:
    from PySide6.QtCore import Qt

    with live_coordinator(tmp_path, small_dataset) as server:
        desktop, _ = make_app(Preferences(idle_minutes=1, coordinator_url=server.url))
        volunteer_id = register(server, tmp_path / "config")  # the rig's config dir: the app's first start
        desktop.start()
        desktop.actions.settings.trigger()
        dialog = desktop.settings_dialog
        assert dialog is not None and dialog.account is not None
        box = dialog.account
        qtbot.waitUntil(lambda: "In no account" in box.state.text(), timeout=ANSWER_MS)

        box.code.setText("AAAA-AAAA")
        qtbot.mouseClick(box.link_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "expired" in box.state.text(), timeout=ANSWER_MS)
        assert box.link_button.isEnabled()

        key, code = account_with_code(server, "alice")
        box.code.setText(code)
        qtbot.mouseClick(box.link_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: "In the account alice" in box.state.text(), timeout=ANSWER_MS)
        assert box.code.text() == ""
        assert server.call("POST", f"/api/account/machines/{volunteer_id}/pause", token=key)[0] == 200
        box.refresh()
        qtbot.waitUntil(lambda: "Paused from the account" in box.state.text(), timeout=ANSWER_MS)
        shots = os.environ.get("COMMONWEIGHTS_SCREENSHOTS")
        if shots:
            qtbot.waitExposed(dialog)
            dialog.grab().save(os.path.join(shots, "app-settings-account.png"))
