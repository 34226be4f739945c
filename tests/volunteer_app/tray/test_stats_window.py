"""The statistics window shows the live state, the numbers and the charts from the worker's events."""

from __future__ import annotations

from typing import Any

import pytest

from volunteer_app.events import Connected, StateChanged, TrainingProgress, UnitResult, UnitStarted, WorkerState

from .conftest import MakeApp

pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")


def test_statistics_show_state_device_totals_and_charts(qtbot: Any, make_app: MakeApp) -> None:
    desktop, rig = make_app()
    desktop.start()
    rig.idle.seconds = 61.0
    qtbot.waitUntil(lambda: bool(rig.children), timeout=5000)
    child = rig.child
    child.device("cpu")
    child.deliver(Connected("v1", "0.1.0", 10.0, "http://127.0.0.1:9/volunteers/v1", registered=False))
    child.deliver(UnitStarted("u1", "1", "tiny-lm", 4, 20, resumed=False))
    child.deliver(StateChanged(WorkerState.TRAINING, "tiny-lm"))
    for step in range(1, 21):
        child.deliver(TrainingProgress("u1", step, 20, 6.0 - step * 0.1, 64 * step))
    child.deliver(UnitResult("u1", "accepted", None, "ok", 2.0))

    desktop.actions.statistics.trigger()
    window = desktop.statistics_window
    assert window is not None
    qtbot.waitUntil(lambda: window.values["units"].text() == "1", timeout=5000)
    assert window.state_label.text() == "Training"
    assert window.values["device"].text() == "cpu · a cpu"
    assert window.values["tokens"].text() == "1.28 k"
    assert window.values["credit"].text().startswith("12 in all")
    assert window.values["loss"].text() == "4.0000"
    assert len(window.loss_chart.points) == 20 and window.loss_chart.points[-1][1] == pytest.approx(4.0)
    assert len(window.tokens_chart.points) == 20
    image = window.loss_chart.grab().toImage()
    line = [
        (x, y)
        for x in range(0, image.width(), 2)
        for y in range(0, image.height(), 2)
        if image.pixelColor(x, y).name() == "#2e9d4f"
    ]
    assert len(line) > 20  # the loss curve is drawn, in its colour
    assert rig.controller.dashboard_url == "http://127.0.0.1:9/volunteers/v1"
