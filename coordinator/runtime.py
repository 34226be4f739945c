"""One live campaign on the coordinator: θ_v, the open round, leases, submissions, aggregation.

    >>> runtime = CampaignRuntime.load(store, blobs, campaign_id)
    >>> assignment = runtime.lease(volunteer, memory_bytes=8 << 30)   # or a NoWork with a reason
    >>> outcome = runtime.submit(volunteer_id, unit_id, lease_id, payload, report)

The flow of an update: lease check → staleness → decode (sizes checked before allocation) →
validation pipeline → durable write of the update blob and the submission row → ack → streaming
accumulation. A round closes when `min_accepted` updates are in, or at its deadline; closing
applies the outer optimizer, writes θ_{v+1} and the optimizer state as blobs, and then publishes
the version and closes the round in one transaction.

Recovery: everything in memory here is derived. On load, θ_v and the outer optimizer come from
the latest version's blobs, and the open round's accumulator is rebuilt from its accepted,
not-yet-applied submissions, so a coordinator killed at any instant loses no acknowledged update
and applies none twice.
"""

from __future__ import annotations

import itertools
import math
import random
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from coordinator.blobs import BlobStore, sha256_hex
from coordinator.campaign import CampaignSpec
from coordinator.store import CampaignRow, RoundRow, Store, UnitRow, VersionRow
from coordinator.validation import (
    Candidate,
    CohortStats,
    TrustState,
    TrustTracker,
    ValidationPipeline,
    compare_replicas,
    global_norm,
)
from protocol.codecs import CodecError, decode, encoded_size_bound
from protocol.tensors import TensorSpec
from training.accumulator import DeltaAccumulator, staleness_weight
from training.checkpoint import load_state, load_weights, save_state, save_weights
from training.data import TokenDataset
from training.inner import InnerConfig, learning_rate
from training.model import ModelConfig, build_model, parameter_groups, preset
from training.outer import OuterOptimizer, make_outer_optimizer

__all__ = [
    "Assignment",
    "CampaignRuntime",
    "NoWork",
    "Outcome",
    "PreparedUpdate",
    "SubmissionReport",
    "initial_version",
    "shard_plan",
]

Clock = Callable[[], float]

LEASE_EXPIRED_MESSAGE = (
    "the lease on this unit expired before the result arrived and the unit was issued again; "
    "a result must arrive within the lease (progress reports extend it)"
)

# Decoding failures that are really validation verdicts: the frame was well formed but its tensors
# don't fit the unit, or hold values no honest training produces.
CODEC_REJECTIONS = {
    "shape_mismatch": "shape_mismatch",
    "name_mismatch": "shape_mismatch",
    "count_mismatch": "shape_mismatch",
    "dtype_mismatch": "shape_mismatch",
    "non_finite_value": "non_finite",
    "non_finite_scale": "non_finite",
    "oversized": "update_too_large",
}


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


@dataclass(frozen=True)
class NoWork:
    reason: str
    retry_after_s: float = 5.0


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
    nothing was stored or decoded, and `commit` answers with the lease verdict.
    """

    unit: UnitRow | None
    sha256: str
    size: int
    delta: dict[str, torch.Tensor] | None = None
    norm: float | None = None
    error: CodecError | None = None

    @property
    def stored(self) -> bool:
        return self.delta is not None or self.error is not None


@dataclass(frozen=True)
class Outcome:
    status: str  # accepted | rejected | duplicate | pending
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


def initial_version(spec: CampaignSpec, dataset: TokenDataset) -> tuple[bytes, bytes]:
    """θ_0 and the empty optimizer state for a new campaign, as blobs."""
    config = model_config_for(spec, dataset)
    model = build_model(config, seed=spec.seed)
    return save_weights(dict(model.named_parameters())), save_state({"outer": {}, "cohort": {}})


def model_config_for(spec: CampaignSpec, dataset: TokenDataset) -> ModelConfig:
    return preset(spec.model, vocab_size=dataset.vocab_size, max_seq_len=spec.inner.seq_len)


def estimate_training_bytes(config: ModelConfig, shard_params: int, total_params: int, spec: CampaignSpec) -> int:
    """Rough peak memory to train a shard: fp32 weights, grads + AdamW moments + θ_start for the
    shard, and activations of one micro-batch (about 34·d per token per layer plus the logits)."""
    tokens = spec.inner.batch_size * spec.inner.seq_len
    activations = tokens * (34 * config.d_model * config.n_layer + 3 * config.vocab_size) * 4
    return 4 * total_params + 16 * shard_params + activations


class CampaignRuntime:
    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        row: CampaignRow,
        dataset: TokenDataset,
        *,
        clock: Clock = time.time,
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
        self.close_due: str | None = None  # why the open round should close, once a commit decided it
        self.on_version: Callable[[CampaignRuntime, VersionRow], None] | None = None

    @property
    def inner_config(self) -> InnerConfig:
        """The inner loop every unit of this campaign runs (the schedule spans the whole budget)."""
        inner = self.spec.inner
        return InnerConfig(
            steps=inner.steps,
            batch_size=inner.batch_size,
            seq_len=inner.seq_len,
            grad_accum=inner.grad_accum,
            lr=inner.lr,
            min_lr_ratio=inner.min_lr_ratio,
            warmup_steps=inner.warmup_steps,
            total_steps=self.spec.schedule_steps,
            weight_decay=inner.weight_decay,
            grad_clip=inner.grad_clip,
            beta1=inner.beta1,
            beta2=inner.beta2,
        )

    # loading and recovery ------------------------------------------------------------------

    @classmethod
    def load(cls, store: Store, blobs: BlobStore, campaign_id: int, **kwargs: Any) -> CampaignRuntime:
        row = store.campaign(campaign_id)
        if row is None:
            raise KeyError(f"no campaign {campaign_id}")
        runtime = cls(store, blobs, row, TokenDataset.open(Path(row.dataset_path)), **kwargs)
        runtime.restore()
        return runtime

    def restore(self) -> None:
        row = self.refresh()
        version = self.store.version(row.id, row.current_version)
        if version is None:
            raise RuntimeError(f"campaign {row.name} has no version {row.current_version}")
        self.version_row = version
        self.params = load_weights(self.blobs.get(version.checkpoint_sha), self.shapes)
        state = load_state(self.blobs.get(version.state_sha))
        if state.get("outer"):
            self.outer.load_state_dict(state["outer"])
        if state.get("cohort"):
            self.cohort.load_state_dict(state["cohort"])
        open_round = self.store.open_round_of(row.id)
        if open_round is not None:
            self.round = self._round_state(open_round)
            for sub in self.store.submissions(round_id=open_round.id, statuses=("accepted",), applied=False):
                unit = self.store.unit(sub.unit_id)
                assert unit is not None
                delta = self._decode(self.blobs.get(sub.update_sha), unit.shard)
                self.round.accumulator.add(delta, weight=sub.weight)
                self.round.accepted += 1
                self.round.tokens += sub.tokens
                self.cohort.record(self._candidate(unit, delta, sub.losses, sub.tokens))

    def refresh(self) -> CampaignRow:
        row = self.store.campaign(self.row.id)
        assert row is not None
        self.row = row
        return row

    def _round_state(self, row: RoundRow) -> RoundState:
        units = self.store.units(self.row.id, ("pending", "leased", "done", "cancelled"), round_id=row.id)
        primaries = sum(1 for u in units if u.replica_of is None)  # replicas don't count against the quota
        return RoundState(row, DeltaAccumulator(self.shapes), units_created=primaries)

    def _twin_id(self, unit: UnitRow) -> str | None:
        """The other unit of a replicated pair, if `unit` is one."""
        if unit.replica_of is not None:
            return unit.replica_of
        replica = self.store.replica_of(unit.id)
        return replica.id if replica is not None else None

    # scheduling ----------------------------------------------------------------------------

    def ensure_round(self) -> RoundState | None:
        """Open the next round when none is open and the budget allows; finish the campaign when not."""
        row = self.refresh()
        if self.round is not None or row.status != "active":
            return self.round
        if row.rounds_closed >= self.spec.total_rounds:
            self.store.set_campaign_status(row.id, "finished")
            self.refresh()
            return None
        deadline = self.clock() + self.spec.rounds.deadline_s
        round_id = self.store.open_round(row.id, row.rounds_closed + 1, row.current_version, deadline, [])
        opened = self.store.round(round_id)
        assert opened is not None
        self.round = RoundState(opened, DeltaAccumulator(self.shapes))
        return self.round

    def lease(self, volunteer_id: str, *, memory_bytes: int, trust: TrustState | None = None) -> Assignment | NoWork:
        with self.lock:
            return self._lease(volunteer_id, memory_bytes=memory_bytes, trust=trust or TrustState(0, 0))

    def _lease(self, volunteer_id: str, *, memory_bytes: int, trust: TrustState) -> Assignment | NoWork:
        row = self.refresh()
        if row.status != "active":
            return NoWork(f"campaign {row.name} is {row.status}", retry_after_s=30)
        state = self.ensure_round()
        if state is None:
            return NoWork(f"campaign {row.name} has finished its token budget", retry_after_s=60)
        fits = [i for i, n in enumerate(self.shard_params) if self._fits(n, memory_bytes)]
        if not fits:
            need = min(
                estimate_training_bytes(self.model_config, n, self.total_params, self.spec) for n in self.shard_params
            )
            return NoWork(
                f"campaign {row.name} needs about {need / 2**20:.0f} MiB to train its smallest shard; "
                f"this volunteer allows {memory_bytes / 2**20:.0f} MiB",
                retry_after_s=300,
            )
        now = self.clock()
        refused = 0  # pending units this volunteer may not take because it already answered them
        for unit in self.store.units(row.id, ("pending",)):
            if unit.shard_index not in fits or unit.round_id != state.row.id:
                continue
            if self.store.submission(unit.id, volunteer_id) is not None:
                refused += 1  # it already answered this unit (perhaps badly): someone else takes it
                continue
            twin_id = self._twin_id(unit)
            if twin_id is not None:
                twin = self.store.unit(twin_id)
                if twin is not None and twin.volunteer_id == volunteer_id:
                    continue  # a replica must be computed by somebody else
                if twin is not None and self.store.submission(twin.id, volunteer_id) is not None:
                    continue
            return self._grant(unit, volunteer_id, now)
        # A unit whose update was rejected waits for another volunteer; until one comes, it doesn't
        # count against the round's quota, or a campaign with a single volunteer would stall.
        if state.units_created >= self.spec.rounds.units_per_round + refused:
            return NoWork("every unit of the current round is out; waiting for results", retry_after_s=2)
        unit = self._new_unit(state, fits[state.units_created % len(fits)])
        rate = self.spec.validation.replication_rate
        if rate > 0 and self.trust.should_replicate(trust, rate, self.rng):  # rate 0: replication off
            self._new_unit(state, unit.shard_index, replica_of=unit)
        return self._grant(unit, volunteer_id, now)

    def _fits(self, shard_params: int, memory_bytes: int) -> bool:
        return estimate_training_bytes(self.model_config, shard_params, self.total_params, self.spec) <= memory_bytes

    def _new_unit(self, state: RoundState, shard_index: int, *, replica_of: UnitRow | None = None) -> UnitRow:
        row = self.refresh()
        if replica_of is None:
            length = self.spec.inner.steps * self.spec.inner.grad_accum * self.spec.inner.batch_size
            length = length * self.spec.inner.seq_len + 1
            start, epoch = row.data_cursor, row.epoch
            if start + length > self.dataset.num_train_tokens:
                start, epoch = 0, epoch + 1  # a new epoch: slices repeat from the beginning
            tokens = self.dataset.train_slice(start, length)
            blob = np.ascontiguousarray(tokens.astype(self._data_dtype())).tobytes()
            data_sha = self.blobs.put(blob)
            values = {
                "id": uuid.uuid4().hex,
                "data_start": start,
                "data_tokens": length,
                "data_sha": data_sha,
                "shard_index": shard_index,
                "shard": self.shards[shard_index],
                "seed": (self.spec.seed * 1_000_003 + state.row.number * 10_007 + state.units_created) % 2**31,
            }
            with self.store.transaction():
                self.store.insert_unit(row.id, state.row.id, state.row.version, values, self.clock())
                self.store.advance_data_cursor(row.id, start + length - 1, epoch)
            state.units_created += 1
        else:
            values = {
                "id": uuid.uuid4().hex,
                "data_start": replica_of.data_start,
                "data_tokens": replica_of.data_tokens,
                "data_sha": replica_of.data_sha,
                "shard_index": replica_of.shard_index,
                "shard": replica_of.shard,
                "seed": replica_of.seed,
                "replica_of": replica_of.id,
            }
            with self.store.transaction():
                self.store.insert_unit(row.id, state.row.id, state.row.version, values, self.clock())
        unit = self.store.unit(str(values["id"]))
        assert unit is not None
        return unit

    def _data_dtype(self) -> str:
        return "uint16" if self.dataset.vocab_size <= 65536 else "uint32"

    def _grant(self, unit: UnitRow, volunteer_id: str, now: float) -> Assignment:
        lease_id = secrets.token_hex(8)
        deadline = now + self.spec.rounds.lease_s
        self.store.lease(unit.id, volunteer_id, lease_id, deadline)
        self.counters.leased += 1
        leased = self.store.unit(unit.id)
        version = self.store.version(self.row.id, unit.version)
        assert leased is not None and version is not None
        shapes = {n: self.shapes[n] for n in unit.shard}
        specs = {n: TensorSpec(s) for n, s in shapes.items()}
        return Assignment(
            unit=leased,
            lease_id=lease_id,
            lease_deadline=deadline,
            campaign=self.row,
            spec=self.spec,
            model_config=self.model_config,
            checkpoint=version,
            data_size=self.blobs.size(unit.data_sha),
            data_dtype=self._data_dtype(),
            shard_shapes=shapes,
            global_step=(self._round_number(unit.round_id) - 1) * self.spec.inner.steps,
            inner=self.inner_config,
            max_update_bytes=encoded_size_bound(specs, self.spec.codec),
        )

    def _round_number(self, round_id: int) -> int:
        row = self.store.round(round_id)
        return row.number if row else 1

    def heartbeat(self, volunteer_id: str, unit_id: str, lease_id: str) -> float | tuple[str, str]:
        """Extend a lease on progress: the new deadline, or the (code, message) of why not."""
        unit = self.store.unit(unit_id)
        if unit is None or unit.campaign_id != self.row.id:
            return ("unknown_unit", f"no work unit {unit_id} in campaign {self.row.name}")
        problem = self.lease_problem(unit, volunteer_id, lease_id)
        if problem is not None:
            return problem
        deadline = self.clock() + self.spec.rounds.lease_s
        if not self.store.extend_lease(unit.id, lease_id, deadline):
            return ("lease_expired", LEASE_EXPIRED_MESSAGE)  # it expired a moment ago
        return deadline

    def lease_problem(self, unit: UnitRow, volunteer_id: str, lease_id: str) -> tuple[str, str] | None:
        """Why `lease_id` does not let this volunteer work on `unit` now, as (code, message); None if it does.

        A lease of this volunteer's whose deadline passed is `lease_expired` while the unit waits to be
        issued again; once a newer lease replaced it, or for a lease the volunteer never held (another
        volunteer's, or one never granted), the answer is `not_your_lease`.
        """
        if unit.state == "leased" and unit.lease_id == lease_id and unit.volunteer_id == volunteer_id:
            return None
        if self.store.lease_holder(unit.id, lease_id) == volunteer_id and unit.state != "leased":
            return ("lease_expired", LEASE_EXPIRED_MESSAGE)
        if self.store.lease_holder(unit.id, lease_id) == volunteer_id:
            return ("not_your_lease", "this lease expired and the unit was issued again under a newer lease")
        return ("not_your_lease", "this volunteer holds no lease with this id on this unit")

    def abandon(self, volunteer_id: str, unit_id: str, lease_id: str) -> None:
        """The volunteer gave the unit back: issue it again now rather than at lease expiry."""
        unit = self.store.unit(unit_id)
        if unit is not None and unit.volunteer_id == volunteer_id and unit.lease_id == lease_id:
            with self.store.transaction():
                self.store.release_unit(unit_id)

    # submissions ---------------------------------------------------------------------------

    def submit(
        self, volunteer_id: str, unit_id: str, lease_id: str, payload: bytes, report: SubmissionReport
    ) -> Outcome:
        """Judge one submission from start to end (`prepare`, `commit`, and the round's close at quorum)."""
        outcome = self.commit(volunteer_id, lease_id, self.prepare(volunteer_id, unit_id, lease_id, payload), report)
        self.close_if_due()
        return outcome

    def prepare(self, volunteer_id: str, unit_id: str, lease_id: str, payload: bytes) -> PreparedUpdate:
        """Store and decode an update without the campaign's lock, so several threads can do it at once.

        Only a submission that may still count gets this work: the unit's current lease, or a resend of
        an update this volunteer already submitted (its first verdict is answered again).
        """
        sha = sha256_hex(payload)
        unit = self.store.unit(unit_id)
        if unit is None or unit.campaign_id != self.row.id:
            return PreparedUpdate(None, sha, len(payload))
        holds_lease = unit.state == "leased" and unit.lease_id == lease_id and unit.volunteer_id == volunteer_id
        if not holds_lease or self.store.submission(unit_id, volunteer_id) is not None:
            return PreparedUpdate(unit, sha, len(payload))
        self.counters.bytes_in += len(payload)
        self.blobs.put(payload)  # durable before any row points at it
        try:
            delta = self._decode(payload, unit.shard)
        except CodecError as error:
            return PreparedUpdate(unit, sha, len(payload), error=error)
        return PreparedUpdate(unit, sha, len(payload), delta, global_norm(delta))

    def commit(self, volunteer_id: str, lease_id: str, prepared: PreparedUpdate, report: SubmissionReport) -> Outcome:
        """The ordered half of a submission, under the campaign's lock: the lease and idempotency
        rules, validation against the cohort, the durable verdict, accumulation, and at quorum the
        round's close."""
        with self.lock:
            return self._commit(volunteer_id, lease_id, prepared, report)

    def _commit(self, volunteer_id: str, lease_id: str, prepared: PreparedUpdate, report: SubmissionReport) -> Outcome:
        if prepared.unit is None:
            return Outcome("rejected", "unknown_unit", f"no work unit in campaign {self.row.name} has this id")
        unit = self.store.unit(prepared.unit.id)
        assert unit is not None
        unit_id = unit.id
        previous = self.store.submission(unit_id, volunteer_id)
        if previous is not None:
            # Idempotent: resending the same update (lost ack, reconnect) gets the first answer again
            # and changes nothing; a different update for the same unit is a duplicate and ignored.
            if previous.update_sha != prepared.sha256:
                return Outcome(
                    "duplicate",
                    "duplicate_submission",
                    f"a different update for this unit was already received: {previous.message}",
                )
            status = "rejected" if previous.status == "rejected" else "accepted"
            return Outcome(status, previous.code, previous.message, previous.credit)
        problem = self.lease_problem(unit, volunteer_id, lease_id)
        if problem is not None:
            return Outcome("rejected", problem[0], problem[1])
        if not prepared.stored:  # the lease changed hands between prepare and commit
            return Outcome("rejected", "lease_expired", LEASE_EXPIRED_MESSAGE)
        staleness = self.row.current_version - unit.version
        weight = staleness_weight(staleness, self.spec.rounds.staleness_bound) * report.tokens
        if staleness > self.spec.rounds.staleness_bound:
            return self._reject(
                unit,
                volunteer_id,
                prepared,
                report,
                "stale_update",
                f"the update was computed against version {unit.version}, {staleness} versions behind "
                f"the current {self.row.current_version} (limit {self.spec.rounds.staleness_bound})",
            )
        if prepared.error is not None:
            error = prepared.error
            if error.code in CODEC_REJECTIONS:
                return self._reject(unit, volunteer_id, prepared, report, CODEC_REJECTIONS[error.code], str(error))
            return self._reject(
                unit, volunteer_id, prepared, report, "bad_encoding", f"the update could not be decoded: {error}"
            )
        delta = prepared.delta
        assert delta is not None
        candidate = self._candidate(unit, delta, report.losses, report.tokens, norm=prepared.norm)
        verdict = self.pipeline.validate(candidate, self.cohort)
        if not verdict.accepted:
            return self._reject(unit, volunteer_id, prepared, report, str(verdict.code), verdict.message)
        norm = candidate.norm
        twin_id = self._twin_id(unit)
        if twin_id is not None:
            twin_sub = self.store.submission_for_unit(twin_id)
            if twin_sub is None or twin_sub.status == "rejected":
                return self._hold_for_replica(unit, volunteer_id, prepared, report, norm, staleness, weight)
            if twin_sub.status == "pending_replica":
                twin_unit = self.store.unit(twin_id)
                assert twin_unit is not None
                comparison = compare_replicas(
                    delta,
                    self._decode(self.blobs.get(twin_sub.update_sha), twin_unit.shard),
                    rtol=self.spec.validation.replication_rtol,
                )
                if not comparison.accepted:
                    with self.store.transaction():
                        self.store.update_submission(
                            twin_sub.id, status="rejected", code=comparison.code, message=comparison.message
                        )
                        self._judge(twin_sub.volunteer_id, accepted=False, code=comparison.code)
                    self._count_rejection(str(comparison.code))
                    return self._reject(unit, volunteer_id, prepared, report, str(comparison.code), comparison.message)
                # Both agree: credit the twin now; the update enters the average once (this copy).
                with self.store.transaction():
                    credit = self._credit(unit, report.tokens)
                    self.store.update_submission(
                        twin_sub.id,
                        status="accepted",
                        code=None,
                        message="accepted: matched its replica",
                        credit=credit,
                        weight=0.0,
                        round_id=None,
                    )
                    self._judge(twin_sub.volunteer_id, accepted=True, credit=credit, tokens=twin_sub.tokens)
            else:
                weight = 0.0  # the twin was accepted unreplicated at a round close: don't count it twice
        return self._accept(unit, volunteer_id, prepared, report, candidate, staleness, weight)

    def _candidate(
        self,
        unit: UnitRow,
        delta: dict[str, torch.Tensor],
        losses: list[float],
        tokens: int,
        *,
        norm: float | None = None,
    ) -> Candidate:
        version = self.store.version(self.row.id, unit.version)
        global_step = (self._round_number(unit.round_id) - 1) * self.spec.inner.steps
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

    def _decode(self, payload: bytes, shard: list[str]) -> dict[str, torch.Tensor]:
        specs = {n: TensorSpec(self.shapes[n]) for n in shard}
        return decode(payload, specs, max_bytes=encoded_size_bound(specs, self.spec.codec), config=self.spec.codec)

    def _credit(self, unit: UnitRow, tokens: int) -> float:
        """Credit in TFLOPs of training work (6 × trained parameters × tokens), like BOINC's cobblestones."""
        return 6.0 * self.shard_params[unit.shard_index] * tokens / 1e12

    def _store_submission(
        self, unit: UnitRow, volunteer_id: str, prepared: PreparedUpdate, report: SubmissionReport, **values: Any
    ) -> None:
        # `prepare` wrote the blob durably before this row points at it.
        self.store.add_submission(
            {
                "unit_id": unit.id,
                "volunteer_id": volunteer_id,
                "update_sha": prepared.sha256,
                "update_size": prepared.size,
                "tokens": report.tokens,
                "seconds": report.seconds,
                "losses": report.losses,
                "round_id": None,
                "staleness": 0,
                "weight": 0.0,
                "norm": None,
                "credit": 0.0,
                "code": None,
                **values,
            }
        )

    def _reject(
        self,
        unit: UnitRow,
        volunteer_id: str,
        prepared: PreparedUpdate,
        report: SubmissionReport,
        code: str,
        message: str,
    ) -> Outcome:
        with self.store.transaction():
            self._store_submission(unit, volunteer_id, prepared, report, status="rejected", code=code, message=message)
            self._judge(volunteer_id, accepted=False, code=code)
            self.store.release_unit(unit.id)  # the slice still needs training: issue it again
        self._count_rejection(code)
        return Outcome("rejected", code, message)

    def _judge(
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

    def _count_rejection(self, code: str) -> None:
        self.counters.rejected[code] = self.counters.rejected.get(code, 0) + 1

    def _hold_for_replica(
        self,
        unit: UnitRow,
        volunteer_id: str,
        prepared: PreparedUpdate,
        report: SubmissionReport,
        norm: float,
        staleness: int,
        weight: float,
    ) -> Outcome:
        assert self.round is not None
        with self.store.transaction():
            self._store_submission(
                unit,
                volunteer_id,
                prepared,
                report,
                status="pending_replica",
                message="valid; waiting for its replica to be compared",
                round_id=self.round.row.id,
                norm=norm,
                staleness=staleness,
                weight=weight,
            )
            self.store.set_unit_state(unit.id, "done")
        return Outcome("accepted", None, "valid; credit follows once its replica agrees (or the round closes)")

    def _accept(
        self,
        unit: UnitRow,
        volunteer_id: str,
        prepared: PreparedUpdate,
        report: SubmissionReport,
        candidate: Candidate,
        staleness: int,
        weight: float,
    ) -> Outcome:
        state = self.round or self.ensure_round()
        if state is None:
            return Outcome("rejected", "campaign_closed", f"campaign {self.row.name} is no longer training")
        credit = self._credit(unit, report.tokens)
        with self.store.transaction():
            self._store_submission(
                unit,
                volunteer_id,
                prepared,
                report,
                status="accepted",
                message="accepted",
                round_id=state.row.id,
                norm=candidate.norm,
                staleness=staleness,
                weight=weight,
                credit=credit,
            )
            self.store.set_unit_state(unit.id, "done")
            self._judge(volunteer_id, accepted=True, credit=credit, tokens=report.tokens)
        # Durable from here: what follows is derived state that `restore` rebuilds.
        if weight > 0:
            state.accumulator.add(candidate.delta, weight=weight)
            state.accepted += 1
            state.tokens += report.tokens
        self.cohort.record(candidate)
        self.counters.accepted += 1
        closed = state.accepted >= self.spec.rounds.min_accepted
        if closed:
            self.close_due = "quorum"  # closed by `close_if_due`, outside the commit's transaction
        message = (
            "accepted"
            if staleness == 0
            else f"accepted, {staleness} version(s) late (weight ×{weight / report.tokens:.2f})"
        )
        return Outcome("accepted", None, message, credit, closed_round=closed)

    # rounds ----------------------------------------------------------------------------------

    def close_if_due(self) -> VersionRow | None:
        """Close the round if a commit reached its quorum. Apart from the commits, because a close is
        heavy (the outer step, a checkpoint written) and grouped commits hold the store's write lock."""
        with self.lock:
            if self.close_due is None or self.round is None:
                self.close_due = None
                return None
            reason, self.close_due = self.close_due, None
            return self.close_round(reason)

    def tick(self) -> None:
        """Periodic work: expire leases, close a round whose deadline passed."""
        self.close_if_due()
        with self.lock:
            self.store.expire_leases(self.clock())
            state = self.round
            if state is None or self.clock() < state.row.deadline:
                return
            pending = self.store.submissions(round_id=state.row.id, statuses=("pending_replica",))
            if state.accepted + len(pending) > 0:
                self.close_round("deadline")
            else:
                deadline = self.clock() + self.spec.rounds.deadline_s
                self.store.extend_round_deadline(state.row.id, deadline)
                refreshed = self.store.round(state.row.id)
                assert refreshed is not None
                state.row = refreshed

    def close_round(self, reason: str) -> VersionRow:
        with self.lock:
            state = self.round
            assert state is not None
            # Replicas that never came back: their original was validated, so it counts unreplicated.
            for sub in self.store.submissions(round_id=state.row.id, statuses=("pending_replica",)):
                unit = self.store.unit(sub.unit_id)
                assert unit is not None
                delta = self._decode(self.blobs.get(sub.update_sha), unit.shard)
                credit = self._credit(unit, sub.tokens)
                with self.store.transaction():
                    self.store.update_submission(
                        sub.id, status="accepted", message="accepted (replica did not return)", credit=credit
                    )
                    self._judge(sub.volunteer_id, accepted=True, credit=credit, tokens=sub.tokens)
                state.accumulator.add(delta, weight=sub.weight)
                state.accepted += 1
                state.tokens += sub.tokens
            new_version = self.row.current_version + 1
            if state.accumulator.contributions:
                self.outer.step(self.params, state.accumulator.mean())
            checkpoint = save_weights(self.params)
            checkpoint_sha = self.blobs.put(checkpoint)
            state_sha = self.blobs.put(
                save_state({"outer": self.outer.state_dict(), "cohort": self.cohort.state_dict()})
            )
            self.store.close_round(
                state.row.id,
                reason=reason,
                version=new_version,
                checkpoint=(checkpoint_sha, len(checkpoint)),
                state_sha=state_sha,
                updates=state.accepted,
                tokens=state.tokens,
            )
            self.counters.round_seconds.append(self.clock() - state.row.opened_at)
            self.round = None
            self.refresh()
            version = self.store.version(self.row.id, new_version)
            assert version is not None
            self.version_row = version
        if self.on_version is not None:
            self.on_version(self, version)
        self.ensure_round()
        return version

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of θ_v for readers on other threads (the holdout evaluator)."""
        with self.lock:
            return {n: t.clone() for n, t in self.params.items()}


def shard_plan(groups: list[list[str]], count: int) -> list[list[str]]:
    """Split parameter groups into `count` contiguous shards of about equal group count."""
    count = max(1, min(count, len(groups)))
    bounds = [round(i * len(groups) / count) for i in range(count + 1)]
    return [[name for group in groups[a:b] for name in group] for a, b in itertools.pairwise(bounds)]
