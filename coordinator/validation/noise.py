"""NoiseCheck: an update of a campaign on volunteers' own data carries the noise it should, and no more
than clipping allows.

A volunteer clips its update Δ to norm C and adds N(0, σ²) to each of its coordinates, σ = z·2C
(protocol.md, units on volunteers' own data). For a tensor of n coordinates the noise's squared norm
is σ²·χ²(n): mean nσ², standard deviation σ²√(2n); the clipped part adds at most C² to the whole and
its cross term with the noise has standard deviation at most 2Cσ. So, with k = `sigmas`:

    each tensor    ‖Δᵢ‖² ≥ nᵢσ² − k(σ²√(2nᵢ) + 2Cσ)          noise left out of any tensor fails
    the whole      ‖Δ‖²  ≤ C² + Nσ² + k(σ²√(2N) + 2Cσ)        an unclipped or doubled update fails

and `codec_slack` widens both for the codec's rounding (int8's is under 0.01 % of a Gaussian's
energy). What this can't see: with N coordinates, anything of squared norm below k·σ²√(2N) hides in
the noise's own spread: an update left unclipped up to that size passes (for z = 1 and a million
coordinates, about 200·C). That costs only the sender's own privacy; what it does to the average is
bounded by robust aggregation, not here.

    >>> NoiseCheck().check(Candidate(..., privacy=(1.0, 2.0)), stats)   # None, or a norm_outlier Verdict
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coordinator.validation.cohort import CohortStats
from coordinator.validation.interface import Candidate, Verdict, fmt
from protocol.errors import ErrorCode

__all__ = ["NoiseCheck"]


@dataclass(frozen=True)
class NoiseCheck:
    sigmas: float = 8.0  # false rejections of honest noise: under 1e-14 per check
    codec_slack: float = 0.02  # relative, on squared norms
    name = "noise"

    def check(self, candidate: Candidate, stats: CohortStats) -> Verdict | None:
        if candidate.privacy is None:
            return None  # not a unit on volunteers' own data
        clip, sigma = candidate.privacy
        k = self.sigmas
        total = 0
        for name, tensor in candidate.delta.items():
            n = tensor.numel()
            total += n
            if sigma == 0:
                continue
            energy = float(tensor.double().pow(2).sum())
            least = (n * sigma**2 - k * (sigma**2 * math.sqrt(2 * n) + 2 * clip * sigma)) * (1 - self.codec_slack)
            if energy < least:
                return Verdict.reject(
                    ErrorCode.NORM_OUTLIER,
                    f"{name!r} carries too little noise: its squared norm {fmt(energy)} is below "
                    f"{fmt(least)}, what Gaussian noise of standard deviation {fmt(sigma)} (z·2C) on its {n} "
                    "values gives; add the noise the unit's private recipe states to every value",
                )
        most = (clip**2 + total * sigma**2 + k * (sigma**2 * math.sqrt(2 * total) + 2 * clip * sigma)) * (
            1 + self.codec_slack
        )
        if candidate.norm**2 > most:
            return Verdict.reject(
                ErrorCode.NORM_OUTLIER,
                f"the update's norm {fmt(candidate.norm)} is more than clipping to {fmt(clip)} and noise of "
                f"standard deviation {fmt(sigma)} give (at most {fmt(math.sqrt(most))}); clip the update to the "
                "unit's clip_norm before adding the noise",
            )
        return None
