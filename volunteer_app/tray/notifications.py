"""Showing the app's notifications: a tray balloon (the desktop's notification) or, without a tray,
a banner in the status window.

    notifier = Notifier(tray_icon, banner=window.show_banner)
    controller.notification_listeners.append(notifier.show)

The same notification is not repeated within `quiet_s` seconds, so a flapping network does not
bury the desktop in balloons.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from PySide6.QtWidgets import QSystemTrayIcon

from volunteer_app.tray.controller import AppNotification

__all__ = ["Notifier"]

_ICONS = {
    "campaign_finished": QSystemTrayIcon.MessageIcon.Information,
    "rejections": QSystemTrayIcon.MessageIcon.Warning,
    "unreachable": QSystemTrayIcon.MessageIcon.Warning,
    "crashed": QSystemTrayIcon.MessageIcon.Critical,
    "worker_error": QSystemTrayIcon.MessageIcon.Critical,
}


class Notifier:
    def __init__(
        self,
        tray: QSystemTrayIcon | None,
        banner: Callable[[AppNotification], None] | None = None,
        *,
        quiet_s: float = 300.0,
        timeout_ms: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tray = tray
        self.banner = banner
        self.quiet_s = quiet_s
        self.timeout_ms = timeout_ms
        self.clock = clock
        self.shown: list[AppNotification] = []
        self._last: dict[tuple[str, str], float] = {}

    def show(self, notification: AppNotification) -> None:
        now = self.clock()
        key = (notification.kind, notification.message)
        last = self._last.get(key)
        if last is not None and now - last < self.quiet_s:
            return
        self._last[key] = now
        self.shown.append(notification)
        tray = self.tray
        if tray is not None and tray.isVisible() and QSystemTrayIcon.isSystemTrayAvailable():
            icon = _ICONS.get(notification.kind, QSystemTrayIcon.MessageIcon.Information)
            tray.showMessage(notification.title, notification.message, icon, self.timeout_ms)
        if self.banner is not None:
            self.banner(notification)
