"""Windows idle and power: `GetLastInputInfo` / `GetTickCount` and `GetSystemPowerStatus`.

The Win32 functions are looked up once and can be replaced by any object with the same attribute
names, which is how the tests run this module on Linux:

    WindowsIdleSource()                                  # the real user32 / kernel32
    WindowsIdleSource(user32=fake32, kernel32=fake32)    # anything with the same functions

`GetLastInputInfo` reports the session's last input as a 32-bit tick count, so the difference is taken
modulo 2**32: the count wraps every 49.7 days of uptime.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Protocol, cast

from volunteer_app.idle.base import BackendUnavailable

_TICK_MODULUS = 2**32

# SYSTEM_POWER_STATUS field values (winbase.h).
_AC_OFFLINE = 0
_AC_ONLINE = 1
_BATTERY_FLAG_NO_SYSTEM_BATTERY = 128
_BATTERY_FLAG_UNKNOWN = 255


class LASTINPUTINFO(ctypes.Structure):
    _fields_ = (("cbSize", ctypes.c_uint32), ("dwTime", ctypes.c_uint32))


class SYSTEM_POWER_STATUS(ctypes.Structure):
    _fields_ = (
        ("ACLineStatus", ctypes.c_uint8),
        ("BatteryFlag", ctypes.c_uint8),
        ("BatteryLifePercent", ctypes.c_uint8),
        ("SystemStatusFlag", ctypes.c_uint8),
        ("BatteryLifeTime", ctypes.c_uint32),
        ("BatteryFullLifeTime", ctypes.c_uint32),
    )


class User32(Protocol):
    def GetLastInputInfo(self, plii: Any, /) -> int: ...


class Kernel32(Protocol):
    def GetTickCount(self) -> int: ...

    def GetSystemPowerStatus(self, lpSystemPowerStatus: Any, /) -> int: ...


def _load_user32() -> User32:
    if sys.platform == "win32":
        dll = ctypes.WinDLL("user32", use_last_error=True)
        dll.GetLastInputInfo.argtypes = [ctypes.POINTER(LASTINPUTINFO)]
        dll.GetLastInputInfo.restype = ctypes.c_int
        return cast(User32, dll)
    raise BackendUnavailable("windows", "GetLastInputInfo exists only on Windows")


def _load_kernel32() -> Kernel32:
    if sys.platform == "win32":
        dll = ctypes.WinDLL("kernel32", use_last_error=True)
        dll.GetTickCount.argtypes = []
        dll.GetTickCount.restype = ctypes.c_uint32
        dll.GetSystemPowerStatus.argtypes = [ctypes.POINTER(SYSTEM_POWER_STATUS)]
        dll.GetSystemPowerStatus.restype = ctypes.c_int
        return cast(Kernel32, dll)
    raise BackendUnavailable("windows", "GetSystemPowerStatus exists only on Windows")


class WindowsIdleSource:
    """Idle time of the interactive session from `GetLastInputInfo`."""

    name = "windows"
    description = "Windows: time since the last keyboard or mouse input (GetLastInputInfo)."

    def __init__(self, user32: User32 | None = None, kernel32: Kernel32 | None = None) -> None:
        self._user32 = user32 if user32 is not None else _load_user32()
        self._kernel32 = kernel32 if kernel32 is not None else _load_kernel32()

    def idle_seconds(self) -> float | None:
        info = LASTINPUTINFO(cbSize=ctypes.sizeof(LASTINPUTINFO), dwTime=0)
        if not self._user32.GetLastInputInfo(ctypes.pointer(info)):
            return None
        now = int(self._kernel32.GetTickCount()) % _TICK_MODULUS
        return ((now - int(info.dwTime)) % _TICK_MODULUS) / 1000.0


class WindowsPowerSource:
    """AC line status from `GetSystemPowerStatus`; a PC with no system battery is never on battery."""

    name = "windows"

    def __init__(self, kernel32: Kernel32 | None = None) -> None:
        self._kernel32 = kernel32 if kernel32 is not None else _load_kernel32()

    def on_battery(self) -> bool | None:
        status = SYSTEM_POWER_STATUS()
        if not self._kernel32.GetSystemPowerStatus(ctypes.pointer(status)):
            return None
        if status.BatteryFlag != _BATTERY_FLAG_UNKNOWN and status.BatteryFlag & _BATTERY_FLAG_NO_SYSTEM_BATTERY:
            return False
        if status.ACLineStatus == _AC_OFFLINE:
            return True
        if status.ACLineStatus == _AC_ONLINE:
            return False
        return None
