"""Stand-ins for the controller's collaborators: an idle source the test sets, a child that records
commands, and a controller built from them on a manual clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from volunteer_app.autostart import Autostart
from volunteer_app.awake import KeepAwake
from volunteer_app.events import StateChanged, WorkerState
from volunteer_app.idle.base import IdleSource
from volunteer_app.policy import Clock, ManualClock
from volunteer_app.preferences import Preferences, save_preferences
from volunteer_app.thermal import Reading, Thermometer
from volunteer_app.tray.controller import AppController, AppPaths, ControllerTuning
from volunteer_app.tray.ipc import ChildConfig, ChildExited, ChildMessage, ChildReady, DeviceChosen
from volunteer_app.tray.stats import StatsBook

NOON = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)


class FakeIdle:
    """Idle seconds as the test sets them; `name` "manual" turns on manual mode."""

    def __init__(self, seconds: float | None = 0.0, name: str = "fake") -> None:
        self.seconds = seconds
        self.name = name
        self.description = "a test's idle source"

    def idle_seconds(self) -> float | None:
        return self.seconds


class FakeThermometer:
    """A sensor reading what the test sets (this machine has no /sys thermal zones)."""

    name = "fake"

    def __init__(self, celsius: float | None) -> None:
        self.celsius = celsius

    def hottest(self) -> Reading | None:
        return None if self.celsius is None else Reading(self.celsius, "fake sensor")


class FakePower:
    name = "fake"

    def __init__(self) -> None:
        self.battery: bool | None = False

    def on_battery(self) -> bool | None:
        return self.battery


@dataclass
class FakeChild:
    config: ChildConfig
    deliver: Callable[[ChildMessage], None]
    commands: list[str] = field(default_factory=list)
    paused: bool = False
    started: bool = False
    pid: int | None = None

    def start(self) -> None:
        self.started, self.paused, self.pid = True, self.config.start_paused, 4242
        self.deliver(ChildReady(4242))

    def pause(self) -> None:
        self.paused = True
        self.commands.append("pause")
        self.deliver(StateChanged(WorkerState.PAUSED, "paused"))

    def resume(self) -> None:
        self.paused = False
        self.commands.append("resume")
        self.deliver(StateChanged(WorkerState.TRAINING, "test campaign"))

    def stop(self) -> None:
        self.commands.append("stop")
        self.deliver(ChildExited(0, expected=True, finished=True))

    def kill(self) -> None:
        self.commands.append("kill")

    def join(self, timeout: float) -> bool:
        return True

    def crash(self, exitcode: int = -9) -> None:
        self.deliver(ChildExited(exitcode, expected=False, finished=False))

    def device(self, kind: str) -> None:
        self.deliver(DeviceChosen(kind, f"a {kind}", 1 << 30))


@dataclass
class Rig:
    controller: AppController
    clock: ManualClock  # the controller's, unless make_rig was given another
    idle: Any  # a FakeIdle, unless make_rig was given another source
    children: list[FakeChild]
    prefs_path: Path

    @property
    def child(self) -> FakeChild:
        return self.children[-1]

    def step(self, seconds: float = 0.25, *, idle: float | None = None) -> None:
        """Move the clock; the idle counter grows with it unless `idle` resets it."""
        self.clock.advance(seconds)
        if idle is not None:
            self.idle.seconds = idle
        elif self.idle.seconds is not None:
            self.idle.seconds += seconds
        self.controller.tick()


def make_rig(
    tmp_path: Path,
    prefs: Preferences | None = None,
    *,
    idle: IdleSource | None = None,
    clock: Clock | None = None,
    tuning: ControllerTuning | None = None,
    autostart: Autostart | None = None,
    thermometer: Thermometer | None = None,
    keep_awake: KeepAwake | None = None,
    power: FakePower | None = None,
) -> Rig:
    prefs = prefs or Preferences(idle_minutes=1, coordinator_url="ws://127.0.0.1:9/ws")
    prefs_path = tmp_path / "preferences.toml"
    save_preferences(prefs, prefs_path)
    manual = ManualClock(NOON)
    source = idle or FakeIdle()
    children: list[FakeChild] = []

    def factory(config: ChildConfig, deliver: Callable[[ChildMessage], None]) -> FakeChild:
        children.append(FakeChild(config, deliver))
        return children[-1]

    controller = AppController(
        prefs,
        idle_source=source,
        power_source=power or FakePower(),
        thermometer=thermometer,
        keep_awake=keep_awake,
        child_factory=factory,
        stats=StatsBook(tmp_path / "app-stats.json"),
        save_preferences=lambda p: save_preferences(p, prefs_path),
        autostart=autostart,
        paths=AppPaths(config_dir=tmp_path / "config"),  # the account box reads credentials here, not in ~
        clock=clock or manual,
        tuning=tuning or ControllerTuning(restart_delays_s=(2.0, 10.0), linger_s=600.0, unreachable_after_s=60.0),
    )
    return Rig(controller, manual, source, children, prefs_path)
