"""NormCheck: the update's global L2 norm lies within robust bounds of the accepted cohort.

Bounds, once the cohort holds at least `min_cohort` accepted norms (median m, MAD d, both per unit
of `Candidate.norm_scale`, so learning-rate warmup and decay don't read as outliers):

    upper = m + k · clamp(d, mad_floor · m, m)        never above (1 + k) · m: a 100× update always fails
    lower = min_ratio · m                             a "did nothing" update

The MAD floor keeps a very uniform cohort from rejecting ordinary jitter; the MAD ceiling keeps a
few wild accepted norms from opening the gate to anything. An all-zero update is rejected even
before a cohort exists, and `max_norm`, when set, is a hard cap that always applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coordinator.validation.cohort import CohortStats
from coordinator.validation.interface import Candidate, Verdict, fmt, times
from protocol.errors import ErrorCode

__all__ = ["NormCheck"]


@dataclass(frozen=True)
class NormCheck:
    max_norm: float | None = None
    k: float = 6.0
    # Honest norms drift across a campaign's rounds (an honest unit at 1.8× the median of three earlier
    # ones was seen in bench system); 0.25 puts the limit at ≥ 2.5× the median, while 100× still fails.
    mad_floor: float = 0.25
    min_ratio: float = 0.01
    min_cohort: int = 3
    name = "norm"

    def check(self, candidate: Candidate, stats: CohortStats) -> Verdict | None:
        norm = candidate.norm
        if not math.isfinite(norm):
            return Verdict.reject(ErrorCode.NORM_OUTLIER, f"update norm {fmt(norm)} overflows; training diverged")
        if norm == 0:
            return Verdict.reject(
                ErrorCode.NORM_OUTLIER,
                "the update is all zeros (norm 0): no training happened — check that the unit ran its "
                f"{candidate.steps} steps with a non-zero learning rate",
            )
        if self.max_norm is not None and norm > self.max_norm:
            return Verdict.reject(
                ErrorCode.NORM_OUTLIER,
                f"update norm {fmt(norm)} exceeds the campaign's cap of {fmt(self.max_norm)}",
            )
        spread = stats.norm_spread(candidate.shard)
        if spread is None or spread.n < self.min_cohort or spread.median <= 0:
            return None
        # Compared per unit of norm_scale, reported in this unit's terms.
        scale = candidate.norm_scale
        median = spread.median * scale
        mad = min(max(spread.mad * scale, self.mad_floor * median), median)
        cohort = f"the cohort median {fmt(median)} of {spread.n} accepted updates"
        if scale != 1.0:
            cohort += " at this unit's learning rate"
        upper = median + self.k * mad
        if norm > upper:
            return Verdict.reject(
                ErrorCode.NORM_OUTLIER,
                f"update norm {fmt(norm)} is {times(norm / median)} {cohort} "
                f"(limit: median + {fmt(self.k)}·MAD = {fmt(upper)}); "
                "a learning rate, step count or loss scale other than the unit's does this",
            )
        lower = self.min_ratio * median
        if norm < lower:
            return Verdict.reject(
                ErrorCode.NORM_OUTLIER,
                f"update norm {fmt(norm)} is {times(norm / median)} {cohort} "
                f"(limit: at least {fmt(self.min_ratio)}·median = {fmt(lower)}); "
                "the unit's steps barely moved the model — were they all run?",
            )
        return None
