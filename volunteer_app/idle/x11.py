"""X11 idle time from the MIT-SCREEN-SAVER extension (`XScreenSaverQueryInfo`, libXss) over ctypes.

    with X11IdleSource(":0") as source:
        source.idle_seconds()   # 4.731

Never opened on a Wayland session: there the X server is XWayland, which sees input only while an X11
window has focus, so its idle time keeps growing while the user types into native Wayland windows
(`is_wayland_session` checks XDG_SESSION_TYPE and WAYLAND_DISPLAY).

A lost X connection would normally make Xlib call `exit()`. Where libX11 has `XSetIOErrorExitHandler`
(1.7 and later) this module keeps the process alive for its own connection: the source just turns
broken and answers None, so the tray app reports "unknown" instead of vanishing. That takes a
process-wide IO error handler too (the default one exits); it hands every other display's error to
the handler it replaced, so other Xlib users in the process see no change.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from volunteer_app.idle.base import BackendUnavailable

_IO_ERROR_EXIT_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_IO_ERROR_HANDLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class XScreenSaverInfo(ctypes.Structure):
    _fields_ = (
        ("window", ctypes.c_ulong),
        ("state", ctypes.c_int),
        ("kind", ctypes.c_int),
        ("til_or_since", ctypes.c_ulong),
        ("idle", ctypes.c_ulong),  # milliseconds since the last input event
        ("eventMask", ctypes.c_ulong),
    )


def is_wayland_session(environ: Mapping[str, str]) -> bool:
    """True when this login session is Wayland (X11 clients would run on XWayland)."""
    return environ.get("XDG_SESSION_TYPE", "").lower() == "wayland" or bool(environ.get("WAYLAND_DISPLAY"))


def _open_library(short_name: str, package_hint: str) -> Any:
    path = ctypes.util.find_library(short_name)
    if path is None:
        raise BackendUnavailable("x11", f"lib{short_name} not found (install {package_hint})")
    try:
        return ctypes.CDLL(path)
    except OSError as exc:
        raise BackendUnavailable("x11", f"cannot load {path}: {exc}") from exc


@dataclass
class X11Libraries:
    """libX11 and libXss handles (real ctypes libraries, or fakes in tests)."""

    xlib: Any
    xss: Any

    @classmethod
    def load(cls) -> X11Libraries:
        xlib = _open_library("X11", "libx11-6")
        xss = _open_library("Xss", "libxss1")
        vp, c_int_p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)
        xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
        xlib.XOpenDisplay.restype = vp
        xlib.XCloseDisplay.argtypes = [vp]
        xlib.XCloseDisplay.restype = ctypes.c_int
        xlib.XDefaultRootWindow.argtypes = [vp]
        xlib.XDefaultRootWindow.restype = ctypes.c_ulong
        declare_io_error_handlers(xlib)
        xss.XScreenSaverQueryExtension.argtypes = [vp, c_int_p, c_int_p]
        xss.XScreenSaverQueryExtension.restype = ctypes.c_int
        xss.XScreenSaverQueryInfo.argtypes = [vp, ctypes.c_ulong, ctypes.POINTER(XScreenSaverInfo)]
        xss.XScreenSaverQueryInfo.restype = ctypes.c_int
        return cls(xlib=xlib, xss=xss)


def _address(function_pointer: Any) -> int | None:
    try:
        return ctypes.cast(function_pointer, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return None


class _ConnectionLossGuard:
    """The process-wide Xlib IO error handler: quiet for our displays, the previous one for the rest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ours: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()  # each has `_broken`
        self._previous: Any = None
        self._handler = _IO_ERROR_HANDLER(self._on_io_error)

    def watch(self, xlib: Any, display: int, source: Any) -> None:
        """`source` (an X11IdleSource, an X11Fullscreen) is marked `_broken` when its display is lost."""
        with self._lock:
            self._ours[display] = source
            previous = xlib.XSetIOErrorHandler(self._handler)
            if _address(previous) != _address(self._handler):  # not our own, installed earlier
                self._previous = previous

    def forget(self, display: int) -> None:
        with self._lock:
            self._ours.pop(display, None)

    def _on_io_error(self, display: int | None) -> int:
        source = self._ours.get(display or 0)
        if source is not None:
            source._broken = True
            return 0
        if self._previous:
            return int(self._previous(display))
        return 0


_GUARD = _ConnectionLossGuard()


def declare_io_error_handlers(xlib: Any) -> None:
    """The signatures of libX11's IO error handler calls (without them ctypes would cut pointers to ints)."""
    if hasattr(xlib, "XSetIOErrorExitHandler"):
        xlib.XSetIOErrorExitHandler.argtypes = [ctypes.c_void_p, _IO_ERROR_EXIT_HANDLER, ctypes.c_void_p]
        xlib.XSetIOErrorExitHandler.restype = None
        xlib.XSetIOErrorHandler.argtypes = [_IO_ERROR_HANDLER]
        xlib.XSetIOErrorHandler.restype = _IO_ERROR_HANDLER


def forget_connection(display: Any) -> None:
    _GUARD.forget(int(display))


def guard_connection(xlib: Any, display: Any, source: Any) -> Any:
    """Keep the process alive if `display`'s connection is lost (libX11 ≥ 1.7): `source._broken` is set
    instead. Returns the handler, which the caller keeps alive."""
    handler = _IO_ERROR_EXIT_HANDLER(lambda _display, _data: setattr(source, "_broken", True))
    if hasattr(xlib, "XSetIOErrorExitHandler"):
        xlib.XSetIOErrorExitHandler(display, handler, None)
        _GUARD.watch(xlib, int(display), source)
    return handler


class X11IdleSource:
    """Milliseconds since the last input on an X display, from the XScreenSaver extension.

    Holds one X connection until `close()`; safe to call from any one thread at a time (a lock guards
    the connection, since Xlib is not initialised for threads here).
    """

    name = "x11"

    def __init__(
        self,
        display: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        libraries: X11Libraries | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        if is_wayland_session(env):
            raise BackendUnavailable(
                "x11", "this is a Wayland session: XScreenSaver would only see input to X11 windows"
            )
        display_name = display if display is not None else env.get("DISPLAY", "")
        if not display_name:
            raise BackendUnavailable("x11", "no X display (DISPLAY is not set)")
        self._display_name = display_name
        self._libs = libraries if libraries is not None else X11Libraries.load()
        self._lock = threading.Lock()
        self._broken = False
        self._info = XScreenSaverInfo()
        self._dpy: Any = self._libs.xlib.XOpenDisplay(display_name.encode())
        if not self._dpy:
            raise BackendUnavailable("x11", f"cannot open X display {display_name!r}")
        self._exit_handler = _IO_ERROR_EXIT_HANDLER(self._on_connection_lost)  # kept alive with self
        if hasattr(self._libs.xlib, "XSetIOErrorExitHandler"):
            self._libs.xlib.XSetIOErrorExitHandler(self._dpy, self._exit_handler, None)
            _GUARD.watch(self._libs.xlib, int(self._dpy), self)
        event_base, error_base = ctypes.c_int(0), ctypes.c_int(0)
        if not self._libs.xss.XScreenSaverQueryExtension(
            self._dpy, ctypes.pointer(event_base), ctypes.pointer(error_base)
        ):
            self.close()
            raise BackendUnavailable("x11", f"X display {display_name!r} has no MIT-SCREEN-SAVER extension")
        self._root = int(self._libs.xlib.XDefaultRootWindow(self._dpy))

    @property
    def description(self) -> str:
        return f"X11 ({self._display_name}): time since the last keyboard or mouse input (XScreenSaverQueryInfo)."

    def _on_connection_lost(self, _display: Any, _user_data: Any) -> None:
        # Called by Xlib instead of exit(); returning lets the failed call return an error.
        self._broken = True

    def idle_seconds(self) -> float | None:
        with self._lock:
            if self._broken or not self._dpy:
                return None
            ok = self._libs.xss.XScreenSaverQueryInfo(self._dpy, self._root, ctypes.pointer(self._info))
            if not ok or self._broken:
                return None
            return int(self._info.idle) / 1000.0

    def close(self) -> None:
        """Close the X connection (a lost one is left to the OS: Xlib cannot close it cleanly)."""
        with self._lock:
            if self._dpy:
                _GUARD.forget(int(self._dpy))
                if not self._broken:
                    self._libs.xlib.XCloseDisplay(self._dpy)
            self._dpy = None

    def __enter__(self) -> X11IdleSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
