"""The Windows backend, with user32/kernel32 replaced by Python fakes that fill the same structs."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from volunteer_app.idle import WindowsIdleSource, WindowsPowerSource
from volunteer_app.idle.windows import LASTINPUTINFO


class FakeUser32:
    def __init__(self, last_input_tick: int, ok: bool = True) -> None:
        self.last_input_tick = last_input_tick
        self.ok = ok

    def GetLastInputInfo(self, plii: Any) -> int:
        info = plii.contents
        assert info.cbSize == ctypes.sizeof(LASTINPUTINFO)  # the API rejects a wrong size
        info.dwTime = self.last_input_tick
        return int(self.ok)


class FakeKernel32:
    def __init__(self, tick: int = 0, *, ac: int = 1, battery_flag: int = 0, ok: bool = True) -> None:
        self.tick = tick
        self.ac = ac
        self.battery_flag = battery_flag
        self.ok = ok

    def GetTickCount(self) -> int:
        return self.tick

    def GetSystemPowerStatus(self, status: Any) -> int:
        status.contents.ACLineStatus = self.ac
        status.contents.BatteryFlag = self.battery_flag
        status.contents.BatteryLifePercent = 80
        return int(self.ok)


def test_idle_is_ticks_since_last_input_in_seconds() -> None:
    source = WindowsIdleSource(user32=FakeUser32(last_input_tick=10_000), kernel32=FakeKernel32(tick=72_500))
    assert source.idle_seconds() == pytest.approx(62.5)


def test_idle_survives_the_49_day_tick_wraparound() -> None:
    user32 = FakeUser32(last_input_tick=2**32 - 1_000)
    source = WindowsIdleSource(user32=user32, kernel32=FakeKernel32(tick=4_000))
    assert source.idle_seconds() == pytest.approx(5.0)


def test_fresh_input_reads_zero() -> None:
    source = WindowsIdleSource(user32=FakeUser32(last_input_tick=123), kernel32=FakeKernel32(tick=123))
    assert source.idle_seconds() == 0.0


def test_failed_call_is_unknown_not_idle() -> None:
    source = WindowsIdleSource(user32=FakeUser32(0, ok=False), kernel32=FakeKernel32(tick=99_999))
    assert source.idle_seconds() is None


@pytest.mark.parametrize(
    ("ac", "battery_flag", "expected"),
    [
        (1, 0, False),  # laptop on mains
        (0, 0, True),  # laptop unplugged
        (0, 8, True),  # charging flag set but AC offline: trust AC line
        (255, 255, None),  # nothing known
        (0, 128, False),  # "no system battery": a desktop is never on battery
        (255, 128, False),
        (0, 255, True),  # battery state unknown, AC offline
    ],
)
def test_power_status_maps_ac_line_and_battery_flag(ac: int, battery_flag: int, expected: bool | None) -> None:
    power = WindowsPowerSource(kernel32=FakeKernel32(ac=ac, battery_flag=battery_flag))
    assert power.on_battery() is expected


def test_failed_power_call_is_unknown() -> None:
    assert WindowsPowerSource(kernel32=FakeKernel32(ok=False)).on_battery() is None
