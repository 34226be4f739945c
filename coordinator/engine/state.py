"""What a campaign's scheduler, ingest and aggregator share: the campaign's row and spec, the
model's shapes and shards, θ_v, the open round, the cohort statistics and the counters.

Everything here is derived from the store (`Aggregator.restore` rebuilds it after a restart), and
it is changed only under `lock`, by the campaign's lane.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from coordinator.blobs import BlobStore
from coordinator.campaign import CampaignSpec
from coordinator.engine.models import Counters, RoundState
from coordinator.engine.states import CloseReason
from coordinator.store import CampaignRow, Store, UnitRow, VersionRow
from coordinator.validation import Candidate, CohortStats, TrustState, TrustTracker, ValidationPipeline
from protocol.codecs import decode, encoded_size_bound
from protocol.tensors import TensorSpec
from training.data import TokenDataset
from training.inner import InnerConfig, learning_rate
from training.model import ModelConfig, build_model, parameter_groups, preset
from training.outer import OuterOptimizer, make_outer_optimizer

if TYPE_CHECKING:
    from coordinator.engine.runtime import CampaignRuntime

__all__ = ["CampaignState", "Clock", "model_config_for", "shard_plan"]

Clock = Callable[[], float]


def model_config_for(spec: CampaignSpec, dataset: TokenDataset) -> ModelConfig:
    return preset(spec.model, vocab_size=dataset.vocab_size, max_seq_len=spec.inner.seq_len)


def shard_plan(groups: list[list[str]], count: int) -> list[list[str]]:
    """Split parameter groups into `count` contiguous shards of about equal group count."""
    count = max(1, min(count, len(groups)))
    bounds = [round(i * len(groups) / count) for i in range(count + 1)]
    return [[name for group in groups[a:b] for name in group] for a, b in itertools.pairwise(bounds)]


class CampaignState:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        row: CampaignRow,
        dataset: TokenDataset,
        *,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.row = row
        self.dataset = dataset
        self.clock = clock
        self.rng = rng or random.Random()
        self.spec = CampaignSpec.from_dict(row.spec)
        self.model_config = model_config_for(self.spec, dataset)
        skeleton = build_model(self.model_config, device="meta")
        self.shapes = {name: tuple(p.shape) for name, p in skeleton.named_parameters()}
        self.shards = shard_plan(list(parameter_groups(skeleton).values()), self.spec.shard_count)
        self.shard_params = [sum(math.prod(self.shapes[n]) for n in shard) for shard in self.shards]
        self.total_params = sum(self.shard_params)
        self.inner_config: InnerConfig = self.spec.inner_config
        self.pipeline = ValidationPipeline.default(
            norm_mad_k=self.spec.validation.norm_mad_k,
            min_cosine=self.spec.validation.min_cosine,
            max_staleness=self.spec.rounds.staleness_bound,
        )
        self.trust = TrustTracker()
        self.counters = Counters()
        self.lock = threading.RLock()  # the holdout evaluator reads θ_v from another thread
        self.params: dict[str, torch.Tensor] = {}
        self.outer: OuterOptimizer = make_outer_optimizer(
            self.spec.outer.optimizer, lr=self.spec.outer.lr, momentum=self.spec.outer.momentum
        )
        self.cohort = CohortStats()
        self.round: RoundState | None = None
        self.version_row: VersionRow | None = None
        self.close_due: CloseReason | None = None  # why the open round should close, once a commit decided it
        self.on_version: Callable[[CampaignRuntime, VersionRow], None] | None = None

    def refresh(self) -> CampaignRow:
        row = self.store.campaign(self.row.id)
        assert row is not None
        self.row = row
        return row

    def round_number(self, round_id: int) -> int:
        row = self.store.round(round_id)
        return row.number if row else 1

    def twin_id(self, unit: UnitRow) -> str | None:
        """The other unit of a replicated pair, if `unit` is one."""
        if unit.replica_of is not None:
            return unit.replica_of
        replica = self.store.replica_of(unit.id)
        return replica.id if replica is not None else None

    def data_dtype(self) -> str:
        return "uint16" if self.dataset.vocab_size <= 65536 else "uint32"

    def decode(self, payload: bytes, shard: list[str]) -> dict[str, torch.Tensor]:
        """An update's tensors, checked against the shard's shapes and the campaign's codec."""
        specs = {n: TensorSpec(self.shapes[n]) for n in shard}
        return decode(payload, specs, max_bytes=encoded_size_bound(specs, self.spec.codec), config=self.spec.codec)

    def candidate(
        self,
        unit: UnitRow,
        delta: dict[str, torch.Tensor],
        losses: list[float],
        tokens: int,
        *,
        norm: float | None = None,
    ) -> Candidate:
        version = self.store.version(self.row.id, unit.version)
        global_step = (self.round_number(unit.round_id) - 1) * self.spec.inner.steps
        return Candidate(
            delta=delta,
            expected_shapes={n: self.shapes[n] for n in unit.shard},
            losses=losses,
            steps=self.spec.inner.steps,
            tokens=tokens,
            expected_tokens=self.spec.inner.tokens_per_unit,
            reference_loss=version.holdout_loss if version else None,
            version=unit.version,
            staleness=self.row.current_version - unit.version,
            # AdamW moves weights by about lr per step: compare norms per unit of learning rate.
            norm_scale=sum(learning_rate(self.inner_config, global_step + i) for i in range(self.spec.inner.steps)),
            known_norm=norm,
        )

    def credit(self, unit: UnitRow, tokens: int) -> float:
        """Credit in TFLOPs of training work (6 × trained parameters × tokens), like BOINC's cobblestones."""
        return 6.0 * self.shard_params[unit.shard_index] * tokens / 1e12

    def judge(
        self,
        volunteer_id: str,
        *,
        accepted: bool,
        code: str | None = None,
        credit: float = 0.0,
        tokens: int = 0,
    ) -> None:
        """Credit and trust for one judged result (inside the caller's transaction)."""
        volunteer = self.store.volunteer(volunteer_id)
        if volunteer is None:
            return
        trust = self.trust.update(TrustState(volunteer.consecutive_valid, volunteer.errors), accepted, code)
        self.store.record_outcome(volunteer_id, accepted=accepted, credit=credit, tokens=tokens, trust=trust.to_dict())

    def count_rejection(self, code: str) -> None:
        self.counters.rejected[code] = self.counters.rejected.get(code, 0) + 1
