"""The values that pass between the engine and its callers: a leased unit, a refusal to lease, a
volunteer's report and update, the verdict on it, and the open round's running state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from coordinator.campaign import CampaignSpec
from coordinator.engine.states import OutcomeStatus
from coordinator.store import CampaignRow, RoundRow, UnitRow, VersionRow
from protocol.codecs import CodecError
from training.accumulator import DeltaAccumulator
from training.inner import InnerConfig
from training.model import ModelConfig

__all__ = [
    "Assignment",
    "CheckFarm",
    "Counters",
    "NoWork",
    "Outcome",
    "PreparedUpdate",
    "RoundState",
    "SubmissionReport",
]


@dataclass(frozen=True)
class Assignment:
    """A leased unit with everything the gateway needs to describe it to the volunteer."""

    unit: UnitRow
    lease_id: str
    lease_deadline: float
    campaign: CampaignRow
    spec: CampaignSpec
    model_config: ModelConfig
    checkpoint: VersionRow
    data_size: int
    data_dtype: str
    shard_shapes: dict[str, tuple[int, ...]]
    global_step: int
    inner: InnerConfig  # the recipe; its schedule spans the whole campaign
    max_update_bytes: int
    runtime: str = "torch"  # what the volunteer trains with (the gateway decides)
    graph: tuple[str, int] | None = None  # the ONNX step graph's blob (sha256, size) for onnxruntime
    deltas: tuple[DeltaStep, ...] = ()  # the checkpoint's delta chain, oldest first
    tokenizer: tuple[str, int] | None = None  # a unit on volunteers' own data: the tokenizer's blob (sha256, size)


@dataclass(frozen=True)
class DeltaStep:
    """The delta blob from checkpoint `base` to checkpoint `result` (protocol.md, checkpoint deltas)."""

    base: str
    delta_sha: str
    delta_size: int
    result: str


@dataclass(frozen=True)
class NoWork:
    reason: str
    retry_after_s: float = 5.0
    no_campaign: bool = False  # no campaign is training at all: the gateway holds the request for one


@dataclass(frozen=True)
class SubmissionReport:
    losses: list[float]
    tokens: int
    seconds: float
    device: str = "cpu"


@dataclass(frozen=True, eq=False)
class PreparedUpdate:
    """The heavy, order-free half of a submission, done on any worker thread before the campaign's
    lock is taken: the update's blob written durably, its tensors decoded and their norm computed.

    `delta` and `error` are both None when the submission failed the cheap lease pre-check: then
    nothing was stored or decoded, and the commit answers with the lease verdict.
    """

    unit: UnitRow | None
    sha256: str
    size: int
    delta: dict[str, torch.Tensor] | None = None
    norm: float | None = None
    error: CodecError | None = None
    moments_sha: str | None = None  # the submit's moments frame, stored, where the campaign shares moments
    error_in_moments: bool = False  # `error` is the moments frame's, not the update's

    @property
    def stored(self) -> bool:
        return self.delta is not None or self.error is not None


@dataclass(frozen=True)
class Outcome:
    status: OutcomeStatus
    code: str | None
    message: str
    credit: float = 0.0
    closed_round: bool = False


@dataclass
class RoundState:
    row: RoundRow
    accumulator: DeltaAccumulator
    accepted: int = 0
    tokens: int = 0
    units_created: int = 0


@dataclass
class Counters:
    """What /metrics exposes for this campaign."""

    leased: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    round_seconds: list[float] = field(default_factory=list)


class CheckFarm(Protocol):
    """Where the engine sends an update's holdout check (`check` units: the loss of θ_v − η·Δ on the
    holdout, measured forward-only by volunteers); the service's EvaluationDesk does it. Keyed by the
    unit whose update is checked."""

    def wants(self, campaign_id: int, volunteer_id: str) -> bool:
        """Whether volunteers who could check an update of `volunteer_id` are connected now."""
        ...

    def open(
        self, campaign_id: int, unit_id: str, version: int, checkpoint: tuple[str, int], volunteer_id: str
    ) -> None:
        """Farm out the holdout loss of the weights in `checkpoint` (a blob: sha256, size)."""
        ...

    def result(self, campaign_id: int, unit_id: str) -> float | bool:
        """The holdout loss two volunteers agreed on; True while they may still; False when they won't
        (nobody took it in time, they disagreed, or the check is unknown)."""
        ...

    def close(self, campaign_id: int, unit_id: str) -> None:
        """Forget the check (settled)."""
        ...
