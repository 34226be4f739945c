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
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from coordinator.campaign import CampaignSpec
from coordinator.engine.models import CheckFarm, Counters, RoundState
from coordinator.engine.states import CloseReason, SubmissionStatus
from coordinator.store import CampaignRow, Store, SubmissionRow, UnitRow, VersionRow
from coordinator.store.blobs import Blobs
from coordinator.validation import (
    Candidate,
    CohortStats,
    LossProbe,
    TrustState,
    TrustTracker,
    UnitEvidence,
    ValidationPipeline,
)
from coordinator.validation.evidence import Batch
from protocol.codecs import decode, encoded_size_bound
from protocol.tensors import TensorSpec
from training.checkpoint import load_weights
from training.data import TokenDataset
from training.data.manifest import TOKENIZER_NAME
from training.inner import InnerConfig, sequence_batches, unit_learning_rate
from training.model import ModelConfig, build_model, parameter_groups, preset
from training.outer import OuterOptimizer, make_outer_optimizer
from training.privacy_accounting import releases_within

if TYPE_CHECKING:
    from coordinator.engine.runtime import CampaignRuntime

__all__ = ["CampaignState", "Clock", "model_config_for", "shard_plan"]

# Holdout batches the evidence check measures updates on: enough to make a loss difference of a
# hundredth of a nat meaningful, few enough to cost milliseconds on the `tiny` preset.
HOLDOUT_BATCHES = 4
# The unit's own micro-batches it is measured on (spread over its steps, the last one included).
OWN_BATCHES = 8
# Codecs whose decoded update is far from θ_end − θ_v (sparse, or two levels or fewer per sign).
SPARSE_CODECS = frozenset({"topk", "dct", "int2", "sign1"})
# Batches of the neighbouring training tokens the fit to the unit's own data is measured against.
NEAR_BATCHES = 8
# Judged results the campaign's error rate is measured over (adaptive replication).
RESULT_WINDOW = 200

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
        blobs: Blobs,
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
        # θ_v as the outer optimizer keeps it, and θ'_v as published: the checkpoint volunteers rebuild
        # from deltas (protocol.md, checkpoint deltas). They differ by what the lossy deltas left out.
        self.params: dict[str, torch.Tensor] = {}
        self.published: dict[str, torch.Tensor] = {}
        self.outer: OuterOptimizer = make_outer_optimizer(
            self.spec.outer.optimizer, lr=self.spec.outer.lr, momentum=self.spec.outer.momentum
        )
        self.cohort = CohortStats()
        self.round: RoundState | None = None
        self.version_row: VersionRow | None = None
        self.close_due: CloseReason | None = None  # why the open round should close, once a commit decided it
        # (holder, epoch) of the campaign lease this process aggregates under, when replicas share the store:
        # every change is made in a transaction that checks it (`CampaignRuntime`), so a stale leader can't.
        self.lease: tuple[str, int] | None = None
        self.on_version: Callable[[CampaignRuntime, VersionRow], None] | None = None
        self._probe: LossProbe | None = None
        self._thetas: dict[int, dict[str, torch.Tensor]] = {}  # older versions' weights, for late updates
        self._holdout: list[Batch] | None = None
        self._holdout_losses: dict[int, float] = {}
        self.recent_results: deque[bool] = deque(maxlen=RESULT_WINDOW)  # True: a result judged bad
        self.checks: CheckFarm | None = None  # forward-only volunteers' holdout checks (set by the service)
        self._tokenizer_blob: tuple[str, int] | None = None
        self.held_checks: dict[str, str | None] = {}  # unit id -> digest of θ_v − η·Δ, updates awaiting a check

    def refresh(self) -> CampaignRow:
        row = self.store.campaign(self.row.id)
        assert row is not None
        self.row = row
        return row

    def round_number(self, round_id: int) -> int:
        row = self.store.round(round_id)
        return row.number if row else 1

    def global_step(self, unit: UnitRow) -> int:
        """The inner step the unit's learning-rate schedule starts at: its round's, or for a replica its
        original's (made in a later round, it must still train exactly as its twin did)."""
        original = self.store.unit(unit.replica_of) if unit.replica_of is not None else None
        return (self.round_number((original or unit).round_id) - 1) * self.spec.inner.steps

    def twin_id(self, unit: UnitRow) -> str | None:
        """The other unit of a replicated pair, if `unit` is one."""
        if unit.replica_of is not None:
            return unit.replica_of
        replica = self.store.replica_of(unit.id)
        return replica.id if replica is not None else None

    def live_submission(self, unit_id: str) -> SubmissionRow | None:
        """The unit's submission that still counts (accepted or waiting for its replica), if any."""
        return next(
            (sub for sub in self.store.submissions_for_unit(unit_id) if sub.status != SubmissionStatus.REJECTED), None
        )

    def sources_of(self, volunteer_id: str) -> set[str]:
        """The network prefixes a volunteer was seen from (at registration, at its latest hello)."""
        volunteer = self.store.volunteer(volunteer_id)
        return {p for p in (volunteer.source, volunteer.last_source) if p} if volunteer else set()

    @property
    def error_rate(self) -> float:
        """Share of the campaign's recently judged results that were bad computation."""
        return sum(self.recent_results) / len(self.recent_results) if self.recent_results else 0.0

    @property
    def privacy_terms(self) -> tuple[float, float] | None:
        """(clip norm C, noise standard deviation z·2C) of a campaign on volunteers' own data; else None."""
        if not self.spec.private:
            return None
        clip = self.spec.privacy.clip_norm
        return clip, self.spec.privacy.noise_multiplier * 2 * clip

    def tokenizer_blob(self) -> tuple[str, int]:
        """The dataset's tokenizer as a blob (sha256, size), for units on volunteers' own data."""
        if self._tokenizer_blob is None:
            data = (self.dataset.root / TOKENIZER_NAME).read_bytes()
            self._tokenizer_blob = (self.blobs.put(data), len(data))
        return self._tokenizer_blob

    def privacy_releases_left(self, volunteer_id: str) -> int | None:
        """How many more updates this volunteer may send a campaign on volunteers' own data before its
        ε budget is spent (its submissions and the leases it holds counted); None: no limit."""
        privacy = self.spec.privacy
        if privacy.epsilon_budget is None:
            return None
        allowed = releases_within(privacy.epsilon_budget, privacy.delta, privacy.noise_multiplier)
        assert allowed is not None
        sent = self.store.release_counts(self.row.id, volunteer_id).get(volunteer_id, 0)
        return max(0, allowed - sent - self.store.leases_held(self.row.id, volunteer_id))

    def should_replicate(self, trust: TrustState) -> bool:
        """Whether a new unit for a volunteer of this trust also goes to a second volunteer.

        Adaptive, like BOINC's: the campaign's base rate rises to twice its measured error rate when
        more results than that turn out bad, and the volunteer's own trust raises it further (always
        replicated while new). A base rate of 0 turns replication off.
        """
        rate = self.spec.validation.replication_rate
        if rate <= 0 or self.spec.private:  # nobody else holds a volunteer's own data
            return False
        return self.trust.should_replicate(trust, min(1.0, max(rate, 2 * self.error_rate)), self.rng)

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
        evidence: UnitEvidence | None = None,
    ) -> Candidate:
        version = self.store.version(self.row.id, unit.version)
        global_step = self.global_step(unit)
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
            norm_scale=sum(unit_learning_rate(self.inner_config, global_step, i) for i in range(self.spec.inner.steps)),
            known_norm=norm,
            evidence=evidence,
            privacy=self.privacy_terms,
        )

    def credit(self, unit: UnitRow) -> float:
        """Credit in TFLOPs of training work (6 × trained parameters × tokens), like BOINC's cobblestones.

        The tokens are the unit's, never the volunteer's report: credit pays for what the coordinator
        handed out and has evidence was done.
        """
        return 6.0 * self.shard_params[unit.shard_index] * self.spec.inner.tokens_per_unit / 1e12

    # -- evidence (EvidenceCheck) --------------------------------------------------------------------

    @property
    def measures_updates(self) -> bool:
        """Whether updates are ever measured with the model (`holdout_check_rate` above 0)."""
        return self.spec.validation.holdout_check_rate > 0

    def wants_evidence(self, volunteer_id: str) -> bool:
        """Whether this volunteer's update is measured with the model: always before it is trusted,
        a sample of `holdout_check_rate` after; never when that rate is 0."""
        rate = self.spec.validation.holdout_check_rate
        if not self.measures_updates:
            return False  # turned off: a campaign of vetted volunteers, or a throughput benchmark
        volunteer = self.store.volunteer(volunteer_id)
        trust = TrustState(volunteer.consecutive_valid, volunteer.errors) if volunteer else TrustState()
        return not self.trust.trusted(trust) or self.rng.random() < rate

    def wants_check(self, volunteer_id: str) -> bool:
        """Whether an update the coordinator did not measure waits for volunteers' holdout check
        (`check_rate` of them, while volunteers who can check it are connected)."""
        rate = self.spec.validation.check_rate
        # A noised update's step raises the holdout loss by the noise's own share, which only a comparison
        # with a step along fresh noise (EvidenceCheck, here) tells apart: no volunteers' checks for those.
        if self.spec.private:
            return False
        if self.checks is None or rate <= 0 or not self.checks.wants(self.row.id, volunteer_id):
            return False
        return self.rng.random() < rate

    def evidence(self, unit: UnitRow) -> UnitEvidence | None:
        """What the evidence check measures `unit`'s update with; None when the holdout is too small."""
        holdout = self._holdout_batches()
        if not holdout:
            return None
        if self._probe is None:
            self._probe = LossProbe(self.model_config)
        theta = self.theta(unit.version)
        loss = self._holdout_losses.get(unit.version)
        if loss is None:
            loss = self._holdout_losses[unit.version] = self._probe.loss(theta, holdout, key=unit.version)
            for old in sorted(self._holdout_losses)[: -(self.spec.rounds.staleness_bound + 2)]:
                del self._holdout_losses[old]
        inner = self.spec.inner
        if self.spec.private:  # no batches of the volunteer's data here: the holdout descent alone
            noise = self.privacy_terms[1] if self.privacy_terms else 0.0
            return UnitEvidence(self._probe, unit.version, theta, (), (), (), (), holdout, loss, noise_std=noise)
        tokens = np.frombuffer(self.blobs.get(unit.data_sha), dtype=self.data_dtype())
        micro = list(sequence_batches(tokens.astype(np.int64), inner.batch_size, inner.seq_len))
        micro = micro[: inner.steps * inner.grad_accum]
        count = min(OWN_BATCHES, len(micro))
        picks = [round(i * (len(micro) - 1) / max(1, count - 1)) for i in range(count)]
        # A sparse codec's decoded update is far from θ_end − θ_v: the losses it gives aren't comparable.
        dense = self.spec.codec.name not in SPARSE_CODECS
        return UnitEvidence(
            self._probe,
            unit.version,
            theta,
            first=micro[: inner.grad_accum],
            own=[micro[i] for i in picks],
            own_steps=[i // inner.grad_accum for i in picks] if dense else [],
            near=self._neighbours(unit),
            holdout=holdout,
            holdout_loss=loss,
        )

    def _neighbours(self, unit: UnitRow) -> list[Batch]:
        """Up to NEAR_BATCHES batches of the training tokens right before and right after the unit's
        slice, half on each side where the data allows."""
        inner = self.spec.inner
        b, t = inner.batch_size, inner.seq_len
        span = b * t
        end = unit.data_start + unit.data_tokens - 1  # the first token past the slice's inputs
        room_before = unit.data_start // span
        room_after = max(0, (self.dataset.num_train_tokens - end - 1) // span)
        after = min(NEAR_BATCHES - min(NEAR_BATCHES // 2, room_before), room_after)
        before = min(NEAR_BATCHES - after, room_before)
        batches: list[Batch] = []
        if before:
            tokens = self.dataset.train_slice(unit.data_start - before * span, before * span + 1)
            batches += sequence_batches(tokens, b, t)
        if after:
            batches += sequence_batches(self.dataset.train_slice(end, after * span + 1), b, t)
        return batches

    def theta(self, version: int) -> dict[str, torch.Tensor]:
        """θ' of a recent version, the weights volunteers train from: the current one in memory, older
        ones loaded once and kept while updates against them can still count."""
        if version == self.row.current_version and self.published:
            return self.published
        cached = self._thetas.get(version)
        if cached is None:
            row = self.store.version(self.row.id, version)
            if row is None:
                raise KeyError(f"campaign {self.row.name} has no version {version}")
            cached = self._thetas[version] = load_weights(self.blobs.get(row.checkpoint_sha), self.shapes)
            for old in sorted(self._thetas)[: -(self.spec.rounds.staleness_bound + 1)]:
                del self._thetas[old]
        return cached

    def _holdout_batches(self) -> list[Batch]:
        if self._holdout is None:
            inner = self.spec.inner
            span = inner.batch_size * inner.seq_len
            count = min(HOLDOUT_BATCHES, (self.dataset.num_holdout_tokens - 1) // span)
            tokens = self.dataset.holdout_slice(0, count * span + 1) if count > 0 else np.zeros(0, np.int64)
            self._holdout = list(sequence_batches(tokens, inner.batch_size, inner.seq_len)) if count > 0 else []
        return self._holdout

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
        before = TrustState(volunteer.consecutive_valid, volunteer.errors)
        trust = self.trust.update(before, accepted, code)
        if trust != before or accepted:
            self.recent_results.append(not accepted)  # blameless rejections (stale, closed) don't count
        self.store.record_outcome(volunteer_id, accepted=accepted, credit=credit, tokens=tokens, trust=trust.to_dict())

    def count_rejection(self, code: str) -> None:
        self.counters.rejected[code] = self.counters.rejected.get(code, 0) + 1
