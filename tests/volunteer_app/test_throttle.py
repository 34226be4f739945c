"""Throttle: training keeps to a share of wall time (BOINC's "use at most X% of CPU time")."""

from __future__ import annotations

import pytest

from volunteer_app.worker import Throttle, WorkerConfig, WorkerError


class FakeTime:
    """A clock that moves only when slept on (or told to)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(("percent", "rest"), [(100, 0.0), (50, 2.0), (25, 6.0), (1, 198.0)])
def test_after_each_step_it_rests_in_proportion_to_the_step(percent: int, rest: float) -> None:
    t = FakeTime()
    throttle = Throttle(percent, clock=t.clock, sleep=t.sleep, slice_s=0.5)
    throttle.restart()
    t.now += 2.0  # a 2 s step
    throttle.rest(lambda: False)
    assert throttle.rested_s == pytest.approx(rest)
    assert all(s <= 0.5 for s in t.sleeps), "rests in slices, to notice a stop"
    t.now += 2.0  # the next step counts from the end of the rest
    throttle.rest(lambda: False)
    assert throttle.rested_s == pytest.approx(2 * rest)


def test_a_stop_ends_the_rest_within_a_slice() -> None:
    t = FakeTime()
    throttle = Throttle(10, clock=t.clock, sleep=t.sleep, slice_s=0.1)
    throttle.restart()
    t.now += 1.0
    stop_at = t.now + 0.35
    throttle.rest(lambda: t.now >= stop_at)
    assert 0.35 <= throttle.rested_s < 0.45  # of the 9 s rest


def test_time_away_from_training_does_not_count_as_a_step() -> None:
    t = FakeTime()
    throttle = Throttle(50, clock=t.clock, sleep=t.sleep)
    t.now += 600  # paused, or downloading the next unit
    throttle.restart()
    t.now += 1.0
    throttle.rest(lambda: False)
    assert throttle.rested_s == pytest.approx(1.0)


@pytest.mark.parametrize("percent", [0, 101, -5])
def test_a_percentage_outside_1_to_100_is_refused(percent: int) -> None:
    with pytest.raises(WorkerError, match="cpu_percent"):
        WorkerConfig(coordinator_url="ws://127.0.0.1:1/ws", cpu_percent=percent)
