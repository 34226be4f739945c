"""Linux battery and AC presence from /sys/class/power_supply.

Rules, in order (the same spirit as systemd's `on_ac_power` and UPower):

1. Only supplies that power the system count: `scope=Device` entries (a wireless mouse's battery)
   and batteries marked not `present` are ignored.
2. No system battery: a desktop, never on battery.
3. Any mains/USB/wireless supply `online`: on AC.
4. A battery `Discharging`, or AC supplies that all report offline: on battery.
5. Batteries `Charging`, `Full` or `Not charging`: on AC. Anything else: unknown (None).

    SysfsPowerSource().on_battery()   # False on a desktop or a plugged-in laptop
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYSFS_POWER_SUPPLY = Path("/sys/class/power_supply")

_ON_AC_STATUSES = {"charging", "full", "not charging"}


@dataclass(frozen=True)
class PowerSupply:
    """What one /sys/class/power_supply/<name> entry says."""

    name: str
    type: str  # "Battery", "Mains", "USB", "UPS", "Wireless", ...
    scope: str  # "System", "Device", or "" when the driver does not say
    online: bool | None  # for AC-type supplies
    present: bool | None  # for batteries
    status: str  # for batteries: "Charging", "Discharging", "Full", "Not charging", "Unknown"

    @property
    def powers_system(self) -> bool:
        return self.scope.lower() != "device"


def _read(entry: Path, attribute: str) -> str:
    try:
        return (entry / attribute).read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _flag(text: str) -> bool | None:
    return {"1": True, "0": False}.get(text)


def read_power_supplies(root: Path = SYSFS_POWER_SUPPLY) -> list[PowerSupply]:
    """Every supply under `root`, sorted by name; an unreadable or missing root gives []."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    return [
        PowerSupply(
            name=entry.name,
            type=_read(entry, "type"),
            scope=_read(entry, "scope"),
            online=_flag(_read(entry, "online")),
            present=_flag(_read(entry, "present")),
            status=_read(entry, "status"),
        )
        for entry in entries
    ]


def on_battery_from(supplies: list[PowerSupply]) -> bool | None:
    """Apply the module's rules to a list of supplies."""
    system = [s for s in supplies if s.powers_system]
    batteries = [s for s in system if s.type == "Battery" and s.present is not False]
    if not batteries:
        return False
    ac_supplies = [s for s in system if s.type not in ("Battery", "UPS", "")]
    if any(s.online for s in ac_supplies):
        return False
    if any(s.status.lower() == "discharging" for s in batteries):
        return True
    if ac_supplies and all(s.online is False for s in ac_supplies):
        return True
    if any(s.status.lower() in _ON_AC_STATUSES for s in batteries):
        return False
    return None


class SysfsPowerSource:
    """On-battery state of a Linux machine, read from sysfs at each call (cheap: a few small files)."""

    name = "linux-sysfs"

    def __init__(self, root: Path = SYSFS_POWER_SUPPLY) -> None:
        self._root = root

    def on_battery(self) -> bool | None:
        return on_battery_from(read_power_supplies(self._root))
