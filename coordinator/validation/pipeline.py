"""The validation pipeline: validators in order, cheapest first; the first failure is the verdict.

    >>> pipeline = ValidationPipeline.default(max_norm=50.0)
    >>> verdict = pipeline.validate(candidate, stats)
    >>> verdict.accepted, verdict.code, verdict.message
    (False, <ErrorCode.NORM_OUTLIER: 'norm_outlier'>, 'update norm 412.3 is 97× the cohort median ...')

A campaign that wants another layer passes its own list: anything with a `name` and a
`check(candidate, stats) -> Verdict | None` is a validator.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.validation.cohort import CohortStats
from coordinator.validation.direction import DirectionCheck
from coordinator.validation.evidence import EvidenceCheck
from coordinator.validation.finite import FiniteCheck
from coordinator.validation.interface import Candidate, Validator, Verdict
from coordinator.validation.loss import LossCheck
from coordinator.validation.noise import NoiseCheck
from coordinator.validation.norm import NormCheck
from coordinator.validation.shape import ShapeCheck
from coordinator.validation.staleness import StalenessCheck

__all__ = ["ValidationPipeline", "ValidationSettings"]


@dataclass(frozen=True)
class ValidationSettings:
    """A campaign's validation knobs; the defaults suit an ordinary DiLoCo campaign."""

    max_staleness: int = 4  # versions behind the current one (the aggregator's staleness bound)
    max_norm: float | None = None  # hard cap on ‖Δ‖, off by default
    min_cohort: int = 3  # accepted updates before the cohort checks (norm, direction) apply
    norm_mad_k: float = 6.0  # upper norm bound: median + k·MAD
    mad_floor: float = 0.25  # MAD is taken as at least this fraction of the median
    min_norm_ratio: float = 0.01  # lower norm bound, as a fraction of the median
    min_cosine: float = -0.2  # cosine with the cohort direction
    loss_abs_tol: float = 0.5  # first loss vs. reference: within max(abs_tol, rel_tol·reference)
    loss_rel_tol: float = 0.25
    loss_floor: float = 0.0  # every reported loss must exceed it
    # EvidenceCheck, for updates measured with the model (see coordinator/validation/evidence.py)
    evidence_loss_abs_tol: float = 0.05  # reported vs. recomputed first loss: max(abs, rel · loss)
    evidence_loss_rel_tol: float = 0.015
    min_gain_ratio: float = 0.0  # holdout descent, as a fraction of the version's median (0: off)
    min_fit: float = 0.03  # nats by which the unit's own batches must gain more than their neighbours
    min_fit_ratio: float = 0.15  # ... and this fraction of the version's median
    holdout_tolerance: float = 0.02  # nats a small step along the update may raise the holdout loss by

    def __post_init__(self) -> None:
        problems = []
        if self.max_staleness < 0:
            problems.append(f"max_staleness must not be negative, got {self.max_staleness}")
        if self.max_norm is not None and not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            problems.append(f"max_norm must be a positive number or None, got {self.max_norm}")
        if self.min_cohort < 1:
            problems.append(f"min_cohort must be at least 1, got {self.min_cohort}")
        if not (self.norm_mad_k > 0 and math.isfinite(self.norm_mad_k)):
            problems.append(f"norm_mad_k must be a positive number, got {self.norm_mad_k}")
        if not 0 <= self.mad_floor <= 1:
            problems.append(f"mad_floor must be within [0, 1], got {self.mad_floor}")
        if not 0 <= self.min_norm_ratio < 1:
            problems.append(f"min_norm_ratio must be within [0, 1), got {self.min_norm_ratio}")
        if not -1 <= self.min_cosine <= 1:
            problems.append(f"min_cosine must be within [-1, 1], got {self.min_cosine}")
        if not (self.loss_abs_tol >= 0 and self.loss_rel_tol >= 0):
            problems.append("loss_abs_tol and loss_rel_tol must not be negative")
        if not (self.evidence_loss_abs_tol >= 0 and self.evidence_loss_rel_tol >= 0):
            problems.append("evidence_loss_abs_tol and evidence_loss_rel_tol must not be negative")
        if not (0 <= self.min_gain_ratio < 1 and 0 <= self.min_fit_ratio < 1 and math.isfinite(self.min_fit)):
            problems.append("min_gain_ratio and min_fit_ratio must be within [0, 1), min_fit a finite number")
        if not math.isfinite(self.loss_floor):
            problems.append(f"loss_floor must be a finite number, got {self.loss_floor}")
        if problems:
            raise ValueError("invalid validation settings: " + "; ".join(problems))

    def validators(self) -> list[Validator]:
        """The default layers, cheapest first."""
        return [
            StalenessCheck(self.max_staleness),
            ShapeCheck(),
            FiniteCheck(),
            NoiseCheck(),
            NormCheck(
                max_norm=self.max_norm,
                k=self.norm_mad_k,
                mad_floor=self.mad_floor,
                min_ratio=self.min_norm_ratio,
                min_cohort=self.min_cohort,
            ),
            DirectionCheck(min_cosine=self.min_cosine, min_cohort=self.min_cohort),
            LossCheck(
                abs_tol=self.loss_abs_tol,
                rel_tol=self.loss_rel_tol,
                loss_floor=self.loss_floor,
                min_cohort=self.min_cohort,
            ),
            EvidenceCheck(
                loss_abs_tol=self.evidence_loss_abs_tol,
                loss_rel_tol=self.evidence_loss_rel_tol,
                holdout_tolerance=self.holdout_tolerance,
                min_gain_ratio=self.min_gain_ratio,
                min_fit=self.min_fit,
                min_fit_ratio=self.min_fit_ratio,
                min_cohort=self.min_cohort,
            ),
        ]


class ValidationPipeline:
    def __init__(self, validators: Sequence[Validator]) -> None:
        names = [v.name for v in validators]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"each validator may appear once; repeated: {', '.join(duplicates)}")
        self.validators = tuple(validators)

    @classmethod
    def default(cls, **settings: Any) -> ValidationPipeline:
        """The standard layers with `ValidationSettings` overrides, e.g. `default(max_norm=50.0)`."""
        known = {f.name for f in dataclasses.fields(ValidationSettings)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"unknown validation setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls.from_settings(ValidationSettings(**settings))

    @classmethod
    def from_settings(cls, settings: ValidationSettings) -> ValidationPipeline:
        return cls(settings.validators())

    @property
    def holdout_tolerance(self) -> float:
        """Nats a small step along an update may raise the holdout loss by (EvidenceCheck's setting)."""
        checks = [v.holdout_tolerance for v in self.validators if isinstance(v, EvidenceCheck)]
        return checks[0] if checks else ValidationSettings.holdout_tolerance

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.validators)

    def validate(self, candidate: Candidate, stats: CohortStats) -> Verdict:
        """Run the layers in order and return the first rejection, or an accepted Verdict.

        Pure: it never changes `stats`; record an update with `stats.record` once it is accepted
        (and, where the unit was replicated, once its replica agreed).
        """
        for validator in self.validators:
            verdict = validator.check(candidate, stats)
            if verdict is not None:
                return verdict
        return Verdict.accept()
