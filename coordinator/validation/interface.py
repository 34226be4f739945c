"""What every validator shares: the submission it judges, the verdict it returns, and its interface.

>>> candidate = Candidate(delta, expected_shapes, losses=[4.1, 3.9, 3.8], steps=3,
...                       tokens=192, expected_tokens=192, reference_loss=4.15)
>>> verdict = NormCheck().check(candidate, stats)     # None: this check passes
>>> verdict = Verdict.reject(ErrorCode.NORM_OUTLIER, "update norm 412.3 is 97× the round median 4.2 ...")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

import torch

from protocol.errors import ErrorCode

if TYPE_CHECKING:
    from coordinator.validation.cohort import CohortStats
    from coordinator.validation.evidence import Measurements, UnitEvidence

__all__ = ["Candidate", "Validator", "Verdict", "fmt", "global_norm", "listing", "times"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of validating one update; `message` is a sentence the volunteer sees."""

    accepted: bool
    code: ErrorCode | None
    message: str

    @classmethod
    def accept(cls) -> Verdict:
        return cls(True, None, "accepted")

    @classmethod
    def reject(cls, code: ErrorCode, message: str) -> Verdict:
        return cls(False, code, message)


# eq=False: comparing two candidates would compare their tensors, which has no single truth value.
@dataclass(frozen=True, eq=False)
class Candidate:
    """One decoded submission, as validation sees it.

    `version` is the model version θ_v the unit trained from (None if the caller doesn't say: then
    no first losses of peers stand in for an unknown `reference_loss`); `staleness` is how many
    versions the campaign has moved past it since (0 for an update to the current version).

    `norm_scale` is what the update's norm is expected to be proportional to: the sum of the unit's
    inner learning rates under the campaign's schedule. AdamW moves each weight by about the
    learning rate per step, so norms of units from different points of the schedule (warmup, decay)
    are compared after dividing by it. The default 1.0 compares raw norms, which suits a cohort
    whose units all share one learning rate.
    """

    delta: Mapping[str, torch.Tensor]  # decoded fp32 pseudo-gradient θ_start − θ_end
    expected_shapes: Mapping[str, tuple[int, ...]]  # the unit's shard
    losses: Sequence[float]  # reported per-inner-step training losses
    steps: int  # the unit's H
    tokens: int
    expected_tokens: int
    reference_loss: float | None = None  # latest known holdout loss of θ_v, None if unknown
    version: int | None = None
    staleness: int = 0
    norm_scale: float = 1.0
    known_norm: float | None = None  # ‖Δ‖ when the caller already computed it (off the campaign's lock)
    evidence: UnitEvidence | None = None  # what to measure the update with, when it is checked (EvidenceCheck)
    # A unit on volunteers' own data: (clip norm C, noise standard deviation σ) its update was made with
    # (NoiseCheck); its losses are not reported and no batches of its data exist here.
    privacy: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not (self.norm_scale > 0 and math.isfinite(self.norm_scale)):
            raise ValueError(f"norm_scale must be a positive number, got {self.norm_scale}")

    @cached_property
    def norm(self) -> float:
        """Global L2 norm of the update (computed once; inf or nan if the update is not finite)."""
        return global_norm(self.delta) if self.known_norm is None else self.known_norm

    @cached_property
    def measurements(self) -> Measurements | None:
        """The update measured with the model (computed once), or None when it is not checked."""
        return None if self.evidence is None else self.evidence.measure(self.delta)

    @property
    def scaled_norm(self) -> float:
        """The norm per unit of `norm_scale`: what the cohort's norm statistics are kept in."""
        return self.norm / self.norm_scale

    @property
    def shard(self) -> tuple[str, ...]:
        """The names of the unit's shard, sorted: whose norms the update is compared with."""
        return tuple(sorted(self.expected_shapes))


class Validator(Protocol):
    """One layer of validation: returns None when the candidate passes, else a rejecting Verdict."""

    @property
    def name(self) -> str: ...

    def check(self, candidate: Candidate, stats: CohortStats) -> Verdict | None: ...


def global_norm(tensors: Mapping[str, torch.Tensor]) -> float:
    """‖Δ‖₂ over all tensors; inf or nan if some value is not finite.

    Each tensor's norm is taken in its own precision (blocked fp32 sums: relative error around
    1e-6, and 12× faster than an fp64 copy of an 8.7M-parameter update, measured) and the norms are
    combined in Python floats. Only a tensor whose fp32 norm overflows though all its values are
    finite (|x| beyond about 1e19, which no training produces) is summed again in fp64, so the
    answer stays inf for non-finite values alone.
    """
    total = 0.0
    for tensor in tensors.values():
        norm = float(torch.linalg.vector_norm(tensor))
        if math.isinf(norm) and bool(torch.isfinite(tensor).all()):
            norm = float(torch.linalg.vector_norm(tensor, dtype=torch.float64))
        total += norm * norm
    return math.sqrt(total)


def fmt(value: float) -> str:
    """A number for a message a person reads: four significant digits, no exponent when avoidable."""
    if value == 0 or not math.isfinite(value):
        return str(value)
    if 1e-4 <= abs(value) < 1e6:
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return f"{value:.3e}"


def times(ratio: float) -> str:
    """A ratio as a person says it: 97×, 1.3×, 0.0024×."""
    if not math.isfinite(ratio) or float(f"{ratio:.2g}") >= 100:  # 99.99 reads 100×, not 1e+02×
        return f"{ratio:.0f}×"
    return f"{ratio:.2g}×"


def listing(names: Iterable[str], limit: int = 3) -> str:
    """'a', 'b', 'c' and 4 more — enough names to act on without flooding the message."""
    items = list(names)
    shown = ", ".join(repr(n) for n in items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"
