"""DirectionCheck: the update points roughly the way the cohort's accepted updates point.

Honest pseudo-gradients from the same model share a common component, so their cosine with the
cohort's running direction is positive or, for noisy ones, near zero. A sign-flipped update
(θ_end − θ_start), one trained on other data or random garbage of the right norm lands well below.

An update measured with the model (one carrying evidence) is left to EvidenceCheck, which judges what
it does rather than how it points: the running direction is only as good as the updates folded into
it, and early in a campaign those may be an attacker's (seen: two sign-flipping Sybils replicated
each other's first units, set the direction, and 27 % of honest updates were then rejected here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from coordinator.validation.cohort import CohortStats
from coordinator.validation.interface import Candidate, Verdict
from protocol.errors import ErrorCode

__all__ = ["DirectionCheck", "cosine_similarity"]


def cosine_similarity(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *, a_norm: float | None = None
) -> float | None:
    """Cosine over the tensors both hold; None when either side is zero there.

    Per-tensor dot products run in fp32 (BLAS accumulates in blocks, so the relative error stays
    around 1e-6, far below what a threshold on the cosine cares about) and are summed in Python
    floats; fp64 copies of every tensor cost more than the whole rest of validation. `a_norm` is
    ‖a‖ when the caller knows it and `b` covers every tensor of `a` (it saves a pass over `a`).
    """
    dot = norm_a = norm_b = 0.0
    for name, x in a.items():
        y = b.get(name)
        if y is None:
            continue
        x1, y1 = x.reshape(-1).float(), y.reshape(-1).float()
        dot += float(torch.dot(x1, y1))
        if a_norm is None:
            norm_a += float(torch.dot(x1, x1))
        norm_b += float(torch.dot(y1, y1))
    if a_norm is not None:
        norm_a = a_norm * a_norm
    if norm_a == 0 or norm_b == 0:
        return None
    return dot / math.sqrt(norm_a * norm_b)


@dataclass(frozen=True)
class DirectionCheck:
    min_cosine: float = -0.2
    min_cohort: int = 3
    name = "direction"

    def check(self, candidate: Candidate, stats: CohortStats) -> Verdict | None:
        if candidate.evidence is not None:
            return None  # measured: EvidenceCheck decides
        support = stats.support(candidate.delta)
        direction = stats.direction(candidate.delta)
        if direction is None or support < self.min_cohort:
            return None
        # `direction` covers every tensor of the update (or is None), so the update's norm serves.
        cosine = cosine_similarity(candidate.delta, direction, a_norm=candidate.norm)
        if cosine is None or cosine >= self.min_cosine:
            return None
        return Verdict.reject(
            ErrorCode.DIRECTION_OUTLIER,
            f"the update points away from the cohort: its cosine similarity with the running direction "
            f"of {support} accepted updates is {cosine:.3f} (limit: at least {self.min_cosine:.2f}); "
            "a flipped sign (θ_end − θ_start instead of θ_start − θ_end), the wrong data or the wrong "
            "model version does this",
        )
