"""Linux power from a fake /sys/class/power_supply tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from volunteer_app.idle import SysfsPowerSource


def supply(root: Path, name: str, **attributes: str) -> None:
    entry = root / name
    entry.mkdir(parents=True)
    for key, value in attributes.items():
        (entry / key).write_text(value + "\n")


def test_desktop_without_any_supply_is_never_on_battery(tmp_path: Path) -> None:
    assert SysfsPowerSource(tmp_path).on_battery() is False


def test_missing_sysfs_counts_as_no_battery(tmp_path: Path) -> None:
    assert SysfsPowerSource(tmp_path / "absent").on_battery() is False


def test_desktop_with_only_a_mouse_battery_is_not_on_battery(tmp_path: Path) -> None:
    supply(tmp_path, "hidpp_battery_0", type="Battery", scope="Device", status="Discharging", present="1")
    assert SysfsPowerSource(tmp_path).on_battery() is False


def test_laptop_plugged_in(tmp_path: Path) -> None:
    supply(tmp_path, "AC", type="Mains", online="1")
    supply(tmp_path, "BAT0", type="Battery", status="Charging", present="1")
    assert SysfsPowerSource(tmp_path).on_battery() is False


def test_laptop_unplugged(tmp_path: Path) -> None:
    supply(tmp_path, "AC", type="Mains", online="0")
    supply(tmp_path, "BAT0", type="Battery", status="Discharging", present="1")
    assert SysfsPowerSource(tmp_path).on_battery() is True


def test_ac_offline_counts_even_when_battery_status_is_vague(tmp_path: Path) -> None:
    supply(tmp_path, "ADP1", type="Mains", online="0")
    supply(tmp_path, "BAT1", type="Battery", status="Unknown")
    assert SysfsPowerSource(tmp_path).on_battery() is True


def test_usb_c_charger_online_means_ac(tmp_path: Path) -> None:
    supply(tmp_path, "ucsi-source-psy-USBC000:001", type="USB", online="1", scope="System")
    supply(tmp_path, "ADP1", type="Mains", online="0")
    supply(tmp_path, "BAT0", type="Battery", status="Discharging")  # drivers lag behind
    assert SysfsPowerSource(tmp_path).on_battery() is False


def test_empty_battery_bay_is_ignored(tmp_path: Path) -> None:
    supply(tmp_path, "BAT1", type="Battery", present="0", status="Unknown")
    assert SysfsPowerSource(tmp_path).on_battery() is False


@pytest.mark.parametrize(
    ("status", "expected"),
    [("Full", False), ("Charging", False), ("Not charging", False), ("Discharging", True), ("Unknown", None)],
)
def test_battery_status_alone_when_no_ac_supply_is_listed(tmp_path: Path, status: str, expected: bool | None) -> None:
    supply(tmp_path, "BAT0", type="Battery", status=status)
    assert SysfsPowerSource(tmp_path).on_battery() is expected


def test_state_is_reread_on_every_call(tmp_path: Path) -> None:
    supply(tmp_path, "AC", type="Mains", online="1")
    supply(tmp_path, "BAT0", type="Battery", status="Charging")
    power = SysfsPowerSource(tmp_path)
    assert power.on_battery() is False
    (tmp_path / "AC" / "online").write_text("0\n")
    (tmp_path / "BAT0" / "status").write_text("Discharging\n")
    assert power.on_battery() is True
