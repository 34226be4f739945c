"""The desktop app: the controller on a Qt timer, the tray icon (or the fallback window), the settings
and statistics windows, notifications, and requests from a second launch.

    app = DesktopApp(controller, instance=instance)
    app.start()            # shows the tray icon, or the status window when there is no tray
    qt_app.exec()          # until Quit

The controller's child messages arrive on a reader thread; `wake` hands them to the Qt thread with
a queued signal, so a pause acknowledgement is seen at once rather than at the next tick.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

from volunteer_app.account import link_machine, machine_status
from volunteer_app.credentials import default_config_dir, volunteer_data_dir
from volunteer_app.preferences import Preferences
from volunteer_app.tray.account_box import AccountBox
from volunteer_app.tray.controller import AppController, AppNotification, AppState, AppStatus
from volunteer_app.tray.data_box import DataBox
from volunteer_app.tray.notifications import Notifier
from volunteer_app.tray.settings_dialog import SettingsDialog
from volunteer_app.tray.single_instance import SingleInstance
from volunteer_app.tray.stats_window import StatisticsWindow
from volunteer_app.tray.theme import apply_theme
from volunteer_app.tray.tray import AppActions, TrayIcon
from volunteer_app.tray.window import StatusWindow

__all__ = ["DesktopApp"]

TRAY_CHECK_MS = 2000


class DesktopApp(QObject):
    woken = Signal()
    quitting = Signal()

    def __init__(
        self,
        controller: AppController,
        *,
        instance: SingleInstance | None = None,
        poll_interval_s: float = 0.25,
        use_tray: bool = True,
        open_url: Callable[[QUrl], object] = QDesktopServices.openUrl,
        rebuild_environment: Callable[[], None] | None = None,
        parent: QObject | None = None,
    ) -> None:
        """`rebuild_environment`: an installed app's way to have its training environment built again
        at the next start (a button in the settings); None in a development install."""
        super().__init__(parent)
        self.controller = controller
        self._rebuild_environment = rebuild_environment
        self.instance = instance
        self._open_url = open_url
        self._use_tray = use_tray
        self.actions = AppActions.create(self)
        self.tray: TrayIcon | None = None
        self.window: StatusWindow | None = None
        self.settings_dialog: SettingsDialog | None = None
        self.statistics_window: StatisticsWindow | None = None
        self.notifier = Notifier(None, banner=self._banner)
        self._quitting = False
        self.theme = "light"  # the scheme shown (apply_theme), once started

        actions = self.actions
        actions.pause_resume.triggered.connect(self.toggle_pause)
        actions.snooze.triggered.connect(self.toggle_snooze)
        actions.settings.triggered.connect(self.show_settings)
        actions.statistics.triggered.connect(self.show_statistics)
        actions.dashboard.triggered.connect(self.open_dashboard)
        actions.quit.triggered.connect(self.quit)

        controller.wake = self.woken.emit  # from the child's reader thread: queued to ours
        self.woken.connect(controller.drain_inbox)
        controller.status_listeners.append(self._show_status)
        controller.notification_listeners.append(self.notifier.show)
        if instance is not None:
            instance.message_received.connect(self.handle_request)

        self.timer = QTimer(self)
        self.timer.setInterval(max(10, round(poll_interval_s * 1000)))
        self.timer.timeout.connect(controller.tick)
        self.tray_timer = QTimer(self)
        self.tray_timer.setInterval(TRAY_CHECK_MS)
        self.tray_timer.timeout.connect(self._check_tray)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, *, show: str | None = None) -> None:
        """Show the tray icon (or the status window), start polling, and open `show` if given."""
        self._apply_theme()
        if self._use_tray and QSystemTrayIcon.isSystemTrayAvailable():
            self.tray = TrayIcon(self.actions, self)
            self.notifier.tray = self.tray
            self.tray.show()
            self.tray_timer.start()
        else:
            self._show_window()
        self._show_status(self.controller.tick())
        self.timer.start()
        if show is not None:
            self.handle_request(show)

    def quit(self) -> None:
        """Stop training cleanly, take the icon away and leave the event loop."""
        self.shutdown()
        app = QApplication.instance()
        if app is not None:
            app.quit()

    def shutdown(self) -> None:
        """Everything `quit` does but leaving the event loop: timers, windows, icon, child, instance."""
        if self._quitting:
            return
        self._quitting = True
        self.timer.stop()
        self.tray_timer.stop()
        self.quitting.emit()
        if self.tray is not None:
            self.tray.hide()
        for widget in (self.window, self.settings_dialog, self.statistics_window):
            if widget is not None:
                widget.hide()
        self.controller.shutdown()
        # The training process's threads may outlive this (a reader finishing, a kill timer): they reach the
        # controller, which must no longer reach this app. Were a thread to drop the last reference to a Qt
        # object, Shiboken would delete it on the main thread after Qt already had: a crash.
        self.controller.wake = _ignore
        if self.instance is not None:
            self.instance.release()

    # --- actions -----------------------------------------------------------------------------

    def toggle_pause(self) -> None:
        if self.controller.status.may_resume:
            self.controller.resume()
        else:
            self.controller.pause()

    def toggle_snooze(self) -> None:
        if self.controller.status.state is AppState.SNOOZED:
            self.controller.cancel_snooze()
        else:
            self.controller.snooze(3600.0)

    def show_settings(self) -> None:
        dialog = self.settings_dialog
        if dialog is None:
            dialog = SettingsDialog(
                self.controller.preferences,
                apply=self._apply_preferences,
                idle_description=self.controller.idle_source.description,
                rebuild=self._rebuild_environment,
                account=self._account_box(),
                own_data=self._data_box(),
            )
            self.settings_dialog = dialog
        elif not dialog.isVisible():
            dialog.load(self.controller.preferences)
            if dialog.account is not None:
                dialog.account.refresh()  # paused or linked from the dashboard since it was last open
            if dialog.own_data is not None:
                dialog.own_data.refresh()  # files changed, or chosen with `commonweights volunteer data`
        _bring_forward(dialog)

    def _account_box(self) -> AccountBox:
        """Linking this machine to a volunteer account, on the coordinator the preferences name now."""
        controller = self.controller
        config_dir = controller.paths.config_dir
        return AccountBox(
            link=lambda code: link_machine(controller.preferences.coordinator_url, code, config_dir=config_dir),
            status=lambda: machine_status(controller.preferences.coordinator_url, config_dir=config_dir),
        )

    def _data_box(self) -> DataBox:
        """The volunteer's own files, where `commonweights volunteer data` keeps them (data in the config
        folder unless the app was given a data folder)."""
        paths = self.controller.paths
        return DataBox(paths.config_dir or default_config_dir(), volunteer_data_dir(paths.config_dir, paths.data_dir))

    def _apply_preferences(self, prefs: Preferences) -> None:
        self.controller.apply_preferences(prefs)
        self._apply_theme()

    def _apply_theme(self) -> None:
        app = QApplication.instance()
        if isinstance(app, QApplication):
            self.theme = apply_theme(app, self.controller.preferences.theme)

    def show_statistics(self) -> None:
        if self.statistics_window is None:
            self.statistics_window = StatisticsWindow(self.controller)
        _bring_forward(self.statistics_window)

    def open_dashboard(self) -> None:
        self._open_url(QUrl(self.controller.dashboard_url))

    def handle_request(self, request: str) -> None:
        """What a second launch asked for: "settings", "statistics", or "show" (the main window:
        the status window without a tray, the statistics window with one)."""
        if request == "settings":
            self.show_settings()
        elif request == "statistics" or self.window is None:
            self.show_statistics()
        else:
            _bring_forward(self.window)

    # --- status ------------------------------------------------------------------------------

    def _show_status(self, status: AppStatus) -> None:
        self.actions.show_status(status)
        if self.tray is not None:
            self.tray.show_status(status)
        if self.window is not None:
            self.window.show_status(status)

    def _banner(self, notification: AppNotification) -> None:
        if self.window is not None:
            self.window.show_banner(notification)

    def _show_window(self) -> None:
        if self.window is None:
            self.window = StatusWindow(self.actions, on_close=self.quit)
            self.window.show_status(self.controller.status)
        _bring_forward(self.window)

    def _check_tray(self) -> None:
        """A tray that went away (its panel crashed or was removed): fall back to the window."""
        if self.tray is not None and not QSystemTrayIcon.isSystemTrayAvailable() and self.window is None:
            self._show_window()


def _ignore() -> None:
    return None


def _bring_forward(widget: QWidget) -> None:
    if widget.isMinimized():
        widget.showNormal()
    widget.show()
    widget.raise_()
    widget.activateWindow()
