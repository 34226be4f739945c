"""LossCheck: the reported training trajectory is plausible for the unit that was handed out.

A unit of H steps over `expected_tokens` tokens reports exactly H finite losses above the loss
floor (cross-entropy is never negative), and its first loss — measured on θ_v before any step —
lies near the known loss of θ_v: within max(abs_tol, rel_tol · reference). That comparison is loose
(a slice's loss differs from the holdout's), so an update that EvidenceCheck measures — which
recomputes the first loss on the unit's own batches — skips it. A volunteer who trained
a different model, skipped steps or made the numbers up fails here. When the holdout loss of θ_v is
not known yet, the median first loss of at least `min_cohort` accepted units from the same version
stands in for it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from coordinator.validation.cohort import CohortStats
from coordinator.validation.interface import Candidate, Verdict, fmt
from protocol.errors import ErrorCode

__all__ = ["LossCheck"]


@dataclass(frozen=True)
class LossCheck:
    abs_tol: float = 0.5
    rel_tol: float = 0.25
    loss_floor: float = 0.0
    min_cohort: int = 3
    name = "loss"

    def check(self, candidate: Candidate, stats: CohortStats) -> Verdict | None:
        if candidate.privacy is not None:
            return self._private(candidate)
        if candidate.tokens != candidate.expected_tokens:
            return _reject(
                f"the update reports {candidate.tokens} trained tokens; the unit is "
                f"{candidate.expected_tokens} tokens — train on the whole data slice, no more and no less"
            )
        losses = list(candidate.losses)
        if len(losses) != candidate.steps:
            return _reject(
                f"the update reports {len(losses)} losses for a unit of {candidate.steps} inner steps; "
                "report one loss per step"
            )
        bad = [(i, x) for i, x in enumerate(losses, 1) if not (math.isfinite(x) and x > self.loss_floor)]
        if bad:
            step, value = bad[0]
            return _reject(
                f"{len(bad)} reported loss(es) are not finite numbers above {fmt(self.loss_floor)}: step "
                f"{step} reports {fmt(value)} — a cross-entropy loss can't be that"
            )
        if candidate.evidence is not None:
            return None  # EvidenceCheck recomputes the first loss exactly; this estimate is looser
        reference, source = self._reference(candidate, stats)
        if reference is None:
            return None
        tolerance = max(self.abs_tol, self.rel_tol * abs(reference))
        first = losses[0]
        if abs(first - reference) <= tolerance:
            return None
        return _reject(
            f"the first reported loss {fmt(first)} is {fmt(abs(first - reference))} away from {source} "
            f"({fmt(reference)}; limit: ±{fmt(tolerance)}); the unit was trained from a different model "
            "or the losses were not measured on the unit's data"
        )

    def _private(self, candidate: Candidate) -> Verdict | None:
        """A unit on volunteers' own data: its losses stay on the device, and there is nothing to compare."""
        if candidate.losses:
            return _reject(
                "a unit on the volunteer's own data reports no losses: they are of the owner's data and the "
                "noise doesn't protect them; send metrics.losses empty"
            )
        if candidate.tokens != candidate.expected_tokens:
            return _reject(
                f"the update reports {candidate.tokens} trained tokens; the unit is {candidate.expected_tokens} tokens"
            )
        return None

    def _reference(self, candidate: Candidate, stats: CohortStats) -> tuple[float | None, str]:
        if candidate.reference_loss is not None and math.isfinite(candidate.reference_loss):
            version = "" if candidate.version is None else f" {candidate.version}"
            return candidate.reference_loss, f"the known loss of model version{version}"
        if candidate.version is None:
            return None, ""
        peers = stats.first_losses(candidate.version)
        if len(peers) >= self.min_cohort:
            return (
                statistics.median(peers),
                f"the median first loss of {len(peers)} accepted units from version {candidate.version}",
            )
        return None, ""


def _reject(message: str) -> Verdict:
    return Verdict.reject(ErrorCode.IMPLAUSIBLE_LOSS, message)
