"""How hot the machine runs: the hottest CPU/GPU sensor the OS shows, for the policy's heat rule.

    >>> thermometer = detect_thermometer()
    >>> thermometer.hottest()            # Reading(celsius=71.0, sensor='coretemp Package id 0'), or None
    >>> thermometer.name                 # 'sysfs+nvml', shown in the app beside the idle backend

Linux: the kernel's thermal zones (`/sys/class/thermal/thermal_zone*/temp`) and hwmon sensors
(`/sys/class/hwmon/hwmon*/temp*_input`, which includes AMD GPUs' `amdgpu`), both in millidegrees.
NVIDIA GPUs: NVML, when the `nvidia-ml-py` module is installed (the CUDA training environment has it).
Windows and macOS expose no temperature without a vendor driver or administrator rights (WMI's
MSAcpi_ThermalZoneTemperature needs both); there the heat rule says it has no sensor.

A sensor's reading is the OS's, but odd values are common (a disconnected probe reads -273 °C or
255 °C): readings outside 1–150 °C are ignored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = ["NvmlThermometer", "Reading", "SysfsThermometer", "Thermometer", "detect_thermometer"]

log = logging.getLogger(__name__)

PLAUSIBLE_C = (1.0, 150.0)


@dataclass(frozen=True)
class Reading:
    celsius: float
    sensor: str  # which one, for the app: "coretemp Package id 0", "GPU 0 NVIDIA GeForce RTX 3060"


class Thermometer(Protocol):
    name: str

    def hottest(self) -> Reading | None:
        """The hottest plausible reading now; None when no sensor answers."""
        ...


def _plausible(celsius: float) -> bool:
    return PLAUSIBLE_C[0] <= celsius <= PLAUSIBLE_C[1]


def _read_millidegrees(path: Path) -> float | None:
    try:
        text = path.read_text(encoding="ascii", errors="strict")[:32].strip()
        celsius = int(text) / 1000.0
    except (OSError, ValueError):
        return None
    return celsius if _plausible(celsius) else None


def _label(path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text()[:64].strip()
    return ""


class SysfsThermometer:
    """Linux's thermal zones and hwmon sensors under `root` (/sys; a test gives a folder shaped like it)."""

    name = "sysfs"

    def __init__(self, root: Path = Path("/sys")) -> None:
        self.root = root

    def sensors(self) -> list[Reading]:
        readings: list[Reading] = []
        for zone in sorted((self.root / "class" / "thermal").glob("thermal_zone*")):
            celsius = _read_millidegrees(zone / "temp")
            if celsius is not None:
                readings.append(Reading(celsius, _label(zone / "type") or zone.name))
        for hwmon in sorted((self.root / "class" / "hwmon").glob("hwmon*")):
            chip = _label(hwmon / "name") or hwmon.name
            for sensor in sorted(hwmon.glob("temp*_input")):
                celsius = _read_millidegrees(sensor)
                if celsius is None:
                    continue
                label = _label(sensor.with_name(sensor.name.replace("_input", "_label")))
                readings.append(Reading(celsius, f"{chip} {label}".strip()))
        return readings

    def hottest(self) -> Reading | None:
        return max(self.sensors(), key=lambda r: r.celsius, default=None)


class NvmlThermometer:
    """NVIDIA GPUs' core temperatures through NVML (`nvidia-ml-py`); `nvml` is the module (tests pass one)."""

    name = "nvml"

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        nvml.nvmlInit()

    @classmethod
    def open(cls) -> NvmlThermometer | None:
        try:
            import pynvml  # type: ignore[import-not-found]

            return cls(pynvml)
        except Exception:  # no module, no driver, no GPU: no NVIDIA sensor
            return None

    def hottest(self) -> Reading | None:
        nvml = self.nvml
        readings = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                celsius = float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
                name = nvml.nvmlDeviceGetName(handle)
                name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
                if _plausible(celsius):
                    readings.append(Reading(celsius, f"GPU {index} {name}"))
        except Exception as error:  # the driver went away (sleep, reset): no reading this time
            log.debug("NVML gave no temperature: %s", error)
        return max(readings, key=lambda r: r.celsius, default=None)


class Thermometers:
    """The hottest of several thermometers."""

    def __init__(self, parts: Sequence[Thermometer]) -> None:
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts) or "none"

    def hottest(self) -> Reading | None:
        readings = [r for r in (p.hottest() for p in self.parts) if r is not None]
        return max(readings, key=lambda r: r.celsius, default=None)


def detect_thermometer(
    *, sysfs_root: Path = Path("/sys"), nvml: Callable[[], NvmlThermometer | None] = NvmlThermometer.open
) -> Thermometers:
    """Every thermometer this machine has (none on Windows and macOS, or in a container without /sys)."""
    parts: list[Thermometer] = []
    sysfs = SysfsThermometer(sysfs_root)
    if sysfs.sensors():
        parts.append(sysfs)
    gpu = nvml()
    if gpu is not None:
        parts.append(gpu)
    return Thermometers(parts)
