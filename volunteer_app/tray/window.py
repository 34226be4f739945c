"""The status window used where there is no system tray (GNOME without AppIndicator, a bare X server).

It shows what the tray would: the state icon and headline, buttons for every menu action, and the
latest notification in a banner. Closing it quits the app, since nothing else would be left to
bring it back.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QCloseEvent
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QMainWindow, QPushButton, QVBoxLayout, QWidget

from volunteer_app.tray.controller import AppNotification, AppStatus
from volunteer_app.tray.icons import state_icon
from volunteer_app.tray.tray import AppActions

__all__ = ["StatusWindow"]


def _button(action: QAction) -> QPushButton:
    button = QPushButton(action.text())
    button.clicked.connect(action.trigger)
    action.changed.connect(lambda: button.setText(action.text()))
    return button


class StatusWindow(QMainWindow):
    def __init__(self, actions: AppActions, on_close: Callable[[], None]) -> None:
        super().__init__()
        self.setWindowTitle("Commonweights")
        self.setObjectName("status-window")
        self._on_close = on_close
        self.icon = QLabel()
        self.state_label = QLabel()
        self.state_label.setStyleSheet("font-size: 15pt; font-weight: bold;")
        self.headline = QLabel()
        self.headline.setWordWrap(True)
        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background: #fff4d6; color: #5a4100; padding: 6px; border-radius: 4px;")
        self.banner.hide()
        note = QLabel("No system tray was found, so Commonweights shows this window instead. Closing it quits.")
        note.setWordWrap(True)
        note.setStyleSheet("color: palette(mid);")

        header = QHBoxLayout()
        header.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        titles = QVBoxLayout()
        titles.addWidget(self.state_label)
        titles.addWidget(self.headline)
        header.addLayout(titles, 1)
        self.buttons = {
            name: _button(action)
            for name, action in (
                ("pause_resume", actions.pause_resume),
                ("snooze", actions.snooze),
                ("settings", actions.settings),
                ("statistics", actions.statistics),
                ("dashboard", actions.dashboard),
                ("quit", actions.quit),
            )
        }
        grid = QGridLayout()
        for i, button in enumerate(self.buttons.values()):
            grid.addWidget(button, i // 3, i % 3)

        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addLayout(header)
        layout.addWidget(self.banner)
        layout.addLayout(grid)
        layout.addWidget(note)
        self.setCentralWidget(body)
        self.resize(520, 240)

    def show_status(self, status: AppStatus) -> None:
        self.icon.setPixmap(state_icon(status.state).pixmap(48, 48))
        self.setWindowIcon(state_icon(status.state))
        self.state_label.setText(status.state.label)
        self.headline.setText(status.headline)

    def show_banner(self, notification: AppNotification) -> None:
        self.banner.setText(f"<b>{html.escape(notification.title)}</b> — {html.escape(notification.message)}")
        self.banner.show()

    def closeEvent(self, event: QCloseEvent) -> None:
        self._on_close()
        super().closeEvent(event)
