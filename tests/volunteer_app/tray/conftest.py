"""Fixtures for the tray app's GUI tests: a private Xvfb display for the whole session (the
QApplication lives on it), trayer as a real system tray when a test asks for one, and a DesktopApp
built on fakes.

Nothing here imports Qt at module level, so the Qt-free tests in this folder run without PySide6.
"""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from volunteer_app.autostart import Autostart
from volunteer_app.idle.base import IdleSource
from volunteer_app.policy import Clock
from volunteer_app.preferences import Preferences
from volunteer_app.tray.xsession import SystemTray, XSessionError, XvfbDisplay, tray_owner

from .fakes import Rig, make_rig

if TYPE_CHECKING:
    from volunteer_app.tray.app import DesktopApp


def _need_qt() -> None:
    pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
    pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")


@pytest.fixture(autouse=True)
def collect_qt_garbage() -> Iterator[None]:
    """After each test, free its garbage cycles here, on the main thread. Left to the collector's own time,
    a cycle holding Qt wrappers can be freed on whatever thread happens to allocate (a training process's
    reader); Shiboken then defers the C++ delete to the main thread, where a parent already deleted it:
    a segfault in a later test."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def xdisplay() -> Iterator[str]:
    """A fresh Xvfb display, made this process's DISPLAY (and Qt's platform xcb) for the session."""
    _need_qt()
    try:
        display = XvfbDisplay().start()
    except XSessionError as error:
        pytest.skip(str(error))
    saved = {key: os.environ.get(key) for key in ("DISPLAY", "QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    os.environ.update(DISPLAY=display.name, QT_QPA_PLATFORM="xcb")
    os.environ.pop("WAYLAND_DISPLAY", None)
    try:
        yield display.name
    finally:
        display.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def qapp(xdisplay: str) -> Iterator[Any]:
    """pytest-qt's application, made on the Xvfb display (overrides pytest-qt's own fixture)."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["commonweights-tests"])
    assert isinstance(app, QApplication)
    app.setApplicationName("Commonweights")  # names the tray icon's X window, as in the real app
    app.setQuitOnLastWindowClosed(False)
    yield app
    app.shutdown()  # disconnect from the X server before Xvfb goes away


@pytest.fixture
def system_tray(xdisplay: str) -> Iterator[SystemTray]:
    """trayer running on the display for this test."""
    if shutil.which("trayer") is None:
        pytest.skip("trayer is not installed (apt-get install trayer)")
    tray = SystemTray(xdisplay).start()
    try:
        yield tray
    finally:
        tray.stop()


@pytest.fixture
def no_tray(xdisplay: str) -> str:
    assert tray_owner(xdisplay) == 0, "a system tray is still running on the test display"
    return xdisplay


MakeApp = Callable[..., tuple["DesktopApp", Rig]]


@pytest.fixture
def make_app(qapp: Any, tmp_path: Path) -> Iterator[MakeApp]:
    """DesktopApp(s) over the fakes' controller; shut down after the test."""
    from volunteer_app.tray.app import DesktopApp

    made: list[DesktopApp] = []

    def make(
        prefs: Preferences | None = None,
        *,
        autostart: Autostart | None = None,
        idle: IdleSource | None = None,
        clock: Clock | None = None,
        **kwargs: Any,
    ) -> tuple[DesktopApp, Rig]:
        rig = make_rig(tmp_path, prefs, autostart=autostart, idle=idle, clock=clock)
        kwargs.setdefault("open_url", lambda url: None)
        desktop = DesktopApp(rig.controller, poll_interval_s=0.05, **kwargs)
        made.append(desktop)
        return desktop, rig

    yield make
    for desktop in made:
        desktop.shutdown()
