from __future__ import annotations

import random

import pytest

from protocol.limits import RECONNECT_BASE_DELAY_S, RECONNECT_MAX_DELAY_S
from volunteer_app.worker import WorkerConfig, WorkerError, reconnect_delay, websocket_url


def test_reconnect_delays_are_full_jitter_within_the_doubling_ceiling() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        ceiling = min(RECONNECT_MAX_DELAY_S, RECONNECT_BASE_DELAY_S * 2**attempt)
        delays = [reconnect_delay(attempt, rng=rng) for _ in range(400)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter spreads over the whole range, not just near the ceiling.
        assert min(delays) < 0.1 * ceiling and max(delays) > 0.9 * ceiling


def test_reconnect_delays_are_capped_however_many_failures() -> None:
    rng = random.Random(2)
    assert max(reconnect_delay(attempt, rng=rng) for attempt in (9, 50, 10_000) for _ in range(200)) <= 300.0
    assert RECONNECT_MAX_DELAY_S == 300.0 and RECONNECT_BASE_DELAY_S == 1.0


def test_the_first_retry_waits_at_most_the_base_delay() -> None:
    rng = random.Random(3)
    assert all(reconnect_delay(0, rng=rng) <= 1.0 for _ in range(100))


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("ws://127.0.0.1:8470/ws", "ws://127.0.0.1:8470/ws"),
        ("http://127.0.0.1:8470", "ws://127.0.0.1:8470/ws"),
        ("https://cw.example.org/", "wss://cw.example.org/ws"),
        ("wss://cw.example.org/volunteers", "wss://cw.example.org/volunteers"),
    ],
)
def test_the_coordinator_url_may_be_typed_as_the_web_address(typed: str, url: str) -> None:
    assert websocket_url(typed) == url


@pytest.mark.parametrize("bad", ["ftp://x/ws", "127.0.0.1:8470", "ws://", ""])
def test_an_unusable_coordinator_url_is_a_clear_error(bad: str) -> None:
    with pytest.raises(WorkerError, match="not a coordinator URL"):
        WorkerConfig(bad)


def test_bad_limits_are_refused_with_the_field_named() -> None:
    with pytest.raises(WorkerError, match="threads"):
        WorkerConfig("ws://127.0.0.1/ws", threads=0)
    with pytest.raises(WorkerError, match="max_units"):
        WorkerConfig("ws://127.0.0.1/ws", max_units=0)
