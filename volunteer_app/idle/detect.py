"""Choosing the idle and power backends for this OS and login session.

    >>> source = detect_idle_source()
    >>> source.name in {"windows", "macos", "x11", "wayland-ext-idle-notify", "wayland-kde-idle",
    ...                 "gnome-mutter", "logind", "manual", "cpu-load-guess"}
    True

Linux tries, in order: X11 (unless the session is Wayland), the Wayland compositor's idle protocol
(ext-idle-notify-v1, else KDE's; where WAYLAND_DISPLAY is set), GNOME Mutter's IdleMonitor, logind's
IdleHint; when none works it returns the fallback, whose description lists why each backend was
passed over.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Literal

from volunteer_app.idle.base import BackendUnavailable, IdleSource, PowerSource
from volunteer_app.idle.fallback import CpuLoadIdleGuess, ManualIdleSource
from volunteer_app.idle.linux_power import SysfsPowerSource
from volunteer_app.idle.macos import MacIdleSource, MacPowerSource
from volunteer_app.idle.wayland import GnomeMutterIdleSource, LogindIdleSource
from volunteer_app.idle.wayland_idle import WaylandIdleSource
from volunteer_app.idle.windows import WindowsIdleSource, WindowsPowerSource
from volunteer_app.idle.x11 import X11IdleSource, is_wayland_session

Fallback = Literal["manual", "cpu-load"]


class UnknownPowerSource:
    """Used where the OS's power state cannot be read: always None (the policy treats it as AC)."""

    name = "unknown"

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def on_battery(self) -> bool | None:
        return None


def _linux_candidates(environ: Mapping[str, str]) -> list[tuple[str, Callable[[], IdleSource]]]:
    candidates: list[tuple[str, Callable[[], IdleSource]]] = []
    if not is_wayland_session(environ) and environ.get("DISPLAY"):
        candidates.append(("x11", lambda: X11IdleSource(environ=environ)))
    if environ.get("WAYLAND_DISPLAY"):
        candidates.append(("wayland", lambda: WaylandIdleSource(environ)))
    candidates.append(("gnome-mutter", GnomeMutterIdleSource))
    candidates.append(("logind", LogindIdleSource))
    return candidates


def detect_idle_source(
    *,
    platform: str = sys.platform,
    environ: Mapping[str, str] | None = None,
    fallback: Fallback = "manual",
) -> IdleSource:
    """The best idle source for this session, or a labelled fallback; never raises.

    `fallback="cpu-load"` guesses idleness from CPU load where input cannot be seen (opt-in, since it
    can start work while someone reads); the default is manual mode.
    """
    env = os.environ if environ is None else environ
    candidates: list[tuple[str, Callable[[], IdleSource]]]
    if platform == "win32":
        candidates = [("windows", WindowsIdleSource)]
    elif platform == "darwin":
        candidates = [("macos", MacIdleSource)]
    else:
        candidates = _linux_candidates(env)
    reasons: list[str] = []
    for name, make in candidates:
        try:
            return make()
        except BackendUnavailable as exc:
            reasons.append(f"{name}: {exc.reason}")
        except (OSError, AttributeError) as exc:  # a library without the expected symbols
            reasons.append(f"{name}: {exc}")
    reason = "; ".join(reasons)
    if fallback == "cpu-load" and platform.startswith("linux"):
        guess = CpuLoadIdleGuess(reason=reason)
        if guess.idle_seconds() is not None:
            return guess
        reason += "; cpu-load: /proc/stat is not readable"
    return ManualIdleSource(reason=reason)


def detect_power_source(*, platform: str = sys.platform) -> PowerSource:
    """The OS's power source reader; `UnknownPowerSource` where there is none."""
    try:
        if platform == "win32":
            return WindowsPowerSource()
        if platform == "darwin":
            return MacPowerSource()
    except BackendUnavailable as exc:
        return UnknownPowerSource(reason=exc.reason)
    if platform.startswith("linux"):
        return SysfsPowerSource()
    return UnknownPowerSource(reason=f"no power backend for {platform}")
