"""Whether the volunteer's computer should be working right now, and why not.

`ComputePolicy` is a small state machine fed one `Observation` per poll (about once a second) and
answering with a `Decision`: RUN or SUSPEND, a reason a volunteer can read in the tray tooltip, and
whether the GPU may be used. It does no I/O; time comes from a `Clock`, so tests drive it with
`ManualClock`.

    >>> from datetime import UTC
    >>> clock = ManualClock(datetime(2025, 1, 6, 12, 0, tzinfo=UTC))
    >>> policy = ComputePolicy(Preferences(idle_minutes=3), clock)
    >>> policy.decide(Observation(idle_seconds=72)).reason
    'waiting: idle 1m12s of 3m'
    >>> policy.decide(Observation(idle_seconds=185)).state
    <RunState.RUN: 'run'>
    >>> policy.decide(Observation(idle_seconds=0.4)).reason
    'user active'

Rules, first match wins: paused by the user; snoozed; outside the daily time windows; on battery;
an exclusive program running (`Preferences.exclusive_programs`); a window full screen
(`Preferences.suspend_while_fullscreen`); too hot
(`Preferences.pause_above_celsius`, with `PolicyTuning.heat_hysteresis_c`); daily network cap
used up; idle detection unavailable (manual mode: runs only after the user chose
Resume); user active or not yet idle long enough; other programs busy; otherwise RUN.

Hysteresis: input suspends at the first poll that sees it, and since the idle counter restarts at
input, resuming needs the full idle period again. Other programs' CPU load suspends only after it
has stayed above the high threshold for `PolicyTuning.load_dwell_high_s`, and resumes only after it
has stayed below a lower threshold for `load_dwell_low_s`, so a noisy load does not flap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from volunteer_app.preferences import Preferences

__all__ = [
    "Clock",
    "ComputePolicy",
    "Decision",
    "ManualClock",
    "Observation",
    "PolicyTuning",
    "RunState",
    "SystemClock",
    "format_duration",
]


class Clock(Protocol):
    """Wall time for time windows and snoozes; monotonic time for dwell periods."""

    def now(self) -> datetime:
        """The current local time, timezone-aware."""
        ...

    def monotonic(self) -> float: ...

    def asleep(self) -> float | None:
        """Seconds the computer has spent suspended since it booted, where the OS says (None elsewhere)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now().astimezone()

    def monotonic(self) -> float:
        return time.monotonic()

    def asleep(self) -> float | None:
        """Linux: BOOTTIME counts suspend and MONOTONIC doesn't; macOS: MONOTONIC counts it and UPTIME_RAW
        doesn't. Neither moves when the wall clock is set (by the user, by NTP). Windows: not told here."""
        if hasattr(time, "CLOCK_BOOTTIME"):
            return time.clock_gettime(time.CLOCK_BOOTTIME) - time.clock_gettime(time.CLOCK_MONOTONIC)
        if hasattr(time, "CLOCK_UPTIME_RAW"):
            return time.clock_gettime(time.CLOCK_MONOTONIC) - time.clock_gettime(time.CLOCK_UPTIME_RAW)
        return None


class ManualClock:
    """A clock that moves only when told to (tests, demos): `advance(seconds)` moves both times."""

    def __init__(self, wall: datetime, monotonic: float = 1000.0) -> None:
        if wall.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware wall time")
        self._wall = wall
        self._mono = monotonic
        self._asleep = 0.0

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += timedelta(seconds=seconds)
        self._mono += seconds

    def asleep(self) -> float | None:
        return self._asleep

    def sleep_through(self, seconds: float) -> None:
        """The computer sleeps: wall time moves on, monotonic time (stopped in suspend) doesn't."""
        self._wall += timedelta(seconds=seconds)
        self._asleep += seconds


class RunState(StrEnum):
    RUN = "run"
    SUSPEND = "suspend"


@dataclass(frozen=True)
class Observation:
    """What the tray app saw at one poll."""

    idle_seconds: float | None
    """Seconds since the last input; None when idle detection is unavailable (manual mode)."""
    on_battery: bool | None = False
    """None (the OS cannot tell) counts as mains power."""
    cpu_load_other: float | None = None
    """Share of the whole CPU, 0–1, that other programs used since the last poll; None: unknown."""
    user_paused: bool = False
    snoozed_until: datetime | None = None
    """Also honoured: `Preferences.snooze_until`; the later of the two applies."""
    manual_run: bool = False
    """Manual mode only: the user chose Resume, so work may run without idle detection."""
    network_mb_today: float | None = None
    idle_guessed: bool = False
    """The idle time is a guess (CPU-load fallback); reasons say so."""
    temperature_c: float | None = None
    """The hottest CPU/GPU sensor's reading; None: no reading this time (the heat rule keeps its state;
    on a machine without sensors it never suspends)."""
    temperature_sensor: str = ""
    exclusive_running: str | None = None
    """A program on the volunteer's exclusive list that is running (its name), if any."""
    fullscreen: bool | None = None
    """A window is full screen; None: the session can't tell."""


@dataclass(frozen=True)
class Decision:
    state: RunState
    reason: str
    use_gpu: bool
    changed: bool
    """The state differs from the previous decision's (the first decision counts as a change)."""

    @property
    def run(self) -> bool:
        return self.state is RunState.RUN


@dataclass(frozen=True)
class PolicyTuning:
    """Constants of the hysteresis; the defaults suit a one-second poll."""

    load_dwell_high_s: float = 10.0
    """Other programs' load must stay above the high threshold this long before work suspends."""
    load_dwell_low_s: float = 30.0
    """...and below the low threshold this long before it resumes."""
    load_low_fraction: float = 0.6
    """The low threshold as a fraction of the high one (the preference)."""
    user_active_window_s: float = 10.0
    """Idle times shorter than this read "user active" rather than a countdown."""
    heat_hysteresis_c: float = 10.0
    """Suspended for heat, work resumes once the sensor reads this much below the limit."""


def format_duration(seconds: float) -> str:
    """Short human durations: "45s", "1m12s", "3m", "1h05m"."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def _format_moment(moment: datetime, now: datetime) -> str:
    local = moment.astimezone(now.tzinfo)
    if local.date() == now.date():
        return f"{local:%H:%M}"
    return f"{local:%a %H:%M}"


class ComputePolicy:
    """RUN or SUSPEND, from preferences and one observation per poll. Not thread-safe: one poller."""

    def __init__(self, prefs: Preferences, clock: Clock, tuning: PolicyTuning | None = None) -> None:
        self._prefs = prefs
        self._clock = clock
        self._tuning = tuning if tuning is not None else PolicyTuning()
        self._state: RunState | None = None
        self._load_busy = False
        self._load_crossed_at: float | None = None  # when load last crossed toward the other state
        self._hot = False

    @property
    def preferences(self) -> Preferences:
        return self._prefs

    @preferences.setter
    def preferences(self, prefs: Preferences) -> None:
        self._prefs = prefs

    @property
    def state(self) -> RunState | None:
        """The last decision's state; None before the first."""
        return self._state

    def decide(self, obs: Observation) -> Decision:
        now = self._clock.now()
        self._track_load(obs.cpu_load_other)
        self._track_heat(obs.temperature_c)
        state, reason, gpu = self._evaluate(obs, now)
        changed = state is not self._state
        self._state = state
        return Decision(state=state, reason=reason, use_gpu=gpu, changed=changed)

    def _track_load(self, load: float | None) -> None:
        """Advance the busy/quiet state of other programs' CPU load (thresholds plus dwell)."""
        high = self._prefs.suspend_other_cpu_percent / 100.0
        if load is None or high <= 0:
            self._load_crossed_at = None
            if high <= 0:
                self._load_busy = False
            return
        mono = self._clock.monotonic()
        if self._load_busy:
            crossing, dwell = load < high * self._tuning.load_low_fraction, self._tuning.load_dwell_low_s
        else:
            crossing, dwell = load > high, self._tuning.load_dwell_high_s
        if not crossing:
            self._load_crossed_at = None
            return
        if self._load_crossed_at is None:
            self._load_crossed_at = mono
        if mono - self._load_crossed_at >= dwell:
            self._load_busy = not self._load_busy
            self._load_crossed_at = None

    def _track_heat(self, celsius: float | None) -> None:
        """Hot at or above the limit; cool again only below it by the hysteresis (a fan's lag must not flap)."""
        limit = self._prefs.pause_above_celsius
        if limit <= 0:
            self._hot = False
        elif celsius is None:
            return  # one failed read (a GPU driver after sleep) says nothing: hot stays hot
        elif celsius >= limit:
            self._hot = True
        elif celsius < limit - self._tuning.heat_hysteresis_c:
            self._hot = False

    def _snooze_end(self, obs: Observation, now: datetime) -> datetime | None:
        ends = [t for t in (obs.snoozed_until, self._prefs.snooze_until) if t is not None and t > now]
        return max(ends) if ends else None

    def _evaluate(self, obs: Observation, now: datetime) -> tuple[RunState, str, bool]:
        prefs = self._prefs
        suspend = RunState.SUSPEND
        if obs.user_paused:
            return suspend, "paused by user", False
        snooze_end = self._snooze_end(obs, now)
        if snooze_end is not None:
            return suspend, f"snoozed until {_format_moment(snooze_end, now)}", False
        if prefs.time_windows and not any(w.contains(now.time()) for w in prefs.time_windows):
            windows = ", ".join(str(w) for w in prefs.time_windows)
            return suspend, f"outside time window (runs {windows})", False
        if obs.on_battery and not prefs.run_on_battery:
            return suspend, "on battery", False
        if obs.exclusive_running is not None:
            return suspend, f"{obs.exclusive_running} is running (an exclusive program)", False
        if obs.fullscreen and prefs.suspend_while_fullscreen:
            return suspend, "a window is full screen", False
        if self._hot:
            limit = prefs.pause_above_celsius
            where = f"{obs.temperature_sensor} " if obs.temperature_sensor else ""
            reading = f"{where}{obs.temperature_c:.0f} °C" if obs.temperature_c is not None else "no reading"
            return (
                suspend,
                f"too hot ({reading}; pauses at {limit:.0f} °C, resumes below "
                f"{limit - self._tuning.heat_hysteresis_c:.0f} °C)",
                False,
            )
        cap = prefs.network_mb_per_day
        if cap is not None and obs.network_mb_today is not None and obs.network_mb_today >= cap:
            return suspend, f"daily network cap reached ({cap} MB)", False

        guessed = " (guessed from CPU load)" if obs.idle_guessed else ""
        required = prefs.idle_seconds_required
        idle = obs.idle_seconds
        if idle is None:
            if not obs.manual_run:
                return suspend, "idle detection unavailable — manual mode", False
            user_away = False
            run_reason = "running — manual mode (idle detection unavailable)"
        else:
            user_away = idle >= required
            if user_away:
                run_reason = f"idle {format_duration(idle)}{guessed}"
            elif prefs.suspend_on_input:
                if idle < min(self._tuning.user_active_window_s, required):
                    return suspend, f"user active{guessed}", False
                return (
                    suspend,
                    f"waiting: idle {format_duration(idle)} of {format_duration(required)}{guessed}",
                    False,
                )
            else:
                run_reason = "running while in use (input does not suspend)"
        if self._load_busy:
            load = obs.cpu_load_other
            shown = f" (CPU {load:.0%})" if load is not None else ""
            return suspend, f"other programs are busy{shown}", False
        use_gpu = user_away or not prefs.gpu_only_when_idle
        if not use_gpu:
            run_reason += "; GPU waits until idle"
        return RunState.RUN, run_reason, use_gpu
