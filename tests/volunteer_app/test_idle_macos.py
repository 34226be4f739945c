"""The macOS backend, with CoreFoundation/IOKit/CoreGraphics replaced by a fake that hands out
handles and tracks their release, so leaks show up as failures."""

from __future__ import annotations

from typing import Any

import pytest

from volunteer_app.idle import MacIdleSource, MacPowerSource
from volunteer_app.idle.macos import MacFrameworks

NUMBER_TYPE, STRING_TYPE, DATA_TYPE = 22, 7, 20


class FakeMac:
    """Enough of the three frameworks for MacFrameworks, as one object."""

    def __init__(
        self,
        *,
        hid_idle_ns: int | None = 5_000_000_000,
        hid_type: int = NUMBER_TYPE,
        cg_seconds: float = 9.0,
        power: str | None = "AC Power",
        services_status: int = 0,
    ) -> None:
        self.hid_idle_ns = hid_idle_ns
        self.hid_type = hid_type
        self.cg_seconds = cg_seconds
        self.power = power
        self.services_status = services_status
        self.owned: dict[int, Any] = {}  # handles the caller must release
        self.io_objects: set[int] = set()
        self._next = 100
        self._static_power = self._handle(("str", power))  # "Get" rule: not owned by the caller
        self.owned.pop(self._static_power)
        self._statics = {self._static_power: ("str", power)}

    def _handle(self, obj: Any) -> int:
        self._next += 1
        self.owned[self._next] = obj
        return self._next

    def _obj(self, ref: int) -> Any:
        return self.owned.get(ref) or self._statics[ref]

    # CoreFoundation
    def CFStringCreateWithCString(self, alloc: Any, cstr: bytes, encoding: int) -> int:
        return self._handle(("str", cstr.decode()))

    def CFStringGetCString(self, ref: int, buf: Any, size: int, encoding: int) -> bool:
        kind, text = self._obj(ref)
        assert kind == "str"
        buf.value = text.encode()
        return True

    def CFRelease(self, ref: int) -> None:
        assert ref in self.owned, f"released a handle not owned: {ref}"
        del self.owned[ref]

    def CFGetTypeID(self, ref: int) -> int:
        return int(self.owned[ref][0])

    def CFNumberGetTypeID(self) -> int:
        return NUMBER_TYPE

    def CFNumberGetValue(self, ref: int, number_type: int, out: Any) -> bool:
        assert number_type == 4  # kCFNumberSInt64Type
        out.contents.value = self.owned[ref][1]
        return True

    # IOKit
    def IOServiceMatching(self, name: bytes) -> int:
        assert name == b"IOHIDSystem"
        return self._handle(("dict", name))

    def IOServiceGetMatchingServices(self, port: int, matching: int, iterator: Any) -> int:
        del self.owned[matching]  # consumed, per the IOKit contract
        if self.services_status != 0:
            return self.services_status
        iterator.contents.value = 7
        self.io_objects.add(7)
        self._iterated = False
        return 0

    def IOIteratorNext(self, iterator: int) -> int:
        if self._iterated:
            return 0
        self._iterated = True
        self.io_objects.add(8)
        return 8

    def IORegistryEntryCreateCFProperty(self, entry: int, key: int, alloc: Any, options: int) -> int:
        assert entry == 8
        assert self.owned[key] == ("str", "HIDIdleTime")
        if self.hid_idle_ns is None:
            return 0
        return self._handle((self.hid_type, self.hid_idle_ns))

    def IOObjectRelease(self, obj: int) -> int:
        self.io_objects.remove(obj)
        return 0

    def IOPSCopyPowerSourcesInfo(self) -> int:
        return self._handle(("blob", None))

    def IOPSGetProvidingPowerSourceType(self, blob: int) -> int:
        assert self.owned[blob][0] == "blob"
        return self._static_power if self.power is not None else 0

    # CoreGraphics
    def CGEventSourceSecondsSinceLastEventType(self, state: int, event_type: int) -> float:
        assert (state, event_type) == (0, 0xFFFFFFFF)  # combined session state, any input event
        return self.cg_seconds


def frameworks(fake: FakeMac) -> MacFrameworks:
    return MacFrameworks(cf=fake, iokit=fake, cg=fake)


def assert_nothing_leaked(fake: FakeMac) -> None:
    assert fake.owned == {}
    assert fake.io_objects == set()


def test_idle_takes_the_smaller_of_hid_and_event_source() -> None:
    fake = FakeMac(hid_idle_ns=5_000_000_000, cg_seconds=9.0)
    assert MacIdleSource(frameworks(fake)).idle_seconds() == pytest.approx(5.0)
    fake.cg_seconds = 1.25  # e.g. input over screen sharing, which HID does not see
    assert MacIdleSource(frameworks(fake)).idle_seconds() == pytest.approx(1.25)
    assert_nothing_leaked(fake)


def test_hid_idle_time_is_read_in_nanoseconds() -> None:
    fake = FakeMac(hid_idle_ns=1_500_000, cg_seconds=100.0)
    assert frameworks(fake).hid_idle_seconds() == pytest.approx(0.0015)
    assert_nothing_leaked(fake)


def test_missing_hid_property_falls_back_to_event_source() -> None:
    fake = FakeMac(hid_idle_ns=None, cg_seconds=3.0)
    assert MacIdleSource(frameworks(fake)).idle_seconds() == pytest.approx(3.0)
    assert_nothing_leaked(fake)


def test_hid_property_of_unexpected_type_is_ignored_and_released() -> None:
    fake = FakeMac(hid_type=DATA_TYPE, cg_seconds=2.0)
    assert frameworks(fake).hid_idle_seconds() is None
    assert MacIdleSource(frameworks(fake)).idle_seconds() == pytest.approx(2.0)
    assert_nothing_leaked(fake)


def test_no_reading_at_all_is_unknown() -> None:
    fake = FakeMac(services_status=5, cg_seconds=float("nan"))
    assert MacIdleSource(frameworks(fake)).idle_seconds() is None
    assert_nothing_leaked(fake)


@pytest.mark.parametrize(
    ("power", "expected"),
    [
        ("AC Power", False),
        ("Battery Power", True),
        ("UPS Power", True),
        ("Something New", None),
        (None, None),
    ],
)
def test_power_from_providing_power_source_type(power: str | None, expected: bool | None) -> None:
    fake = FakeMac(power=power)
    assert MacPowerSource(frameworks(fake)).on_battery() is expected
    assert_nothing_leaked(fake)
