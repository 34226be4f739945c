"""NormCheck: the update's global L2 norm lies within robust bounds of the accepted cohort.

Bounds, once the cohort holds at least `min_cohort` accepted norms (median m, MAD d, both per unit
of `Candidate.norm_scale`, so learning-rate warmup and decay don't read as outliers):

    upper = m + k · clamp(d, mad_floor · m, m)        never above (1 + k) · m: a 100× update always fails
    lower = min_ratio · m                             a "did nothing" update

The MAD floor keeps a very uniform cohort from rejecting ordinary jitter; the MAD ceiling keeps a
few wild accepted norms from opening the gate to anything. The window spans versions, and honest
norms shrink several-fold over a campaign, so it can't tell an update scaled ×2 from an honest one.
Updates trained from the *same* version can: once `min_cohort` of them were accepted, the norm must
also lie within [version_low, version_high] × their median (honest ones: 0.87–1.16× in bench
adversarial, 883 updates). An all-zero update is rejected even
before a cohort exists, and `max_norm`, when set, is a hard cap that always applies.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from coordinator.validation.cohort import CohortStats, NormSpread
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
    version_high: float = 1.6
    version_low: float = 0.4
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
        return self._window_bounds(candidate, spread) or self._version_bounds(candidate, stats)

    def _version_bounds(self, candidate: Candidate, stats: CohortStats) -> Verdict | None:
        if candidate.version is None:
            return None
        peers = stats.version_norms(candidate.version, candidate.shard)
        if len(peers) < self.min_cohort:
            return None
        median = statistics.median(peers) * candidate.norm_scale
        if median <= 0:
            return None
        ratio = candidate.norm / median
        if self.version_low <= ratio <= self.version_high:
            return None
        return Verdict.reject(
            ErrorCode.NORM_OUTLIER,
            f"update norm {fmt(candidate.norm)} is {times(ratio)} the median {fmt(median)} of {len(peers)} accepted "
            f"updates trained from the same version {candidate.version} (limits: {fmt(self.version_low)}× to "
            f"{fmt(self.version_high)}×); an update scaled after training, or trained with other settings, does this",
        )

    def _window_bounds(self, candidate: Candidate, spread: NormSpread) -> Verdict | None:
        norm = candidate.norm
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
