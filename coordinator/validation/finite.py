"""FiniteCheck: every value of the update is a finite number."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from coordinator.validation.cohort import CohortStats
from coordinator.validation.interface import Candidate, Verdict, listing
from protocol.errors import ErrorCode

__all__ = ["FiniteCheck"]


@dataclass(frozen=True)
class FiniteCheck:
    name = "finite"

    def check(self, candidate: Candidate, stats: CohortStats) -> Verdict | None:
        # The fp64 norm is finite exactly when every value is (a finite fp32 value squared can't
        # overflow fp64), and later checks need the norm anyway: one pass instead of two.
        if math.isfinite(candidate.norm):
            return None
        bad = [n for n, t in candidate.delta.items() if not bool(torch.isfinite(t).all())]
        if not bad:
            return None
        first = candidate.delta[bad[0]]
        nans = int(torch.isnan(first).sum())
        infs = int(torch.isinf(first).sum())
        return Verdict.reject(
            ErrorCode.NON_FINITE,
            f"{len(bad)} tensor(s) hold NaN or infinite values ({listing(bad)}); {bad[0]!r} has {nans} NaN "
            f"and {infs} infinite of {first.numel()} values — training diverged or the device computed "
            "wrong numbers (try a lower GPU clock or the CPU, and update the GPU driver)",
        )
