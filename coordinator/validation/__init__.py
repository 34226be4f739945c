"""Validation of volunteers' updates: never trust a volunteer.

    >>> from coordinator.validation import Candidate, CohortStats, ValidationPipeline
    >>> pipeline = ValidationPipeline.default()  # staleness, shape, finite, norm, direction, loss, evidence
    >>> stats = CohortStats()                              # one per campaign and model shard
    >>> candidate = Candidate(delta, unit_shapes, losses=result.losses, steps=unit.steps,
    ...                       tokens=result.tokens, expected_tokens=unit.tokens, reference_loss=4.15)
    >>> verdict = pipeline.validate(candidate, stats)
    >>> if verdict.accepted:
    ...     stats.record(candidate)
    ... else:
    ...     reply(verdict.code, verdict.message)           # e.g. norm_outlier, "update norm 412.3 is 97× ..."

Layers run cheapest first and the first failure is the verdict. Replicated units are compared with
`compare_replicas`; `TrustTracker` decides how often a volunteer's units are replicated. Everything
here is pure logic over decoded tensors: no network, no database.
"""

from __future__ import annotations

from coordinator.validation.cohort import CohortStats, NormSpread
from coordinator.validation.direction import DirectionCheck, cosine_similarity
from coordinator.validation.evidence import EvidenceCheck, LossProbe, Measurements, UnitEvidence
from coordinator.validation.finite import FiniteCheck
from coordinator.validation.interface import Candidate, Validator, Verdict, global_norm
from coordinator.validation.loss import LossCheck
from coordinator.validation.noise import NoiseCheck
from coordinator.validation.norm import NormCheck
from coordinator.validation.pipeline import ValidationPipeline, ValidationSettings
from coordinator.validation.replication import compare_replicas
from coordinator.validation.shape import ShapeCheck
from coordinator.validation.staleness import StalenessCheck
from coordinator.validation.trust import TrustState, TrustTracker

__all__ = [
    "Candidate",
    "CohortStats",
    "DirectionCheck",
    "EvidenceCheck",
    "FiniteCheck",
    "LossCheck",
    "LossProbe",
    "Measurements",
    "NoiseCheck",
    "NormCheck",
    "NormSpread",
    "ShapeCheck",
    "StalenessCheck",
    "TrustState",
    "TrustTracker",
    "UnitEvidence",
    "ValidationPipeline",
    "ValidationSettings",
    "Validator",
    "Verdict",
    "compare_replicas",
    "cosine_similarity",
    "global_norm",
]
