"""How long an idle source takes to notice input: the measurement behind the input-latency benchmark.

move = lambda: subprocess.run(["xdotool", "mousemove", "5", "5"], check=True)
measure_reset_latency(source, inject=move)   # 0.0055: seconds from just before the input
                                             # to the first reading that shows the reset
"""

from __future__ import annotations

import time
from collections.abc import Callable

from volunteer_app.idle.base import IdleSource


def measure_reset_latency(
    source: IdleSource,
    inject: Callable[[], object],
    *,
    timeout: float = 5.0,
    min_baseline: float = 0.2,
    poll_interval: float = 0.002,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[], object] | None = None,
) -> float:
    """Wait until `source` has counted at least `min_baseline` seconds of idleness, call `inject()`,
    and poll until the idle counter falls back; return the seconds from just before `inject()` to
    that reading.

    A reset is a reading more than `min_baseline / 2` below where the counter would be had no input
    come, so a source with millisecond jitter is not mistaken for a reset and a slow one is still
    seen. Raises `TimeoutError` if the baseline or the reset is not seen within `timeout` seconds in all.
    """
    pause = sleep if sleep is not None else (lambda: time.sleep(poll_interval))
    deadline = clock() + timeout
    while True:
        baseline = source.idle_seconds()
        baseline_at = clock()
        if baseline is not None and baseline >= min_baseline:
            break
        if baseline_at >= deadline:
            raise TimeoutError(f"{source.name}: idle time never reached {min_baseline}s (last: {baseline})")
        pause()
    margin = min_baseline / 2
    started = clock()
    inject()
    while True:
        idle = source.idle_seconds()
        now = clock()
        if idle is not None and idle + margin < baseline + (now - baseline_at):
            return now - started
        if now >= deadline:
            raise TimeoutError(f"{source.name}: no idle reset seen within {timeout}s of input (last: {idle})")
        pause()
