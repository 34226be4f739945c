"""The tray app's brain, without Qt: watch for idleness, decide, steer the training child, tell the UI.

    controller = AppController(prefs, idle_source=detect_idle_source(), power_source=detect_power_source())
    controller.status_listeners.append(tray.show_status)
    every 0.25 s: controller.tick()      # observe → ComputePolicy.decide → pause/resume/start the child

One `tick` reads the idle time (every tick: input must suspend work within about a second) and, less
often, the power source and other programs' CPU load; the policy answers RUN or SUSPEND and the
controller makes the child match. The child starts on the first RUN, is paused (step boundary,
checkpoint, GPU freed) on SUSPEND, and is stopped after lingering suspended for a while, which gives
all its memory back. A child that dies unexpectedly is reported and restarted with a growing delay;
one whose worker refused to go on (banned, bad device, ...) waits for new settings or Resume.

Messages from the child arrive on its reader thread; they are queued and handled on the
controller's thread in `drain_inbox` (the Qt app calls it as soon as `wake` fires, and `tick` calls
it too). Every method is meant for that one thread.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from volunteer_app.autostart import Autostart
from volunteer_app.awake import KeepAwake
from volunteer_app.events import (
    Connected,
    Notice,
    StateChanged,
    TrainingProgress,
    UnitResult,
    UnitStarted,
    WorkerState,
)
from volunteer_app.fullscreen import FullscreenWatcher
from volunteer_app.idle.base import IdleSource, PowerSource
from volunteer_app.idle.cpu_load import OtherCpuLoad
from volunteer_app.policy import Clock, ComputePolicy, Decision, Observation, SystemClock
from volunteer_app.preferences import Preferences
from volunteer_app.programs import ProgramWatcher
from volunteer_app.thermal import Reading, Thermometer
from volunteer_app.tray.ipc import ChildConfig, ChildExited, ChildFinished, ChildMessage, ChildReady, DeviceChosen
from volunteer_app.tray.stats import StatsBook

__all__ = [
    "AppController",
    "AppNotification",
    "AppPaths",
    "AppState",
    "AppStatus",
    "ChildFactory",
    "ChildHandle",
    "ControllerTuning",
]

log = logging.getLogger(__name__)

_WORKING = frozenset({WorkerState.TRAINING, WorkerState.DOWNLOADING, WorkerState.SUBMITTING})
# Preferences the running worker was built with: changing one restarts the child.
_CHILD_FIELDS = ("coordinator_url", "device", "cpu_cores", "cpu_percent", "gpu_percent", "gpus", "gpu_memory_limit_mb")


class AppState(StrEnum):
    """What the tray icon shows; one icon each."""

    WAITING = "waiting"  # for idle, for the time window, for work, ...
    TRAINING = "training"
    PAUSED = "paused"  # by the user
    SNOOZED = "snoozed"
    ERROR = "error"
    OFFLINE = "offline"  # the coordinator can't be reached while work should run

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    AppState.WAITING: "Waiting",
    AppState.TRAINING: "Training",
    AppState.PAUSED: "Paused",
    AppState.SNOOZED: "Snoozed",
    AppState.ERROR: "Error",
    AppState.OFFLINE: "Offline",
}


@dataclass(frozen=True)
class AppStatus:
    state: AppState
    headline: str  # one line: what it is doing, or why not
    reason: str  # the policy's reason
    running: bool  # the policy says RUN
    worker_state: WorkerState | None
    device: str | None  # "cpu · Intel Xeon", once a child has chosen
    user_paused: bool
    manual_mode: bool  # no idle detection: work runs only after Resume
    snoozed_until: datetime | None
    temperature: str | None = None  # "71 °C (coretemp Package id 0)": the hottest sensor, where there is one

    @property
    def tooltip(self) -> str:
        lines = [f"Commonweights — {self.state.label}", self.headline]
        if self.device and self.state is AppState.TRAINING:
            lines.append(self.device)
        text = "\n".join(lines)
        return text if len(text) <= 250 else text[:249] + "…"

    @property
    def may_resume(self) -> bool:
        """The menu offers Resume rather than Pause."""
        return self.user_paused or (self.manual_mode and not self.running) or self.state is AppState.ERROR


@dataclass(frozen=True)
class AppNotification:
    kind: str  # campaign_finished, rejections, unreachable, crashed, worker_error, gpus_missing
    title: str
    message: str


@dataclass(frozen=True)
class AppPaths:
    """Where the child keeps credentials, blobs and units (None: the platformdirs defaults)."""

    config_dir: Path | None = None
    cache_dir: Path | None = None
    data_dir: Path | None = None
    python: Path | None = None  # the training environment's interpreter (None: this process's, with torch)


class ChildHandle(Protocol):
    """What the controller needs of a training process (`TrainingChild`, or a fake in tests)."""

    config: ChildConfig
    paused: bool

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...

    def join(self, timeout: float) -> bool: ...


ChildFactory = Callable[[ChildConfig, Callable[[ChildMessage], None]], ChildHandle]


def _training_child(config: ChildConfig, deliver: Callable[[ChildMessage], None]) -> ChildHandle:
    from volunteer_app.tray.child import TrainingChild

    return TrainingChild(config, deliver)


@dataclass(frozen=True)
class ControllerTuning:
    restart_delays_s: tuple[float, ...] = (2.0, 10.0, 30.0, 120.0, 300.0)
    """Waits before restarting a crashed child: the first crash, the second in a row, ..."""
    stable_after_s: float = 300.0
    """A child that ran this long before crashing starts the delays over."""
    linger_s: float = 600.0
    """A child suspended this long is stopped, giving its memory back; the next RUN starts another."""
    slow_poll_s: float = 2.0
    """Power source and CPU load are read this often (idle time: every tick)."""
    unreachable_after_s: float = 60.0
    """Offline this long while work should run: notify."""
    rejections_in_a_row: int = 3
    shutdown_timeout_s: float = 15.0
    slept_after_s: float = 5.0
    """The computer was suspended this long between ticks (`Clock.asleep`): a child on a GPU is then
    restarted; it finds its device anew (a CUDA context rarely survives sleep; the GPU may be gone) and
    resumes its unit from the checkpoint."""


Trace = Callable[[str, Mapping[str, object]], None]


@dataclass
class _Child:
    handle: ChildHandle
    generation: int
    started_at: float
    stopping: bool = False
    device: DeviceChosen | None = None
    worker_state: WorkerState | None = None
    worker_detail: str = ""


@dataclass
class _Link:
    offline_since: float | None = None
    detail: str = ""
    notified: bool = False
    dashboard_url: str | None = None


@dataclass
class _Crashes:
    count: int = 0
    restart_at: float | None = None
    message: str | None = None


@dataclass
class _Campaigns:
    names: set[str] = field(default_factory=set)  # campaigns this app trained for
    finished: set[str] = field(default_factory=set)  # already announced


class AppController:
    """See the module docstring."""

    def __init__(
        self,
        prefs: Preferences,
        *,
        idle_source: IdleSource,
        power_source: PowerSource,
        load_meter: OtherCpuLoad | None = None,
        thermometer: Thermometer | None = None,
        fullscreen: FullscreenWatcher | None = None,
        keep_awake: KeepAwake | None = None,
        child_factory: ChildFactory = _training_child,
        paths: AppPaths | None = None,
        stats: StatsBook | None = None,
        save_preferences: Callable[[Preferences], object] | None = None,
        autostart: Autostart | None = None,
        clock: Clock | None = None,
        tuning: ControllerTuning | None = None,
        wake: Callable[[], None] = lambda: None,
        trace: Trace | None = None,
        volunteer_name: str | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        self.policy = ComputePolicy(prefs, self.clock)
        self.idle_source = idle_source
        self.power_source = power_source
        self.load_meter = load_meter
        self.thermometer = thermometer
        self.fullscreen = fullscreen
        self.keep_awake = keep_awake
        self._asleep: float | None = None  # Clock.asleep() at the last tick
        self._fullscreen: bool | None = None
        self._heat: Reading | None = None
        self._exclusive: str | None = None
        self.paths = paths or AppPaths()
        self.stats = stats or StatsBook(None)
        self.tuning = tuning or ControllerTuning()
        self.status_listeners: list[Callable[[AppStatus], None]] = []
        self.notification_listeners: list[Callable[[AppNotification], None]] = []
        self.notifications: list[AppNotification] = []  # newest last, at most 50
        self._factory = child_factory
        self._save_preferences = save_preferences
        self._autostart = autostart
        self.wake = wake  # called on the child's reader thread after each message is queued
        self._trace = trace
        self._name = volunteer_name
        self._inbox: queue.SimpleQueue[tuple[int, ChildMessage]] = queue.SimpleQueue()
        self._child: _Child | None = None
        self._generation = 0
        self._crashes = _Crashes()
        self._fatal: str | None = None
        self._link = _Link()
        self._campaigns = _Campaigns()
        self._rejections = 0
        self._user_paused = False
        self._manual_run = False
        self._decision: Decision | None = None
        self._suspended_since: float | None = None
        self._next_slow = 0.0
        self._on_battery: bool | None = False
        self._load: float | None = None
        self._gpu_kind: str | None = None  # what the preferred device turned out to be
        self._status: AppStatus | None = None
        self._closed = False

    # --- what the UI reads -------------------------------------------------------------------

    @property
    def preferences(self) -> Preferences:
        return self.policy.preferences

    @property
    def status(self) -> AppStatus:
        if self._status is None:
            self._status = self._compute_status()
        return self._status

    @property
    def manual_mode(self) -> bool:
        return self.idle_source.name == "manual"

    @property
    def child_pid(self) -> int | None:
        return self._child.handle.pid if self._child is not None else None

    @property
    def device(self) -> DeviceChosen | None:
        return self._child.device if self._child is not None else None

    @property
    def dashboard_url(self) -> str:
        """The volunteer's page when the coordinator named one, else the coordinator's front page."""
        if self._link.dashboard_url:
            return self._link.dashboard_url
        parts = urlsplit(self.preferences.coordinator_url)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        return urlunsplit((scheme, parts.netloc, "/", "", ""))

    # --- user actions ------------------------------------------------------------------------

    def pause(self) -> None:
        self._user_paused, self._manual_run = True, False
        self._trace_event("user", {"action": "pause"})
        self.tick()

    def resume(self) -> None:
        """Undo Pause; in manual mode, start working; after an error, try again now."""
        self._user_paused = False
        if self.manual_mode:
            self._manual_run = True
        if self._fatal is not None or self._crashes.message is not None:
            self._fatal = None
            self._crashes = _Crashes()
        self._trace_event("user", {"action": "resume"})
        self.tick()

    def snooze(self, seconds: float = 3600.0) -> None:
        until = self.clock.now() + timedelta(seconds=seconds)
        self.apply_preferences(dataclasses.replace(self.preferences, snooze_until=until))

    def cancel_snooze(self) -> None:
        self.apply_preferences(dataclasses.replace(self.preferences, snooze_until=None))

    def apply_preferences(self, prefs: Preferences) -> None:
        """Take new preferences now: autostart first (its errors raise, changing nothing), then the
        file, the policy, and a restarted child when the worker's own settings changed."""
        old = self.preferences
        if self._autostart is not None and prefs.autostart != old.autostart:
            if prefs.autostart:
                self._autostart.enable()
            else:
                self._autostart.disable()
        if self._save_preferences is not None:
            self._save_preferences(prefs)
        self.policy.preferences = prefs
        if any(getattr(old, name) != getattr(prefs, name) for name in _CHILD_FIELDS):
            self._fatal = None
            self._crashes = _Crashes()
            self._gpu_kind = None
            self._stop_child("settings changed")
        self.tick()

    def shutdown(self) -> None:
        """Stop the child cleanly (bounded by `shutdown_timeout_s`), then forget it."""
        self._closed = True
        if self.keep_awake is not None:
            self.keep_awake.release()
        child = self._child
        if child is None:
            return
        child.handle.stop()
        if not child.handle.join(self.tuning.shutdown_timeout_s):
            child.handle.kill()
            child.handle.join(5.0)
        self.drain_inbox()
        self._child = None

    # --- the loop ----------------------------------------------------------------------------

    def tick(self) -> AppStatus:
        """One observation and decision; returns the status it published."""
        self.drain_inbox()
        mono = self.clock.monotonic()
        self._check_sleep()
        if mono >= self._next_slow:
            self._next_slow = mono + self.tuning.slow_poll_s
            self._on_battery = self.power_source.on_battery()
            if self.load_meter is not None:
                sample = self.load_meter.sample()
                self._load = sample if sample is not None else self._load
            if self.thermometer is not None:
                self._heat = self.thermometer.hottest()
            self._exclusive = ProgramWatcher(self.preferences.exclusive_programs).running_exclusive()
            if self.fullscreen is not None and self.preferences.suspend_while_fullscreen:
                self._fullscreen = self.fullscreen.fullscreen()
        observation = Observation(
            idle_seconds=self.idle_source.idle_seconds(),
            on_battery=self._on_battery,
            cpu_load_other=self._load,
            user_paused=self._user_paused,
            manual_run=self._manual_run,
            network_mb_today=self.stats.network_bytes_today() / 1e6,
            idle_guessed=self.idle_source.name == "cpu-load-guess",
            temperature_c=self._heat.celsius if self._heat is not None else None,
            temperature_sensor=self._heat.sensor if self._heat is not None else "",
            exclusive_running=self._exclusive,
            fullscreen=self._fullscreen,
        )
        decision = self.policy.decide(observation)
        self._decision = decision
        if decision.changed:
            self._trace_event("decision", {"state": decision.state.value, "reason": decision.reason})
        if not self._closed:
            self._steer(decision, mono)
            self._check_offline(mono)
        status = self._publish()
        self._hold_awake(status)
        return status

    def _check_sleep(self) -> None:
        asleep = self.clock.asleep()
        last, self._asleep = self._asleep, asleep
        if last is None or asleep is None or asleep - last < self.tuning.slept_after_s:
            return
        self._trace_event("resumed", {"slept_s": round(asleep - last, 1)})
        child = self._child
        if child is not None and child.device is not None and child.device.kind != "cpu":
            self._stop_child("the computer woke from sleep: finding the GPU anew")

    def _hold_awake(self, status: AppStatus) -> None:
        """Keep the computer awake while it trains on mains power, if the volunteer asked for it."""
        if self.keep_awake is None:
            return
        want = (
            self.preferences.keep_awake_on_ac
            and status.state is AppState.TRAINING
            and self._on_battery is not True
            and not self._closed
        )
        if want and not self.keep_awake.held:
            self.keep_awake.hold("training a Commonweights work unit")
        elif not want and self.keep_awake.held:
            self.keep_awake.release()

    def drain_inbox(self) -> None:
        """Handle what the child sent since the last call (the controller's thread only)."""
        handled = False
        while True:
            try:
                generation, message = self._inbox.get_nowait()
            except queue.Empty:
                break
            child = self._child
            if child is None or generation != child.generation:
                continue  # from a child already gone
            self._handle(child, message)
            handled = True
        if handled:
            self._publish()

    def _steer(self, decision: Decision, mono: float) -> None:
        run = decision.run and self._fatal is None
        child = self._child
        if child is None:
            if run and (self._crashes.restart_at is None or mono >= self._crashes.restart_at):
                self._start_child(self._device_for(decision), mono)
            return
        if child.stopping:
            return
        handle = child.handle
        if run:
            self._suspended_since = None
            wanted = self._device_for(decision)
            if wanted != handle.config.device and self._must_switch(child, wanted):
                self._stop_child(f"switching to {wanted}")
            elif handle.paused:
                handle.resume()
                self._trace_event("command", {"command": "resume"})
            return
        if not handle.paused:
            handle.pause()
            self._trace_event("command", {"command": "pause", "reason": decision.reason})
        if self._suspended_since is None:
            self._suspended_since = mono
        elif mono - self._suspended_since >= self.tuning.linger_s:
            self._stop_child("suspended for a while")

    def _device_for(self, decision: Decision) -> str:
        """The preferred device, or the CPU while the GPU must wait for idleness (when the
        preferred device is known to be a GPU)."""
        preferred = self.preferences.device
        if decision.use_gpu or preferred == "cpu" or self._gpu_kind in (None, "cpu"):
            return preferred
        return "cpu"

    def _must_switch(self, child: _Child, wanted: str) -> bool:
        if wanted == "cpu":
            return child.device is not None and child.device.kind != "cpu"
        return child.handle.config.device == "cpu"  # back from a CPU stand-in to the GPU

    def _start_child(self, device: str, mono: float) -> None:
        self._generation += 1
        generation = self._generation
        prefs = self.preferences
        config = ChildConfig(
            coordinator_url=prefs.coordinator_url,
            device=device,
            threads=prefs.cpu_cores,
            cpu_percent=prefs.cpu_percent,
            gpu_percent=prefs.gpu_percent,
            gpus=prefs.gpus,
            memory_limit=prefs.gpu_memory_limit_mb * (1 << 20) if prefs.gpu_memory_limit_mb else None,
            name=self._name,
            config_dir=str(self.paths.config_dir) if self.paths.config_dir else None,
            cache_dir=str(self.paths.cache_dir) if self.paths.cache_dir else None,
            data_dir=str(self.paths.data_dir) if self.paths.data_dir else None,
            start_paused=False,
            python=str(self.paths.python) if self.paths.python else None,
        )

        def deliver(message: ChildMessage) -> None:  # on the child's reader thread
            self._inbox.put((generation, message))
            self.wake()

        handle = self._factory(config, deliver)
        self._child = _Child(handle, generation, mono)
        self._suspended_since = None
        try:
            handle.start()
        except OSError as error:  # could not even spawn (or never connected): treat like a crash
            self._child = None
            self._crashed(f"the training process could not start: {error}", mono, started_at=mono)
            return
        self._trace_event("child", {"event": "started", "pid": handle.pid, "device": device})

    def _stop_child(self, why: str) -> None:
        child = self._child
        if child is None or child.stopping:
            return
        child.stopping = True
        child.handle.stop()
        self._trace_event("child", {"event": "stopping", "why": why})

    # --- messages from the child -------------------------------------------------------------

    def _handle(self, child: _Child, message: ChildMessage) -> None:
        mono = self.clock.monotonic()
        if isinstance(message, ChildExited):
            self._exited(child, message, mono)
            return
        if isinstance(message, ChildReady):
            self._crashes.message = None
            self._trace_event("child", {"event": "ready", "pid": message.pid})
            return
        if isinstance(message, DeviceChosen):
            child.device = message
            if child.handle.config.device == self.preferences.device:
                self._gpu_kind = message.kind
            chosen = child.handle.config.gpus
            if chosen and message.kind == "cpu" and child.handle.config.device == "auto":
                numbers = ", ".join(str(i) for i in chosen)
                self.notify(
                    "gpus_missing",
                    "Training on the CPU",
                    f"No GPU numbered {numbers} (Settings, GPUs to use) was found; training on the CPU instead.",
                )
            return
        if isinstance(message, ChildFinished):
            if message.error_code is not None:
                self._fatal = message.error_message or message.error_code
                self.notify("worker_error", "Commonweights stopped working", self._fatal)
            return
        self.stats.record(message)
        if isinstance(message, StateChanged):
            child.worker_state, child.worker_detail = message.state, message.detail
            self._trace_event("worker", {"state": message.state.value, "detail": message.detail})
            if message.state is WorkerState.BACKOFF:
                if self._link.offline_since is None:
                    self._link.offline_since = mono
                self._link.detail = message.detail
            elif message.state is WorkerState.IDLE:
                self._check_finished(message.detail)
        elif isinstance(message, Connected):
            self._link = _Link(dashboard_url=message.dashboard_url)
        elif isinstance(message, UnitStarted):
            self._campaigns.names.add(message.campaign_name)
        elif isinstance(message, TrainingProgress):
            self._trace_event("progress", {"step": message.step, "loss": message.loss})
        elif isinstance(message, UnitResult):
            self._trace_event("result", {"status": message.status, "credit": message.credit})
            self._count_result(message)
        elif isinstance(message, Notice):
            log.info("worker: %s", message.message)

    def _exited(self, child: _Child, exited: ChildExited, mono: float) -> None:
        self._child = None
        self._trace_event("child", {"event": "exited", "exitcode": exited.exitcode, "expected": exited.expected})
        if exited.expected or exited.finished:
            return
        code = exited.exitcode
        how = f"killed by {_signal_name(-code)}" if code is not None and code < 0 else f"exit code {code}"
        self._crashed(f"The training process stopped unexpectedly ({how}).", mono, started_at=child.started_at)

    def _crashed(self, what: str, mono: float, *, started_at: float) -> None:
        crashes = self._crashes
        if mono - started_at >= self.tuning.stable_after_s:
            crashes.count = 0
        delays = self.tuning.restart_delays_s
        delay = delays[min(crashes.count, len(delays) - 1)]
        crashes.count += 1
        crashes.restart_at = mono + delay
        crashes.message = f"{what} Restarting in {delay:.0f} s."
        self.notify("crashed", "Training process crashed", crashes.message)

    def _count_result(self, result: UnitResult) -> None:
        if result.status == "rejected":
            self._rejections += 1
            if self._rejections == self.tuning.rejections_in_a_row:
                self.notify(
                    "rejections",
                    "Updates rejected",
                    f"The coordinator rejected {self._rejections} updates in a row; the last: {result.message}",
                )
        elif result.status in ("accepted", "duplicate"):
            self._rejections = 0

    def _check_finished(self, detail: str) -> None:
        """The coordinator says so in its no-work reason ("campaign X is finished", "campaign X has
        finished its token budget"); announced once per campaign this app trained for."""
        if "finished" not in detail:
            return
        for name in self._campaigns.names - self._campaigns.finished:
            if f"campaign {name} " in detail:
                self._campaigns.finished.add(name)
                self.notify("campaign_finished", "Campaign finished", f"{name} has finished. Thank you for helping!")

    def _check_offline(self, mono: float) -> None:
        link = self._link
        if link.offline_since is None or link.notified or not self.status.running:
            return
        if mono - link.offline_since >= self.tuning.unreachable_after_s:
            link.notified = True
            self.notify(
                "unreachable",
                "Coordinator unreachable",
                f"Can't reach {self.preferences.coordinator_url} for {mono - link.offline_since:.0f} s: "
                f"{link.detail}. Training goes on and results are sent when it is back.",
            )

    # --- publishing --------------------------------------------------------------------------

    def notify(self, kind: str, title: str, message: str) -> None:
        """Tell the listeners (and keep the last 50 for the statistics window)."""
        notification = AppNotification(kind, title, message)
        self.notifications = [*self.notifications[-49:], notification]
        self._trace_event("notification", {"kind": kind, "message": message})
        for listener in list(self.notification_listeners):
            listener(notification)

    def _publish(self) -> AppStatus:
        status = self._compute_status()
        if status != self._status:
            previous, self._status = self._status, status
            if previous is None or previous.state is not status.state:
                self._trace_event("status", {"state": status.state.value, "headline": status.headline})
            for listener in list(self.status_listeners):
                listener(status)
        return status

    def _compute_status(self) -> AppStatus:
        decision = self._decision
        prefs = self.preferences
        now = self.clock.now()
        snoozed = prefs.snooze_until if prefs.snooze_until is not None and prefs.snooze_until > now else None
        running = decision is not None and decision.run and self._fatal is None
        child = self._child
        worker_state = child.worker_state if child is not None else None
        reason = decision.reason if decision is not None else "starting"
        device = None
        if child is not None and child.device is not None:
            device = f"{child.device.kind} · {child.device.name}"
        state, headline = self._describe(decision, snoozed, running, child)
        return AppStatus(
            state=state,
            headline=headline,
            reason=reason,
            running=running,
            worker_state=worker_state,
            device=device,
            temperature=f"{self._heat.celsius:.0f} °C ({self._heat.sensor})" if self._heat is not None else None,
            user_paused=self._user_paused,
            manual_mode=self.manual_mode,
            snoozed_until=snoozed,
        )

    def _describe(
        self, decision: Decision | None, snoozed: datetime | None, running: bool, child: _Child | None
    ) -> tuple[AppState, str]:
        if self._fatal is not None:
            return AppState.ERROR, self._fatal
        if self._crashes.message is not None and child is None:
            return AppState.ERROR, self._crashes.message
        if self._user_paused:
            return AppState.PAUSED, "Paused — choose Resume to work again"
        if snoozed is not None:
            return AppState.SNOOZED, f"Snoozed until {snoozed.astimezone(self.clock.now().tzinfo):%H:%M}"
        if decision is None:
            return AppState.WAITING, "Starting"
        if not running:
            return AppState.WAITING, _sentence(decision.reason)
        if self._link.offline_since is not None and (child is None or child.worker_state is not WorkerState.TRAINING):
            return AppState.OFFLINE, f"Coordinator unreachable: {self._link.detail}"
        state = child.worker_state if child is not None else None
        if state is WorkerState.IDLE:
            return AppState.WAITING, f"Waiting for work: {child.worker_detail}" if child else "Waiting for work"
        if state in _WORKING:
            return AppState.TRAINING, self._working_line(state)
        return AppState.TRAINING, "Starting to work"

    def _working_line(self, state: WorkerState) -> str:
        unit, progress = self.stats.unit, self.stats.progress
        campaign = unit.campaign_name if unit is not None else "a work unit"
        if state is WorkerState.DOWNLOADING:
            return f"Downloading {campaign}"
        if state is WorkerState.SUBMITTING:
            return f"Sending the update for {campaign}"
        if progress is not None and unit is not None and progress.unit_id == unit.unit_id:
            return f"Training {campaign}: step {progress.step}/{progress.steps_total}, loss {progress.loss:.3f}"
        return f"Training {campaign}"

    def _trace_event(self, kind: str, fields: Mapping[str, object]) -> None:
        if self._trace is not None:
            self._trace(kind, fields)


def _sentence(reason: str) -> str:
    text = reason[:1].upper() + reason[1:]
    if reason.startswith(("user active", "waiting: idle")):
        return f"Waiting for idle — {reason.removeprefix('waiting: ')}"
    return text


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
