"""Temperature sensors (a folder shaped like Linux's /sys, since this machine has none; NVML through a
stand-in module, since no NVIDIA GPU is here) and the policy's heat rule with its hysteresis."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from volunteer_app.policy import ComputePolicy, ManualClock, Observation, RunState
from volunteer_app.preferences import Preferences, PreferencesError
from volunteer_app.thermal import NvmlThermometer, SysfsThermometer, detect_thermometer


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    _write(root / "class/thermal/thermal_zone0/temp", "45000\n")
    _write(root / "class/thermal/thermal_zone0/type", "x86_pkg_temp\n")
    _write(root / "class/thermal/thermal_zone1/temp", "-273000\n")  # a disconnected probe
    _write(root / "class/hwmon/hwmon0/name", "coretemp\n")
    _write(root / "class/hwmon/hwmon0/temp1_input", "71500\n")
    _write(root / "class/hwmon/hwmon0/temp1_label", "Package id 0\n")
    _write(root / "class/hwmon/hwmon0/temp2_input", "255000\n")  # implausible
    _write(root / "class/hwmon/hwmon1/name", "amdgpu\n")
    _write(root / "class/hwmon/hwmon1/temp1_input", "not a number\n")
    return root


def test_the_hottest_plausible_sensor_is_read_with_its_name(sysfs: Path) -> None:
    thermometer = SysfsThermometer(sysfs)
    assert [(r.celsius, r.sensor) for r in thermometer.sensors()] == [
        (45.0, "x86_pkg_temp"),
        (71.5, "coretemp Package id 0"),
    ]
    hottest = thermometer.hottest()
    assert hottest is not None and (hottest.celsius, hottest.sensor) == (71.5, "coretemp Package id 0")


class FakeNvml:
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, temperatures: list[float], *, fail: bool = False) -> None:
        self.temperatures, self.fail, self.initialised = temperatures, fail, False

    def nvmlInit(self) -> None:
        self.initialised = True

    def nvmlDeviceGetCount(self) -> int:
        if self.fail:
            raise RuntimeError("NVML_ERROR_GPU_IS_LOST")
        return len(self.temperatures)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        return SimpleNamespace(index=index)

    def nvmlDeviceGetTemperature(self, handle: SimpleNamespace, sensor: int) -> int:
        return int(self.temperatures[handle.index])

    def nvmlDeviceGetName(self, handle: SimpleNamespace) -> bytes:
        return b"NVIDIA GeForce RTX 3060"


def test_nvidia_gpus_are_read_through_nvml_and_a_lost_gpu_reads_as_no_sensor(sysfs: Path) -> None:
    gpu = NvmlThermometer(FakeNvml([66.0, 83.0]))
    reading = gpu.hottest()
    assert reading is not None and (reading.celsius, reading.sensor) == (83.0, "GPU 1 NVIDIA GeForce RTX 3060")
    both = detect_thermometer(sysfs_root=sysfs, nvml=lambda: gpu)
    assert both.name == "sysfs+nvml" and both.hottest() == reading
    assert NvmlThermometer(FakeNvml([], fail=True)).hottest() is None  # after sleep the driver may be gone


def test_a_machine_without_sensors_has_none(tmp_path: Path) -> None:
    nothing = detect_thermometer(sysfs_root=tmp_path / "empty", nvml=lambda: None)
    assert nothing.name == "none" and nothing.hottest() is None


def _policy(limit: float) -> ComputePolicy:
    clock = ManualClock(datetime(2026, 12, 3, 12, 0, tzinfo=UTC))
    return ComputePolicy(Preferences(idle_minutes=0, pause_above_celsius=limit), clock)


def test_work_pauses_at_the_limit_and_resumes_only_once_cooled_by_the_hysteresis() -> None:
    policy = _policy(90)

    def at(celsius: float | None) -> tuple[RunState, str]:
        decision = policy.decide(Observation(idle_seconds=600, temperature_c=celsius, temperature_sensor="coretemp"))
        return decision.state, decision.reason

    assert at(85)[0] is RunState.RUN
    state, reason = at(90)
    assert state is RunState.SUSPEND and reason == "too hot (coretemp 90 °C; pauses at 90 °C, resumes below 80 °C)"
    assert at(85)[0] is RunState.SUSPEND  # cooling, not yet cool
    assert at(80)[0] is RunState.SUSPEND
    assert at(79.5)[0] is RunState.RUN
    assert at(None)[0] is RunState.RUN  # no reading: cool stays cool
    assert at(95)[0] is RunState.SUSPEND
    state, reason = at(None)  # a failed read (the GPU driver after sleep): hot stays hot
    assert state is RunState.SUSPEND and "no reading" in reason


def test_the_heat_rule_is_off_at_zero_and_the_preference_is_checked() -> None:
    policy = _policy(0)
    assert policy.decide(Observation(idle_seconds=600, temperature_c=120)).state is RunState.RUN
    with pytest.raises(PreferencesError, match="degrees Celsius"):
        Preferences(pause_above_celsius=500)
