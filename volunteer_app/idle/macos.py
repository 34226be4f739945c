"""macOS idle and power through IOKit, CoreGraphics and CoreFoundation, called with ctypes.

Idle time is read two ways and the smaller wins, because each misses something the other sees:
IOKit's `HIDIdleTime` (nanoseconds since the last hardware HID event, from the IOHIDSystem registry
entry) and `CGEventSourceSecondsSinceLastEventType` (the window server's combined session state, which
also counts input arriving over screen sharing). Power comes from `IOPSCopyPowerSourcesInfo` /
`IOPSGetProvidingPowerSourceType`: "AC Power", "Battery Power" or "UPS Power".

    MacIdleSource().idle_seconds()   # 3.2

The frameworks are reached through `MacFrameworks`, whose three library handles tests replace with
fakes that implement the same C functions in Python.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from volunteer_app.idle.base import BackendUnavailable

_FRAMEWORKS = "/System/Library/Frameworks"
_CF_STRING_ENCODING_UTF8 = 0x08000100
_CF_NUMBER_SINT64_TYPE = 4
_CG_COMBINED_SESSION_STATE = 0
_CG_ANY_INPUT_EVENT_TYPE = 0xFFFFFFFF
_KERN_SUCCESS = 0
_MAIN_PORT_DEFAULT = 0

AC_POWER = "AC Power"
BATTERY_POWER = "Battery Power"
UPS_POWER = "UPS Power"


def _load_frameworks() -> tuple[Any, Any, Any]:
    """Open CoreFoundation, IOKit and CoreGraphics and declare the signatures this module calls."""
    try:
        cf = ctypes.CDLL(f"{_FRAMEWORKS}/CoreFoundation.framework/CoreFoundation")
        iokit = ctypes.CDLL(f"{_FRAMEWORKS}/IOKit.framework/IOKit")
        cg = ctypes.CDLL(f"{_FRAMEWORKS}/CoreGraphics.framework/CoreGraphics")
    except OSError as exc:
        raise BackendUnavailable("macos", f"cannot load the macOS frameworks ({exc})") from exc
    vp, u32 = ctypes.c_void_p, ctypes.c_uint32
    signatures: list[tuple[Any, str, list[Any], Any]] = [
        (cf, "CFStringCreateWithCString", [vp, ctypes.c_char_p, u32], vp),
        (cf, "CFStringGetCString", [vp, ctypes.c_char_p, ctypes.c_long, u32], ctypes.c_bool),
        (cf, "CFRelease", [vp], None),
        (cf, "CFGetTypeID", [vp], ctypes.c_ulong),
        (cf, "CFNumberGetTypeID", [], ctypes.c_ulong),
        (cf, "CFNumberGetValue", [vp, ctypes.c_long, vp], ctypes.c_bool),
        (iokit, "IOServiceMatching", [ctypes.c_char_p], vp),
        (iokit, "IOServiceGetMatchingServices", [u32, vp, ctypes.POINTER(u32)], ctypes.c_int),
        (iokit, "IOIteratorNext", [u32], u32),
        (iokit, "IORegistryEntryCreateCFProperty", [u32, vp, vp, u32], vp),
        (iokit, "IOObjectRelease", [u32], ctypes.c_int),
        (iokit, "IOPSCopyPowerSourcesInfo", [], vp),
        (iokit, "IOPSGetProvidingPowerSourceType", [vp], vp),
        (cg, "CGEventSourceSecondsSinceLastEventType", [ctypes.c_int32, u32], ctypes.c_double),
    ]
    for lib, fn_name, argtypes, restype in signatures:
        fn = getattr(lib, fn_name)
        fn.argtypes = argtypes
        fn.restype = restype
    return cf, iokit, cg


@dataclass
class MacFrameworks:
    """The C calls this module makes, over three library handles (real ctypes libraries or fakes)."""

    cf: Any
    iokit: Any
    cg: Any

    @classmethod
    def load(cls) -> MacFrameworks:
        return cls(*_load_frameworks())

    def _cfstring(self, text: str) -> Any:
        return self.cf.CFStringCreateWithCString(None, text.encode(), _CF_STRING_ENCODING_UTF8)

    def _to_str(self, cfstring: Any) -> str | None:
        buf = ctypes.create_string_buffer(256)
        if not self.cf.CFStringGetCString(cfstring, buf, len(buf), _CF_STRING_ENCODING_UTF8):
            return None
        return buf.value.decode("utf-8", "replace")

    def hid_idle_seconds(self) -> float | None:
        """`HIDIdleTime` of the IOHIDSystem registry entry, in seconds."""
        iterator = ctypes.c_uint32(0)
        matching = self.iokit.IOServiceMatching(b"IOHIDSystem")  # consumed by the next call
        status = self.iokit.IOServiceGetMatchingServices(_MAIN_PORT_DEFAULT, matching, ctypes.pointer(iterator))
        if status != _KERN_SUCCESS or not iterator.value:
            return None
        try:
            entry = self.iokit.IOIteratorNext(iterator.value)
            if not entry:
                return None
            try:
                return self._entry_idle_seconds(entry)
            finally:
                self.iokit.IOObjectRelease(entry)
        finally:
            self.iokit.IOObjectRelease(iterator.value)

    def _entry_idle_seconds(self, entry: int) -> float | None:
        key = self._cfstring("HIDIdleTime")
        if not key:
            return None
        try:
            prop = self.iokit.IORegistryEntryCreateCFProperty(entry, key, None, 0)
        finally:
            self.cf.CFRelease(key)
        if not prop:
            return None
        try:
            if self.cf.CFGetTypeID(prop) != self.cf.CFNumberGetTypeID():
                return None
            nanoseconds = ctypes.c_int64(0)
            if not self.cf.CFNumberGetValue(prop, _CF_NUMBER_SINT64_TYPE, ctypes.pointer(nanoseconds)):
                return None
            return max(0, nanoseconds.value) / 1e9
        finally:
            self.cf.CFRelease(prop)

    def event_idle_seconds(self) -> float | None:
        """Seconds since any input event in the combined session state (CoreGraphics)."""
        seconds = float(
            self.cg.CGEventSourceSecondsSinceLastEventType(_CG_COMBINED_SESSION_STATE, _CG_ANY_INPUT_EVENT_TYPE)
        )
        if seconds != seconds or seconds < 0:  # NaN or nonsense: no answer
            return None
        return seconds

    def providing_power_source(self) -> str | None:
        """AC_POWER, BATTERY_POWER, UPS_POWER, or None if IOKit could not say."""
        blob = self.iokit.IOPSCopyPowerSourcesInfo()
        if not blob:
            return None
        try:
            kind = self.iokit.IOPSGetProvidingPowerSourceType(blob)  # not owned: no release
            return self._to_str(kind) if kind else None
        finally:
            self.cf.CFRelease(blob)


class MacIdleSource:
    """The smaller of IOKit `HIDIdleTime` and CoreGraphics' seconds since the last input event."""

    name = "macos"
    description = (
        "macOS: time since the last keyboard or mouse input "
        "(IOKit HIDIdleTime and CGEventSourceSecondsSinceLastEventType, whichever is smaller)."
    )

    def __init__(self, frameworks: MacFrameworks | None = None) -> None:
        self._fw = frameworks if frameworks is not None else MacFrameworks.load()

    def idle_seconds(self) -> float | None:
        readings = [r for r in (self._fw.hid_idle_seconds(), self._fw.event_idle_seconds()) if r is not None]
        return min(readings) if readings else None


class MacPowerSource:
    """On battery when IOKit says the providing power source is a battery or a UPS."""

    name = "macos"

    def __init__(self, frameworks: MacFrameworks | None = None) -> None:
        self._fw = frameworks if frameworks is not None else MacFrameworks.load()

    def on_battery(self) -> bool | None:
        kind = self._fw.providing_power_source()
        if kind is None:
            return None
        if kind == AC_POWER:
            return False
        # A UPS that has taken over is stored energy that a long training run would drain, like a battery.
        if kind in (BATTERY_POWER, UPS_POWER):
            return True
        return None
