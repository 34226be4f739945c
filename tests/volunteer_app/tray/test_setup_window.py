"""The first-run setup window of an installed app: it builds the training environment with a progress
bar, says why it stopped and offers Retry, and closes with the environment's Python once it is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from volunteer_app.environment import STEPS, Installation, TrainingEnvironment

pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")

BUILD_MS = 600_000  # unpacking torch on a busy runner


@pytest.mark.slow
def test_setup_stops_with_a_reason_and_a_retry_then_finishes_from_the_wheels(
    qtbot: Any, qapp: Any, tmp_path: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from volunteer_app.tray.setup_window import SetupWindow

    monkeypatch.setenv("COMMONWEIGHTS_SETUP_OFFLINE", "1")
    empty = tmp_path / "wheels"
    empty.mkdir()
    env = TrainingEnvironment(tmp_path / "training-env")
    window = SetupWindow(env, Installation(tmp_path / "install.json", empty))
    qtbot.addWidget(window)
    window.show()
    window.start()
    # No PyTorch among the wheels: it stops at that step and says what uv said.
    qtbot.waitUntil(lambda: window.retry.isEnabled(), timeout=BUILD_MS)
    assert window.step.text() == "Setup stopped"
    assert "torch" in window.line.text() and "Retry" in window.line.text() and window.retry.text() == "Retry"
    assert window.python is None and window.isVisible()
    # The wheels arrive (the connection is back): Retry goes on from the Python it made.
    window.install = Installation(tmp_path / "install.json", wheelhouse)
    window.retry.click()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=BUILD_MS)
    assert window.bar.value() == len(STEPS)
    assert window.python == env.interpreter and env.python() == env.interpreter
