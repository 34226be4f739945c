"""Whether a program is showing full screen (a game, a film, a presentation): training suspends while one
is, as the option "pause while a window is fullscreen" asks.

    >>> watcher = detect_fullscreen()          # X11, Windows, or None where it can't be told
    >>> watcher.fullscreen()                   # True, False, or None (the display went away)

X11: the EWMH hint `_NET_WM_STATE_FULLSCREEN` on the window manager's active window
(`_NET_ACTIVE_WINDOW`), or, without a window manager that names one, on any viewable top-level window
(`_NET_CLIENT_LIST`, else the root's children), read with libX11 over ctypes. Windows:
`SHQueryUserNotificationState` (busy, a Direct3D game full screen, or presentation mode). macOS has no
public call that says it; there the option is not offered. Wayland: compositors don't tell other
clients; where XWayland runs, its X11 windows are seen, native Wayland ones are not.

A window can vanish between listing and reading it; its X error is caught (libX11's default handler
would end the process) and the window skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Any, Protocol

from volunteer_app.idle.x11 import declare_io_error_handlers, forget_connection, guard_connection

__all__ = ["FullscreenWatcher", "WindowsFullscreen", "X11Fullscreen", "detect_fullscreen"]

_ANY_TYPE = 0  # AnyPropertyType: window ids are WINDOW by the spec; tools that set them by hand write CARDINAL
_XA_ATOM = 4
_IS_VIEWABLE = 2
_MAX_WINDOWS = 4096


class FullscreenWatcher(Protocol):
    name: str

    def fullscreen(self) -> bool | None: ...


class _XWindowAttributes(ctypes.Structure):
    _fields_ = (
        ("x", ctypes.c_int),
        ("y", ctypes.c_int),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("border_width", ctypes.c_int),
        ("depth", ctypes.c_int),
        ("visual", ctypes.c_void_p),
        ("root", ctypes.c_ulong),
        ("class_", ctypes.c_int),
        ("bit_gravity", ctypes.c_int),
        ("win_gravity", ctypes.c_int),
        ("backing_store", ctypes.c_int),
        ("backing_planes", ctypes.c_ulong),
        ("backing_pixel", ctypes.c_ulong),
        ("save_under", ctypes.c_int),
        ("colormap", ctypes.c_ulong),
        ("map_installed", ctypes.c_int),
        ("map_state", ctypes.c_int),
        ("all_event_masks", ctypes.c_long),
        ("your_event_mask", ctypes.c_long),
        ("do_not_propagate_mask", ctypes.c_long),
        ("override_redirect", ctypes.c_int),
        ("screen", ctypes.c_void_p),
    )


_ERROR_HANDLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_errors = threading.local()


def _ignore_error(display: Any, event: Any) -> int:
    """A request about a window that is gone: noted, not fatal."""
    _errors.count = getattr(_errors, "count", 0) + 1
    return 0


_IGNORE_ERROR = _ERROR_HANDLER(_ignore_error)  # kept alive for as long as libX11 may call it


def _load_xlib() -> Any:
    path = ctypes.util.find_library("X11")
    if path is None:
        raise OSError("libX11 is not installed")
    xlib = ctypes.cdll.LoadLibrary(path)
    vp, ul = ctypes.c_void_p, ctypes.c_ulong
    xlib.XOpenDisplay.argtypes, xlib.XOpenDisplay.restype = [ctypes.c_char_p], vp
    xlib.XCloseDisplay.argtypes = [vp]
    xlib.XDefaultRootWindow.argtypes, xlib.XDefaultRootWindow.restype = [vp], ul
    xlib.XInternAtom.argtypes, xlib.XInternAtom.restype = [vp, ctypes.c_char_p, ctypes.c_int], ul
    xlib.XGetWindowProperty.argtypes = [
        vp, ul, ul, ctypes.c_long, ctypes.c_long, ctypes.c_int, ul,
        ctypes.POINTER(ul), ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ul), ctypes.POINTER(ul),
        ctypes.POINTER(ctypes.c_void_p),
    ]  # fmt: skip
    xlib.XQueryTree.argtypes = [
        vp, ul, ctypes.POINTER(ul), ctypes.POINTER(ul), ctypes.POINTER(ctypes.POINTER(ul)),
        ctypes.POINTER(ctypes.c_uint),
    ]  # fmt: skip
    xlib.XGetWindowAttributes.argtypes = [vp, ul, ctypes.POINTER(_XWindowAttributes)]
    xlib.XFree.argtypes = [vp]
    xlib.XSync.argtypes = [vp, ctypes.c_int]
    xlib.XSetErrorHandler.argtypes, xlib.XSetErrorHandler.restype = [_ERROR_HANDLER], vp
    declare_io_error_handlers(xlib)
    return xlib


class X11Fullscreen:
    """Full-screen windows on an X11 display (`DISPLAY` by default)."""

    name = "x11"

    def __init__(self, display: str | None = None, *, xlib: Any = None) -> None:
        self._x = xlib if xlib is not None else _load_xlib()
        name = display if display is not None else os.environ.get("DISPLAY", "")
        self._dpy = self._x.XOpenDisplay(name.encode())
        if not self._dpy:
            raise OSError(f"cannot open the X display {name!r}")
        self._x.XSetErrorHandler(_IGNORE_ERROR)
        self._broken = False
        self._lost_handler = guard_connection(self._x, self._dpy, self)  # a lost X server: None, not exit()
        self._root = self._x.XDefaultRootWindow(self._dpy)
        self._active, self._clients = self._atom("_NET_ACTIVE_WINDOW"), self._atom("_NET_CLIENT_LIST")
        self._state, self._full = self._atom("_NET_WM_STATE"), self._atom("_NET_WM_STATE_FULLSCREEN")

    def _atom(self, name: str) -> int:
        return int(self._x.XInternAtom(self._dpy, name.encode(), 0))

    def close(self) -> None:
        if self._dpy:
            forget_connection(self._dpy)
            if not self._broken:
                self._x.XCloseDisplay(self._dpy)
            self._dpy = None

    def fullscreen(self) -> bool | None:
        if not self._dpy or self._broken:
            return None
        active = self._ids(self._root, self._active, _ANY_TYPE)
        if active and active[0]:
            return self._is_full(active[0])
        windows = self._ids(self._root, self._clients, _ANY_TYPE) or self._children()
        full = any(self._viewable(w) and self._is_full(w) for w in windows[:_MAX_WINDOWS])
        return None if self._broken else full

    def _is_full(self, window: int) -> bool:
        return self._full in self._ids(window, self._state, _XA_ATOM)

    def _ids(self, window: int, prop: int, kind: int) -> list[int]:
        """A window's property of 32-bit items (atoms or windows); [] when absent or the window is gone."""
        actual, fmt = ctypes.c_ulong(), ctypes.c_int()
        count, after, data = ctypes.c_ulong(), ctypes.c_ulong(), ctypes.c_void_p()
        status = self._x.XGetWindowProperty(
            self._dpy, window, prop, 0, _MAX_WINDOWS, 0, kind,
            ctypes.byref(actual), ctypes.byref(fmt), ctypes.byref(count), ctypes.byref(after), ctypes.byref(data),
        )  # fmt: skip
        if status != 0 or not data.value:
            return []
        try:
            if fmt.value != 32 or kind not in (_ANY_TYPE, actual.value):
                return []
            items = ctypes.cast(data, ctypes.POINTER(ctypes.c_ulong))  # format 32 comes as C longs
            return [int(items[i]) for i in range(min(count.value, _MAX_WINDOWS))]
        finally:
            self._x.XFree(data)

    def _children(self) -> list[int]:
        root, parent = ctypes.c_ulong(), ctypes.c_ulong()
        children, count = ctypes.POINTER(ctypes.c_ulong)(), ctypes.c_uint()
        if not self._x.XQueryTree(
            self._dpy, self._root, ctypes.byref(root), ctypes.byref(parent), ctypes.byref(children), ctypes.byref(count)
        ):
            return []
        try:
            return [int(children[i]) for i in range(min(count.value, _MAX_WINDOWS))]
        finally:
            if children:
                self._x.XFree(children)

    def _viewable(self, window: int) -> bool:
        attributes = _XWindowAttributes()
        if not self._x.XGetWindowAttributes(self._dpy, window, ctypes.byref(attributes)):
            return False
        return bool(attributes.map_state == _IS_VIEWABLE)


class WindowsFullscreen:
    """Windows' own answer (`SHQueryUserNotificationState`): a full-screen game or app, or presentation mode."""

    name = "windows"
    BUSY_STATES = frozenset({2, 3, 4})  # QUNS_BUSY, QUNS_RUNNING_D3D_FULL_SCREEN, QUNS_PRESENTATION_MODE

    def __init__(self) -> None:
        self._query = ctypes.windll.shell32.SHQueryUserNotificationState  # type: ignore[attr-defined]

    def fullscreen(self) -> bool | None:
        state = ctypes.c_int()
        if self._query(ctypes.byref(state)) != 0:
            return None
        return state.value in self.BUSY_STATES


def detect_fullscreen() -> FullscreenWatcher | None:
    """This session's way of telling, or None (macOS, a Wayland session without XWayland, no display)."""
    if sys.platform == "win32":
        return WindowsFullscreen()
    if os.environ.get("DISPLAY"):
        try:
            return X11Fullscreen()
        except OSError:
            return None
    return None
