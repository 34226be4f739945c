"""The statistics window: what this computer is doing and has contributed, with live charts.

    window = StatisticsWindow(controller)
    window.show()        # refreshes itself once a second while visible

Reads only `AppController.status`, `.stats` (a `StatsBook`) and `.notifications`.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QCloseEvent, QShowEvent
from PySide6.QtWidgets import (
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QVBoxLayout,
    QWidget,
)

from volunteer_app.tray.charts import LineChart
from volunteer_app.tray.controller import AppController
from volunteer_app.tray.icons import state_icon

__all__ = ["StatisticsWindow"]

REFRESH_MS = 1000


def _count(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.2f} {suffix}"
    return f"{value:.0f}"


class StatisticsWindow(QWidget):
    def __init__(self, controller: AppController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.setWindowTitle("Commonweights — Statistics")
        self.setObjectName("statistics")
        self.resize(900, 640)

        self.icon = QLabel()
        self.state_label = QLabel()
        self.state_label.setStyleSheet("font-size: 15pt; font-weight: bold;")
        self.headline = QLabel()
        self.headline.setWordWrap(True)
        header = QHBoxLayout()
        header.addWidget(self.icon)
        titles = QVBoxLayout()
        titles.addWidget(self.state_label)
        titles.addWidget(self.headline)
        header.addLayout(titles, 1)

        self.values: dict[str, QLabel] = {}
        numbers = QFormLayout()
        for key, label in (
            ("device", "Device"),
            ("coordinator", "Coordinator"),
            ("unit", "Current unit"),
            ("loss", "Training loss"),
            ("session_tokens", "Tokens trained this session"),
            ("tokens", "Tokens contributed"),
            ("units", "Work units accepted"),
            ("rejected", "Rejected / abandoned"),
            ("credit", "Credit"),
            ("network", "Downloaded today"),
        ):
            value = QLabel("—")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.values[key] = value
            numbers.addRow(f"{label}:", value)

        self.loss_chart = LineChart("Training loss", value_format="{:.3f}", colour="#2e9d4f")
        self.tokens_chart = LineChart("Tokens trained", value_format="{:,.0f}", colour="#3a78c2")
        self.credit_chart = LineChart("Credit", value_format="{:.4g}", colour="#7b5cc4", staircase=True)
        charts = QGridLayout()
        charts.addWidget(self.loss_chart, 0, 0, 1, 2)
        charts.addWidget(self.tokens_chart, 1, 0)
        charts.addWidget(self.credit_chart, 1, 1)

        self.events = QListWidget()
        self.events.setMaximumHeight(90)

        top = QHBoxLayout()
        top.addLayout(numbers, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(header)
        layout.addLayout(top)
        layout.addLayout(charts, 1)
        layout.addWidget(QLabel("Recent events:"))
        layout.addWidget(self.events)

        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self.refresh()

    def showEvent(self, event: QShowEvent) -> None:
        self.refresh()
        self.timer.start()
        super().showEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.timer.stop()
        super().closeEvent(event)

    def refresh(self) -> None:
        controller = self.controller
        status, stats = controller.status, controller.stats
        totals = stats.totals
        self.icon.setPixmap(state_icon(status.state).pixmap(48, 48))
        self.state_label.setText(status.state.label)
        self.headline.setText(f"{status.headline}\n{status.reason}" if status.reason else status.headline)
        unit, progress = stats.unit, stats.progress
        values = {
            "device": status.device or "chosen when work starts",
            "coordinator": controller.preferences.coordinator_url,
            "unit": (
                f"{unit.campaign_name} · model v{unit.model_version} · "
                + (f"step {progress.step}/{progress.steps_total}" if progress else f"{unit.steps_total} steps")
                if unit is not None
                else "none yet"
            ),
            "loss": f"{progress.loss:.4f}" if progress is not None else "—",
            "session_tokens": _count(stats.session_tokens),
            "tokens": _count(totals.tokens_contributed),
            "units": f"{totals.units_accepted}",
            "rejected": f"{totals.units_rejected} / {totals.units_abandoned}",
            "credit": (
                f"{stats.credit_total:.6g} in all ({totals.credit_earned:.6g} earned by this computer)"
                if stats.credit_total is not None
                else f"{totals.credit_earned:.6g} earned by this computer"
            ),
            "network": f"{stats.network_bytes_today() / 1e6:.1f} MB",
        }
        for key, text in values.items():
            self.values[key].setText(text)
        self.loss_chart.set_points(stats.loss)
        self.tokens_chart.set_points((t, float(n)) for t, n in stats.tokens_trained)
        credit = list(stats.credit)
        if credit:
            credit.append((time.time(), credit[-1][1]))  # held until now
        self.credit_chart.set_points(credit)
        recent = [f"{n.title}: {n.message}" for n in reversed(controller.notifications[-20:])] or ["nothing yet"]
        if recent != [self.events.item(i).text() for i in range(self.events.count())]:
            self.events.clear()
            self.events.addItems(recent)
