"""A private X display (Xvfb) and a real system tray (trayer) for tests, benchmarks and screenshots.

    with XvfbDisplay() as display, SystemTray(display.name):
        env = {**os.environ, "DISPLAY": display.name, "QT_QPA_PLATFORM": "xcb"}
        ...                                   # the app's tray icon docks into trayer's panel

Xvfb picks a free display number itself (`-displayfd`), so parallel runs don't collide. Readiness
is polled with a bound: the display when Xvfb writes its number, the tray when the
`_NET_SYSTEM_TRAY_S0` selection has an owner.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import select
import shutil
import subprocess
import time
from typing import Self

__all__ = ["SystemTray", "XSessionError", "XvfbDisplay", "tray_owner", "tree", "window_geometry"]

READY_TIMEOUT_S = 15.0


class XSessionError(RuntimeError):
    """Xvfb or trayer is missing or did not come up; the message says which and why."""

    code = "xsession.unavailable"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class XvfbDisplay:
    def __init__(self, size: str = "1280x800x24") -> None:
        self.size = size
        self.name = ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        if shutil.which("Xvfb") is None:
            raise XSessionError("Xvfb is not installed (apt-get install xvfb)")
        read_fd, write_fd = os.pipe()
        try:
            self.process = subprocess.Popen(
                ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", self.size, "-nolisten", "tcp", "-noreset"],
                pass_fds=(write_fd,),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            os.close(write_fd)
            write_fd = -1
            number = b""
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not number.endswith(b"\n"):
                left = deadline - time.monotonic()
                ready, _, _ = select.select([read_fd], [], [], max(0.0, left))
                if not ready:
                    raise XSessionError(f"Xvfb did not report a display within {READY_TIMEOUT_S:.0f} s")
                chunk = os.read(read_fd, 16)
                if not chunk:
                    raise XSessionError(f"Xvfb exited early (code {self.process.wait()})")
                number += chunk
            self.name = f":{int(number)}"
        except BaseException:
            if self.process is not None:
                _stop(self.process)
            raise
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def tray_owner(display: str) -> int:
    """The window owning `_NET_SYSTEM_TRAY_S0` on `display` (0: no tray), through libX11."""
    path = ctypes.util.find_library("X11")
    if path is None:
        raise XSessionError("libX11 not found (apt-get install libx11-6)")
    xlib = ctypes.CDLL(path)
    xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    xlib.XOpenDisplay.restype = ctypes.c_void_p
    xlib.XInternAtom.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    xlib.XInternAtom.restype = ctypes.c_ulong
    xlib.XGetSelectionOwner.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
    xlib.XGetSelectionOwner.restype = ctypes.c_ulong
    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    handle = xlib.XOpenDisplay(display.encode())
    if not handle:
        raise XSessionError(f"cannot open X display {display}")
    try:
        atom = xlib.XInternAtom(handle, b"_NET_SYSTEM_TRAY_S0", 0)
        return int(xlib.XGetSelectionOwner(handle, atom))
    finally:
        xlib.XCloseDisplay(handle)


class SystemTray:
    """trayer, a small standalone panel with a freedesktop system tray, on `display`."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        if shutil.which("trayer") is None:
            raise XSessionError("trayer is not installed (apt-get install trayer)")
        command = ["trayer", "--edge", "top", "--align", "right", "--widthtype", "request", "--height", "32",
                   "--SetDockType", "true", "--transparent", "false", "--tint", "0x30343b"]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            env={**os.environ, "DISPLAY": self.display},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while tray_owner(self.display) == 0:
            if self.process.poll() is not None:
                raise XSessionError(f"trayer exited early (code {self.process.returncode})")
            if time.monotonic() > deadline:
                self.stop()
                raise XSessionError(f"trayer did not take the system tray within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None
            deadline = time.monotonic() + READY_TIMEOUT_S
            with contextlib.suppress(XSessionError):
                while tray_owner(self.display) != 0 and time.monotonic() < deadline:
                    time.sleep(0.05)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def tree(display: str) -> str:
    """`xwininfo -root -tree` on `display`: every window, for checking what is on screen."""
    result = subprocess.run(
        ["xwininfo", "-root", "-tree", "-display", display], capture_output=True, text=True, timeout=10, check=True
    )
    return result.stdout


# One line of `xwininfo -tree`: id "name": ("instance" "class")  WxH+relx+rely  +absx+absy
_WINDOW = re.compile(
    r'^\s*0x[0-9a-f]+ "(?P<name>[^"]*)".*?\s(?P<w>\d+)x(?P<h>\d+)[+-]-?\d+[+-]-?\d+\s+\+(?P<x>-?\d+)\+(?P<y>-?\d+)'
)


def window_geometry(display: str, name_part: str) -> tuple[int, int, int, int] | None:
    """(x, y, width, height) on screen of the first window larger than 1 × 1 whose name contains
    `name_part`; None when there is none."""
    for line in tree(display).splitlines():
        match = _WINDOW.match(line)
        if match and name_part in match["name"] and int(match["w"]) > 1 and int(match["h"]) > 1:
            return int(match["x"]), int(match["y"]), int(match["w"]), int(match["h"])
    return None
