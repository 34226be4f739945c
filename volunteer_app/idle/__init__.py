"""Is the volunteer at the keyboard, and is the machine on battery? One backend per OS and session.

    >>> from volunteer_app.idle import detect_idle_source, detect_power_source
    >>> idle, power = detect_idle_source(), detect_power_source()
    >>> seconds = idle.idle_seconds()    # since the last input; None in manual mode
    >>> on_battery = power.on_battery()  # False on a desktop; None where the OS cannot tell

Backends live in their own modules (`windows`, `macos`, `x11`, `wayland_idle`, `wayland`, `linux_power`) and take
their OS calls as constructor arguments, so each is tested with fakes on any OS.
"""

from __future__ import annotations

from volunteer_app.idle.base import BackendUnavailable, IdleSource, PowerSource
from volunteer_app.idle.cpu_load import OtherCpuLoad
from volunteer_app.idle.detect import UnknownPowerSource, detect_idle_source, detect_power_source
from volunteer_app.idle.fallback import CpuLoadIdleGuess, ManualIdleSource
from volunteer_app.idle.latency import measure_reset_latency
from volunteer_app.idle.linux_power import SysfsPowerSource
from volunteer_app.idle.macos import MacIdleSource, MacPowerSource
from volunteer_app.idle.wayland import GnomeMutterIdleSource, LogindIdleSource
from volunteer_app.idle.wayland_idle import WaylandIdleSource
from volunteer_app.idle.windows import WindowsIdleSource, WindowsPowerSource
from volunteer_app.idle.x11 import X11IdleSource, is_wayland_session

__all__ = [
    "BackendUnavailable",
    "CpuLoadIdleGuess",
    "GnomeMutterIdleSource",
    "IdleSource",
    "LogindIdleSource",
    "MacIdleSource",
    "MacPowerSource",
    "ManualIdleSource",
    "OtherCpuLoad",
    "PowerSource",
    "SysfsPowerSource",
    "UnknownPowerSource",
    "WaylandIdleSource",
    "WindowsIdleSource",
    "WindowsPowerSource",
    "X11IdleSource",
    "detect_idle_source",
    "detect_power_source",
    "is_wayland_session",
    "measure_reset_latency",
]
