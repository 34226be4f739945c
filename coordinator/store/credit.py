"""Recent average credit (RAC), as BOINC keeps it: credit per day, decaying with a half-life of a week.

    >>> rac, at = add_credit(0.0, 0.0, credit=10.0, now=86_400.0)   # 10 credits over the first day
    >>> round(rac, 3), at
    (0.943, 86400.0)
    >>> round(decayed(rac, at, now=at + HALF_LIFE_S), 3)           # a week later, none earned since
    0.471

Each grant first decays the average to now, then adds the grant spread over the time since the last
one (BOINC's `update_average`, except for the first grant: see `add_credit`): a machine earning `c`
credits a day reaches `c` after a few half-lives and halves every week once it stops. Machines,
accounts and teams each keep their own; `decayed` brings a stored average up to a reading's time.
"""

from __future__ import annotations

import math

__all__ = ["DAY_S", "HALF_LIFE_S", "add_credit", "decayed"]

DAY_S = 86_400.0
HALF_LIFE_S = 7 * DAY_S


def decayed(average: float, at: float, now: float) -> float:
    """`average` (credit per day as of `at`) as of `now`, nothing earned between."""
    return average * math.exp(-max(0.0, now - at) * math.log(2) / HALF_LIFE_S)


def add_credit(average: float, at: float, *, credit: float, now: float) -> tuple[float, float]:
    """The average and its time after `credit` was granted at `now`; `at` 0 means nothing granted yet."""
    if at <= 0:
        # BOINC divides a first grant by the job's duration, which makes a minute's unit look like a day's
        # worth per minute; here a first grant is spread over a day instead.
        at = now - DAY_S
    elapsed = max(0.0, now - at)
    weight = math.exp(-elapsed * math.log(2) / HALF_LIFE_S)
    average *= weight
    if 1.0 - weight > 1e-6:
        average += (1.0 - weight) * credit / (elapsed / DAY_S)
    else:  # a grant right after another: the limit of the line above as elapsed -> 0
        average += math.log(2) * credit * DAY_S / HALF_LIFE_S
    return average, now
