"""ComputePolicy as a specification: which observation leads to RUN or SUSPEND, and what it says."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volunteer_app.policy import (
    ComputePolicy,
    Decision,
    ManualClock,
    Observation,
    PolicyTuning,
    RunState,
    format_duration,
)
from volunteer_app.preferences import Preferences, TimeWindow

RUN, SUSPEND = RunState.RUN, RunState.SUSPEND
NOON = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)  # a Monday
IDLE = 600.0  # well past any idle period used here


def make(
    prefs: Preferences | None = None, at: datetime = NOON, tuning: PolicyTuning | None = None
) -> tuple[ComputePolicy, ManualClock]:
    clock = ManualClock(at)
    return ComputePolicy(prefs or Preferences(), clock, tuning), clock


class Poller:
    """Drives a policy like the tray does: one observation a second, the idle counter advancing
    with the clock unless input resets it."""

    def __init__(self, policy: ComputePolicy, clock: ManualClock, idle: float = 0.0) -> None:
        self.policy, self.clock, self.idle = policy, clock, idle

    def poll(self, seconds: float = 1.0, input_at_end: bool = False, **obs: object) -> Decision:
        self.clock.advance(seconds)
        self.idle = 0.2 if input_at_end else self.idle + seconds
        return self.policy.decide(Observation(idle_seconds=self.idle, **obs))  # type: ignore[arg-type]


# --- waiting for idle, and hysteresis on input ------------------------------------------------


def test_waits_for_the_full_idle_period_then_runs() -> None:
    policy, clock = make(Preferences(idle_minutes=3))
    poller = Poller(policy, clock)
    decision = poller.poll(72)
    assert (decision.state, decision.reason) == (SUSPEND, "waiting: idle 1m12s of 3m")
    decision = poller.poll(107)
    assert (decision.state, decision.reason) == (SUSPEND, "waiting: idle 2m59s of 3m")
    decision = poller.poll(1)
    assert decision.state is RUN
    assert decision.reason == "idle 3m"
    assert decision.use_gpu


def test_input_suspends_at_the_next_poll_and_resuming_needs_the_full_period_again() -> None:
    policy, clock = make(Preferences(idle_minutes=3))
    poller = Poller(policy, clock, idle=IDLE)
    assert poller.poll().state is RUN
    decision = poller.poll(1, input_at_end=True)
    assert (decision.state, decision.reason, decision.changed) == (SUSPEND, "user active", True)
    for _ in range(179):  # idle 1.2 s .. 179.2 s
        assert poller.poll().state is SUSPEND
    assert poller.poll().state is RUN  # 180.2 s since the input


def test_brief_input_while_waiting_restarts_the_countdown() -> None:
    policy, clock = make(Preferences(idle_minutes=1))
    poller = Poller(policy, clock)
    poller.poll(50)
    poller.poll(1, input_at_end=True)
    assert poller.poll(50).reason == "waiting: idle 50s of 1m"
    assert poller.poll(10).state is RUN


def test_user_active_reads_as_such_for_the_first_seconds() -> None:
    policy, _ = make(Preferences(idle_minutes=3))
    assert policy.decide(Observation(idle_seconds=0.4)).reason == "user active"
    assert policy.decide(Observation(idle_seconds=9.9)).reason == "user active"
    assert policy.decide(Observation(idle_seconds=10)).reason == "waiting: idle 10s of 3m"


def test_zero_idle_minutes_runs_at_once() -> None:
    policy, _ = make(Preferences(idle_minutes=0))
    assert policy.decide(Observation(idle_seconds=0.0)).state is RUN


def test_without_suspend_on_input_runs_in_use_but_keeps_the_gpu_for_idle() -> None:
    policy, _ = make(Preferences(suspend_on_input=False, gpu_only_when_idle=True))
    busy = policy.decide(Observation(idle_seconds=1.0))
    assert busy.state is RUN and not busy.use_gpu
    assert busy.reason == "running while in use (input does not suspend); GPU waits until idle"
    away = policy.decide(Observation(idle_seconds=IDLE))
    assert away.state is RUN and away.use_gpu


def test_gpu_allowed_in_use_when_the_preference_says_so() -> None:
    policy, _ = make(Preferences(suspend_on_input=False, gpu_only_when_idle=False))
    assert policy.decide(Observation(idle_seconds=1.0)).use_gpu


def test_changed_flags_transitions_only() -> None:
    policy, _ = make()
    assert policy.state is None
    assert policy.decide(Observation(idle_seconds=1)).changed
    assert not policy.decide(Observation(idle_seconds=2)).changed
    assert policy.decide(Observation(idle_seconds=IDLE)).changed
    assert policy.state is RUN


# --- battery, pause, snooze, time windows, network --------------------------------------------


def test_on_battery_suspends_unless_allowed() -> None:
    policy, _ = make()
    decision = policy.decide(Observation(idle_seconds=IDLE, on_battery=True))
    assert (decision.state, decision.reason) == (SUSPEND, "on battery")
    policy.preferences = Preferences(run_on_battery=True)
    assert policy.decide(Observation(idle_seconds=IDLE, on_battery=True)).state is RUN


def test_unknown_power_state_counts_as_mains() -> None:
    policy, _ = make()
    assert policy.decide(Observation(idle_seconds=IDLE, on_battery=None)).state is RUN


def test_pause_by_user_wins_over_everything() -> None:
    policy, _ = make(Preferences(time_windows=(TimeWindow.parse("01:00", "02:00"),)))
    decision = policy.decide(
        Observation(idle_seconds=IDLE, user_paused=True, on_battery=True, snoozed_until=NOON + timedelta(hours=1))
    )
    assert (decision.state, decision.reason) == (SUSPEND, "paused by user")


def test_snooze_until_a_time_today() -> None:
    policy, clock = make()
    until = NOON + timedelta(hours=2, minutes=5)
    decision = policy.decide(Observation(idle_seconds=IDLE, snoozed_until=until))
    assert (decision.state, decision.reason) == (SUSPEND, "snoozed until 14:05")
    clock.advance(2 * 3600 + 5 * 60)
    assert policy.decide(Observation(idle_seconds=IDLE, snoozed_until=until)).state is RUN


def test_snooze_into_another_day_names_the_day() -> None:
    policy, _ = make()
    decision = policy.decide(Observation(idle_seconds=IDLE, snoozed_until=NOON + timedelta(days=1)))
    assert decision.reason == "snoozed until Tue 12:00"


def test_snooze_from_preferences_is_honoured_in_local_time() -> None:
    cet = timezone(timedelta(hours=1))
    policy, _ = make(Preferences(snooze_until=datetime(2025, 1, 6, 12, 30, tzinfo=UTC)), at=NOON.astimezone(cet))
    assert policy.decide(Observation(idle_seconds=IDLE)).reason == "snoozed until 13:30"


@pytest.mark.parametrize(
    ("hhmm", "runs"),
    [("22:00", True), ("23:59", True), ("00:00", True), ("06:59", True), ("07:00", False), ("12:00", False),
     ("21:59", False)],
)  # fmt: skip
def test_time_window_across_midnight(hhmm: str, runs: bool) -> None:
    hour, minute = map(int, hhmm.split(":"))
    at = NOON.replace(hour=hour, minute=minute)
    policy, _ = make(Preferences(time_windows=(TimeWindow.parse("22:00", "07:00"),)), at=at)
    decision = policy.decide(Observation(idle_seconds=IDLE))
    assert decision.run is runs
    if not runs:
        assert decision.reason == "outside time window (runs 22:00–07:00)"


def test_time_window_follows_the_clock_through_the_night() -> None:
    policy, clock = make(Preferences(time_windows=(TimeWindow.parse("22:00", "07:00"),)), at=NOON.replace(hour=21))
    states = []
    for _ in range(12):
        states.append(policy.decide(Observation(idle_seconds=IDLE)).state)
        clock.advance(3600)
    # 21:00 out, 22:00..06:00 in, 07:00.. out
    assert states == [SUSPEND] + [RUN] * 9 + [SUSPEND] * 2


def test_several_windows_any_one_allows() -> None:
    windows = (TimeWindow.parse("08:00", "09:00"), TimeWindow.parse("12:00", "13:00"))
    policy, _ = make(Preferences(time_windows=windows))
    assert policy.decide(Observation(idle_seconds=IDLE)).state is RUN
    policy, _ = make(Preferences(time_windows=windows), at=NOON.replace(hour=10))
    assert policy.decide(Observation(idle_seconds=IDLE)).reason == "outside time window (runs 08:00–09:00, 12:00–13:00)"


def test_network_cap_suspends_when_used_up() -> None:
    policy, _ = make(Preferences(network_mb_per_day=500))
    assert policy.decide(Observation(idle_seconds=IDLE, network_mb_today=499.9)).state is RUN
    decision = policy.decide(Observation(idle_seconds=IDLE, network_mb_today=500))
    assert (decision.state, decision.reason) == (SUSPEND, "daily network cap reached (500 MB)")


# --- manual mode and guessed idleness ---------------------------------------------------------


def test_no_idle_detection_is_manual_mode_and_says_so() -> None:
    policy, _ = make()
    decision = policy.decide(Observation(idle_seconds=None))
    assert (decision.state, decision.reason) == (SUSPEND, "idle detection unavailable — manual mode")


def test_manual_mode_runs_only_after_resume_and_keeps_the_gpu_out() -> None:
    policy, _ = make()
    decision = policy.decide(Observation(idle_seconds=None, manual_run=True))
    assert decision.state is RUN
    assert decision.reason.startswith("running — manual mode (idle detection unavailable)")
    assert not decision.use_gpu
    assert policy.decide(Observation(idle_seconds=None, manual_run=True, on_battery=True)).state is SUSPEND


def test_manual_run_does_not_override_real_idle_detection() -> None:
    policy, _ = make()
    assert policy.decide(Observation(idle_seconds=1.0, manual_run=True)).state is SUSPEND


def test_guessed_idleness_is_labelled() -> None:
    policy, _ = make()
    assert policy.decide(Observation(idle_seconds=30, idle_guessed=True)).reason == (
        "waiting: idle 30s of 3m (guessed from CPU load)"
    )
    assert policy.decide(Observation(idle_seconds=IDLE, idle_guessed=True)).reason == "idle 10m (guessed from CPU load)"


# --- other programs' CPU load: thresholds and dwell -------------------------------------------

LOAD_PREFS = Preferences(suspend_other_cpu_percent=50)  # high 0.50, low 0.30 with the default tuning


def run_load_trace(loads: list[float], prefs: Preferences = LOAD_PREFS, **tuning: float) -> list[Decision]:
    policy, clock = make(prefs, tuning=PolicyTuning(**tuning))
    decisions = []
    for load in loads:
        clock.advance(1)
        decisions.append(policy.decide(Observation(idle_seconds=IDLE, cpu_load_other=load)))
    return decisions


def test_sustained_load_suspends_after_the_dwell_time() -> None:
    decisions = run_load_trace([0.9] * 15, load_dwell_high_s=10)
    states = [d.state for d in decisions]
    assert states[:10] == [RUN] * 10
    assert states[10:] == [SUSPEND] * 5
    assert decisions[-1].reason == "other programs are busy (CPU 90%)"


def test_resume_needs_load_below_the_low_threshold_for_the_dwell_time() -> None:
    loads = [0.9] * 11 + [0.4] * 60 + [0.2] * 31  # 0.4 is under high but over low: stays suspended
    states = [d.state for d in run_load_trace(loads, load_dwell_high_s=10, load_dwell_low_s=30)]
    assert states[10] is SUSPEND
    assert set(states[11:71]) == {SUSPEND}
    assert states[71:101] == [SUSPEND] * 30
    assert states[101] is RUN


def test_spikes_shorter_than_the_dwell_never_suspend() -> None:
    loads = ([1.0] * 3 + [0.05] * 2) * 40  # 3-second bursts, e.g. a browser tab loading
    assert {d.state for d in run_load_trace(loads)} == {RUN}


def test_noisy_load_around_the_threshold_does_not_flap() -> None:
    rng = random.Random(20250106)
    loads = [min(1.0, max(0.0, rng.gauss(0.5, 0.2))) for _ in range(3600)]
    decisions = run_load_trace(loads)
    changes = sum(1 for a, b in itertools.pairwise(decisions) if a.state is not b.state)
    assert changes <= 10  # an hour of noise: a handful of deliberate switches, not hundreds


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=400))
def test_load_driven_switches_are_always_at_least_a_dwell_apart(loads: list[float]) -> None:
    decisions = run_load_trace(loads, load_dwell_high_s=5, load_dwell_low_s=20)
    switch_times = [i for i in range(1, len(decisions)) if decisions[i].state is not decisions[i - 1].state]
    assert all(b - a >= 5 for a, b in itertools.pairwise(switch_times))
    assert switch_times[:1] != [0]


def test_load_check_off_when_preference_is_zero() -> None:
    prefs = dataclasses.replace(LOAD_PREFS, suspend_other_cpu_percent=0)
    assert {d.state for d in run_load_trace([1.0] * 60, prefs)} == {RUN}


def test_unknown_load_keeps_the_current_load_state() -> None:
    decisions = run_load_trace([0.9] * 11 + [None] * 5)  # type: ignore[list-item]
    assert [d.state for d in decisions[-5:]] == [SUSPEND] * 5
    assert decisions[-1].reason == "other programs are busy"


def test_input_still_suspends_immediately_while_load_is_quiet() -> None:
    policy, clock = make(LOAD_PREFS)
    assert policy.decide(Observation(idle_seconds=IDLE, cpu_load_other=0.0)).state is RUN
    clock.advance(1)
    assert policy.decide(Observation(idle_seconds=0.5, cpu_load_other=0.0)).state is SUSPEND


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (45.9, "45s"), (60, "1m"), (72, "1m12s"), (180, "3m"), (3900, "1h05m"), (-3, "0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_manual_clock_needs_a_timezone() -> None:
    with pytest.raises(ValueError, match="timezone"):
        ManualClock(datetime(2025, 1, 1))


def test_module_docstring_example_runs() -> None:
    import doctest

    from volunteer_app import policy

    assert doctest.testmod(policy).failed == 0
