"""Handing out work: rounds, units, data slices, leases and the memory a unit needs.

    >>> assignment = scheduler.lease(volunteer_id, memory_bytes=8 << 30, trust=TrustState(0, 0))
    >>> scheduler.heartbeat(volunteer_id, unit_id, lease_id)       # the new deadline, or (code, why)

A round opens when none is open and the budget allows. Units are created on demand, one data slice
each (the campaign's cursor moves through the training tokens; a new epoch starts over), sized to
the volunteer's memory by shard; a unit of a volunteer not yet trusted gets a replica for somebody
else. Leases have deadlines that `progress` extends; an expired lease sends the unit back to the
pool. Every lease ever granted is remembered, so a stale lease is told apart from a made-up one.
"""

from __future__ import annotations

import secrets
import uuid

import numpy as np

from coordinator.engine.models import Assignment, NoWork, RoundState
from coordinator.engine.state import CampaignState
from coordinator.engine.states import CampaignStatus, UnitState
from coordinator.store import UnitRow
from coordinator.validation import TrustState
from protocol.codecs import encoded_size_bound
from protocol.tensors import TensorSpec
from training.accumulator import DeltaAccumulator
from training.model import ModelConfig

__all__ = ["LEASE_EXPIRED_MESSAGE", "Scheduler", "estimate_training_bytes"]

LEASE_EXPIRED_MESSAGE = (
    "the lease on this unit has ended (its deadline passed, or the unit was given back with abandon) "
    "and the unit is issued again; a result must arrive within the lease (progress reports extend it)"
)


def estimate_training_bytes(config: ModelConfig, shard_params: int, total_params: int, tokens: int) -> int:
    """Rough peak memory to train a shard: fp32 weights, grads + AdamW moments + θ_start for the
    shard, and activations of one micro-batch of `tokens` (about 34·d per token per layer plus the
    logits)."""
    activations = tokens * (34 * config.d_model * config.n_layer + 3 * config.vocab_size) * 4
    return 4 * total_params + 16 * shard_params + activations


class Scheduler:
    def __init__(self, state: CampaignState) -> None:
        self.state = state

    def ensure_round(self) -> RoundState | None:
        """Open the next round when none is open and the budget allows; finish the campaign when not."""
        s = self.state
        row = s.refresh()
        if s.round is not None or row.status != CampaignStatus.ACTIVE:
            return s.round
        if row.rounds_closed >= s.spec.total_rounds:
            s.store.set_campaign_status(row.id, CampaignStatus.FINISHED)
            s.refresh()
            return None
        deadline = s.clock() + s.spec.rounds.deadline_s
        round_id = s.store.open_round(row.id, row.rounds_closed + 1, row.current_version, deadline, [])
        opened = s.store.round(round_id)
        assert opened is not None
        s.round = RoundState(opened, DeltaAccumulator(s.shapes))
        return s.round

    def round_state(self, round_id: int) -> RoundState:
        """The running state of an open round read back from the store (after a restart)."""
        s = self.state
        row = s.store.round(round_id)
        assert row is not None
        units = s.store.units(s.row.id, tuple(UnitState), round_id=round_id)
        primaries = sum(1 for u in units if u.replica_of is None)  # replicas don't count against the quota
        return RoundState(row, DeltaAccumulator(s.shapes), units_created=primaries)

    def lease(self, volunteer_id: str, *, memory_bytes: int, trust: TrustState | None = None) -> Assignment | NoWork:
        with self.state.lock:
            return self._lease(volunteer_id, memory_bytes=memory_bytes, trust=trust or TrustState(0, 0))

    def _lease(self, volunteer_id: str, *, memory_bytes: int, trust: TrustState) -> Assignment | NoWork:
        s = self.state
        row = s.refresh()
        if row.status != CampaignStatus.ACTIVE:
            return NoWork(f"campaign {row.name} is {row.status}", retry_after_s=30)
        current = self.ensure_round()
        if current is None:
            return NoWork(f"campaign {row.name} has finished its token budget", retry_after_s=60)
        fits = [i for i, n in enumerate(s.shard_params) if self.memory_needed(n) <= memory_bytes]
        if not fits:
            need = min(self.memory_needed(n) for n in s.shard_params)
            return NoWork(
                f"campaign {row.name} needs about {need / 2**20:.0f} MiB to train its smallest shard; "
                f"this volunteer allows {memory_bytes / 2**20:.0f} MiB",
                retry_after_s=300,
            )
        now = s.clock()
        refused = 0  # pending units this volunteer may not take because it already answered them
        for unit in s.store.units(row.id, (UnitState.PENDING,)):
            if unit.shard_index not in fits or unit.round_id != current.row.id:
                continue
            if s.store.submission(unit.id, volunteer_id) is not None:
                refused += 1  # it already answered this unit (perhaps badly): someone else takes it
                continue
            twin_id = s.twin_id(unit)
            if twin_id is not None:
                twin = s.store.unit(twin_id)
                if twin is not None and twin.volunteer_id == volunteer_id:
                    continue  # a replica must be computed by somebody else
                if twin is not None and s.store.submission(twin.id, volunteer_id) is not None:
                    continue
            return self._grant(unit, volunteer_id, now)
        # A unit whose update was rejected waits for another volunteer; until one comes, it doesn't
        # count against the round's quota, or a campaign with a single volunteer would stall.
        if current.units_created >= s.spec.rounds.units_per_round + refused:
            return NoWork("every unit of the current round is out; waiting for results", retry_after_s=2)
        unit = self._new_unit(current, fits[current.units_created % len(fits)])
        rate = s.spec.validation.replication_rate
        if rate > 0 and s.trust.should_replicate(trust, rate, s.rng):  # rate 0: replication off
            self._new_unit(current, unit.shard_index, replica_of=unit)
        return self._grant(unit, volunteer_id, now)

    def memory_needed(self, shard_params: int) -> int:
        s = self.state
        tokens = s.spec.inner.batch_size * s.spec.inner.seq_len
        return estimate_training_bytes(s.model_config, shard_params, s.total_params, tokens)

    def _new_unit(self, current: RoundState, shard_index: int, *, replica_of: UnitRow | None = None) -> UnitRow:
        s = self.state
        row = s.refresh()
        if replica_of is None:
            inner = s.spec.inner
            length = inner.steps * inner.grad_accum * inner.batch_size * inner.seq_len + 1
            start, epoch = row.data_cursor, row.epoch
            if start + length > s.dataset.num_train_tokens:
                start, epoch = 0, epoch + 1  # a new epoch: slices repeat from the beginning
            # Not fsynced: a slice can be cut again from the dataset (`repair_data_slices`), and an
            # fsync per unit would cap how fast units are handed out.
            data_sha = s.blobs.put(self._slice(start, length), durable=False)
            values = {
                "id": uuid.uuid4().hex,
                "data_start": start,
                "data_tokens": length,
                "data_sha": data_sha,
                "shard_index": shard_index,
                "shard": s.shards[shard_index],
                "seed": (s.spec.seed * 1_000_003 + current.row.number * 10_007 + current.units_created) % 2**31,
            }
            with s.store.transaction():
                s.store.insert_unit(row.id, current.row.id, current.row.version, values, s.clock())
                s.store.advance_data_cursor(row.id, start + length - 1, epoch)
            current.units_created += 1
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
            with s.store.transaction():
                s.store.insert_unit(row.id, current.row.id, current.row.version, values, s.clock())
        unit = s.store.unit(str(values["id"]))
        assert unit is not None
        return unit

    def _slice(self, start: int, length: int) -> bytes:
        tokens = self.state.dataset.train_slice(start, length)
        return np.ascontiguousarray(tokens.astype(self.state.data_dtype())).tobytes()

    def repair_data_slices(self) -> int:
        """Cut again the data slices of units still to be trained whose blob a power cut lost or
        truncated (they are written without fsync); how many were repaired."""
        s = self.state
        repaired = 0
        for unit in s.store.units(s.row.id, (UnitState.PENDING, UnitState.LEASED)):
            if not s.blobs.verify(unit.data_sha):
                s.blobs.path(unit.data_sha).unlink(missing_ok=True)
                if s.blobs.put(self._slice(unit.data_start, unit.data_tokens)) != unit.data_sha:
                    raise RuntimeError(f"unit {unit.id}: its data slice no longer matches the dataset")
                repaired += 1
        return repaired

    def _grant(self, unit: UnitRow, volunteer_id: str, now: float) -> Assignment:
        s = self.state
        lease_id = secrets.token_hex(8)
        deadline = now + s.spec.rounds.lease_s
        s.store.lease(unit.id, volunteer_id, lease_id, deadline)
        s.counters.leased += 1
        leased = s.store.unit(unit.id)
        version = s.store.version(s.row.id, unit.version)
        assert leased is not None and version is not None
        shapes = {n: s.shapes[n] for n in unit.shard}
        specs = {n: TensorSpec(shape) for n, shape in shapes.items()}
        return Assignment(
            unit=leased,
            lease_id=lease_id,
            lease_deadline=deadline,
            campaign=s.row,
            spec=s.spec,
            model_config=s.model_config,
            checkpoint=version,
            data_size=s.blobs.size(unit.data_sha),
            data_dtype=s.data_dtype(),
            shard_shapes=shapes,
            global_step=(s.round_number(unit.round_id) - 1) * s.spec.inner.steps,
            inner=s.inner_config,
            max_update_bytes=encoded_size_bound(specs, s.spec.codec),
        )

    def heartbeat(self, volunteer_id: str, unit_id: str, lease_id: str) -> float | tuple[str, str]:
        """Extend a lease on progress: the new deadline, or the (code, message) of why not."""
        s = self.state
        unit = s.store.unit(unit_id)
        if unit is None or unit.campaign_id != s.row.id:
            return ("unknown_unit", f"no work unit {unit_id} in campaign {s.row.name}")
        problem = self.lease_problem(unit, volunteer_id, lease_id)
        if problem is not None:
            return problem
        deadline = s.clock() + s.spec.rounds.lease_s
        if not s.store.extend_lease(unit.id, lease_id, deadline):
            return ("lease_expired", LEASE_EXPIRED_MESSAGE)  # it expired a moment ago
        return deadline

    def lease_problem(self, unit: UnitRow, volunteer_id: str, lease_id: str) -> tuple[str, str] | None:
        """Why `lease_id` does not let this volunteer work on `unit` now, as (code, message); None if it does.

        A lease of this volunteer's whose deadline passed is `lease_expired` while the unit waits to be
        issued again; once a newer lease replaced it, or for a lease the volunteer never held (another
        volunteer's, or one never granted), the answer is `not_your_lease`.
        """
        if unit.state == UnitState.LEASED and unit.lease_id == lease_id and unit.volunteer_id == volunteer_id:
            return None
        held = self.state.store.lease_holder(unit.id, lease_id) == volunteer_id
        if held and unit.state != UnitState.LEASED:
            return ("lease_expired", LEASE_EXPIRED_MESSAGE)
        if held:
            return ("not_your_lease", "this lease expired and the unit was issued again under a newer lease")
        return ("not_your_lease", "this volunteer holds no lease with this id on this unit")

    def abandon(self, volunteer_id: str, unit_id: str, lease_id: str) -> None:
        """The volunteer gave the unit back: issue it again now rather than at lease expiry."""
        s = self.state
        unit = s.store.unit(unit_id)
        if unit is not None and unit.volunteer_id == volunteer_id and unit.lease_id == lease_id:
            with s.store.transaction():
                s.store.release_unit(unit_id)

    def expire_leases(self) -> None:
        self.state.store.expire_leases(self.state.clock())
