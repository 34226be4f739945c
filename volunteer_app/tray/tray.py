"""The tray icon and its menu, and the actions the menu (or the fallback window) offers.

    actions = AppActions.create(parent)        # pause/resume, snooze, settings, statistics, ...
    tray = TrayIcon(actions)
    tray.show_status(controller.status)        # icon per state, tooltip, menu texts

Left-clicking the icon opens the statistics window; the context menu holds everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from volunteer_app.tray.controller import AppState, AppStatus
from volunteer_app.tray.icons import state_icon

__all__ = ["AppActions", "TrayIcon"]


@dataclass(frozen=True)
class AppActions:
    status: QAction  # disabled: the headline, at the top of the menu
    pause_resume: QAction
    snooze: QAction
    settings: QAction
    statistics: QAction
    dashboard: QAction
    quit: QAction

    @classmethod
    def create(cls, parent: QObject) -> AppActions:
        status = QAction("Starting…", parent)
        status.setEnabled(False)
        return cls(
            status=status,
            pause_resume=QAction("Pause", parent),
            snooze=QAction("Snooze for 1 hour", parent),
            settings=QAction("Settings…", parent),
            statistics=QAction("Statistics…", parent),
            dashboard=QAction("Open dashboard", parent),
            quit=QAction("Quit Commonweights", parent),
        )

    def show_status(self, status: AppStatus) -> None:
        self.status.setText(status.headline if len(status.headline) <= 80 else status.headline[:79] + "…")
        self.status.setIcon(state_icon(status.state))
        if status.may_resume:
            self.pause_resume.setText("Start working" if status.manual_mode and not status.user_paused else "Resume")
        else:
            self.pause_resume.setText("Pause")
        self.snooze.setText("Cancel snooze" if status.state is AppState.SNOOZED else "Snooze for 1 hour")


class TrayIcon(QSystemTrayIcon):
    def __init__(self, actions: AppActions, parent: QObject | None = None) -> None:
        super().__init__(state_icon(AppState.WAITING), parent)
        self.actions = actions
        self.state: AppState | None = None
        menu = QMenu()
        menu.setObjectName("tray-menu")
        menu.setWindowTitle("Commonweights menu")  # names its X window (screenshots find it by that)
        menu.addAction(actions.status)
        menu.addSeparator()
        for action in (actions.pause_resume, actions.snooze):
            menu.addAction(action)
        menu.addSeparator()
        for action in (actions.settings, actions.statistics, actions.dashboard):
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction(actions.quit)
        self.menu = menu  # the tray does not own its menu: keep it alive here
        self.setContextMenu(menu)
        self.activated.connect(self._activated)

    def show_status(self, status: AppStatus) -> None:
        if status.state is not self.state:
            self.state = status.state
            self.setIcon(state_icon(status.state))
        self.setToolTip(status.tooltip)

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.actions.statistics.trigger()
