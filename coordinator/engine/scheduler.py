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

import itertools
import secrets
import uuid

import numpy as np

from coordinator.engine.models import Assignment, DeltaStep, NoWork, RoundState
from coordinator.engine.state import CampaignState
from coordinator.engine.states import CampaignStatus, SubmissionStatus, UnitState
from coordinator.store import UnitRow, VersionRow
from coordinator.validation import TrustState
from protocol.codecs import encoded_size_bound
from protocol.limits import MAX_CHECKPOINT_DELTAS
from protocol.tensors import TensorSpec
from training.accumulator import DeltaAccumulator
from training.model import ModelConfig

__all__ = ["LEASE_EXPIRED_MESSAGE", "MAX_STALLED_EXTENSIONS", "Scheduler", "estimate_training_bytes"]

# Progress reports that extend a lease without a newly finished step (downloading, paused, a slow
# first step); more than this and the lease runs out unless real steps follow.
MAX_STALLED_EXTENSIONS = 3
# However much progress it reports, a lease lives at most this many lease periods (or one round
# deadline, if longer): a volunteer faking one step per lease period can't hold a unit for hours.
MAX_LEASE_PERIODS = 4

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
        # Per live lease: (steps reported, extensions since the last new step, when first seen). In
        # memory: after a restart a lease starts its count again, which only ever helps the volunteer.
        self._progress: dict[str, tuple[int, int, float]] = {}

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
        if s.spec.private and s.privacy_releases_left(volunteer_id) == 0:
            return NoWork(
                f"this volunteer has sent campaign {row.name} as many updates as its privacy budget allows "
                f"(ε = {s.spec.privacy.epsilon_budget:g}, δ = {s.spec.privacy.delta:g})",
                retry_after_s=3600,
            )
        cap = s.spec.rounds.max_leases_per_volunteer
        held = s.store.leases_held(row.id, volunteer_id)
        if held >= cap:
            return NoWork(
                f"this volunteer already holds {held} unit(s) of campaign {row.name}, the most it may hold at "
                "once; submit or abandon one first",
                retry_after_s=30,
            )
        now = s.clock()
        refused = 0  # pending units this volunteer may not take because it already answered them
        for unit in s.store.units(row.id, (UnitState.PENDING,)):
            if unit.shard_index not in fits:
                continue
            if unit.round_id != current.row.id and not self._replica_awaited(unit):
                continue
            if s.store.ever_leased(unit.id, volunteer_id):
                # It answered this unit (perhaps badly) or gave it back, or let its lease lapse: someone
                # else takes it. (A volunteer that trains a unit, abandons it and gets it back can submit
                # the kept update as fresh work — what bench adversarial's replay attacker did.)
                refused += 1
                continue
            twin_id = s.twin_id(unit)
            if twin_id is not None and self._related_to_twin(volunteer_id, twin_id):
                continue  # a replica must be computed by somebody unrelated to its twin's volunteer
            return self._grant(unit, volunteer_id, now)
        # A unit whose update was rejected waits for another volunteer; until one comes, it doesn't
        # count against the round's quota, or a campaign with a single volunteer would stall — but only
        # up to one round's worth: a volunteer that gives back or fails every unit (a model its device
        # can't train, a version that diverges for everyone) waits like the rest instead of making a
        # new unit per request. Units held by volunteers not yet trusted don't count either (up to one
        # more round's worth): a few new identities that take units and never return them can't starve
        # the round.
        quota = s.spec.rounds.units_per_round
        issued = s.spec.rounds.units_issued
        if current.units_created >= issued + min(quota, refused) + min(quota, self._held_by_untrusted(current)):
            return NoWork("every unit of the current round is out; waiting for results", retry_after_s=2)
        unit = self._new_unit(current, fits[current.units_created % len(fits)])
        if s.should_replicate(trust):
            self._new_unit(current, unit.shard_index, replica_of=unit)
        return self._grant(unit, volunteer_id, now)

    def replicate(self, unit: UnitRow) -> UnitRow | None:
        """A replica of `unit` in the current round, for a volunteer unrelated to whoever computed it;
        None once the campaign has no round to put it in."""
        current = self.ensure_round()
        if current is None or self.state.spec.private:  # nobody else holds a volunteer's own data
            return None
        return self._new_unit(current, unit.shard_index, replica_of=unit)

    def _replica_awaited(self, unit: UnitRow) -> bool:
        """Whether a pending unit of an earlier round is a replica whose original waits for it and
        can still count (within the staleness bound)."""
        s = self.state
        if unit.replica_of is None or s.row.current_version - unit.version > s.spec.rounds.staleness_bound:
            return False
        original = s.live_submission(unit.replica_of)
        return original is not None and original.status == SubmissionStatus.PENDING_REPLICA

    def _related_to_twin(self, volunteer_id: str, twin_id: str) -> bool:
        """Whether `volunteer_id` computed, holds, or is related to whoever computed the twin unit.

        Related: the same identity, or identities seen from the same network prefix (at registration
        or at their latest hello) — a Sybil pair run from one place can't be each other's replica.
        """
        s = self.state
        twin = s.store.unit(twin_id)
        if twin is None:
            return False
        if s.store.submission(twin_id, volunteer_id) is not None:
            return True
        others = {v for v in (twin.volunteer_id,) if v}
        live = s.live_submission(twin_id)
        if live is not None:
            others.add(live.volunteer_id)
        if volunteer_id in others:
            return True
        mine = s.sources_of(volunteer_id)
        return any(mine & s.sources_of(other) for other in others)

    def _held_by_untrusted(self, current: RoundState) -> int:
        s = self.state
        held = 0
        for unit in s.store.units(s.row.id, (UnitState.LEASED,), round_id=current.row.id):
            volunteer = s.store.volunteer(unit.volunteer_id) if unit.volunteer_id else None
            if volunteer is None or not s.trust.trusted(TrustState(volunteer.consecutive_valid, volunteer.errors)):
                held += 1
        return held

    def memory_needed(self, shard_params: int) -> int:
        s = self.state
        tokens = s.spec.inner.batch_size * s.spec.inner.seq_len
        return estimate_training_bytes(s.model_config, shard_params, s.total_params, tokens)

    def _new_unit(self, current: RoundState, shard_index: int, *, replica_of: UnitRow | None = None) -> UnitRow:
        s = self.state
        row = s.refresh()
        if replica_of is None:
            recycled = s.store.recyclable_unit(row.id)
            if recycled is not None:
                # A slice handed out before and never trained (its round closed first, or every result
                # for it was rejected) goes out again before the cursor moves on.
                with s.store.transaction():
                    s.store.rehome_unit(recycled.id, current.row.id, current.row.version)
                current.units_created += 1
                rehomed = s.store.unit(recycled.id)
                assert rehomed is not None
                return rehomed
            inner = s.spec.inner
            length = inner.steps * inner.grad_accum * inner.batch_size * inner.seq_len + 1
            start, epoch = row.data_cursor, row.epoch
            if s.spec.private:
                start, length = 0, 0  # the volunteer trains on its own files: the unit's slice is empty
            elif start + length > s.dataset.num_train_tokens:
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
                if length:
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
            # From the same version as its twin, or the two could never agree (a unit held for a weak fit
            # may be a version behind when its replica is made).
            with s.store.transaction():
                s.store.insert_unit(row.id, current.row.id, replica_of.version, values, s.clock())
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
                s.blobs.remove(unit.data_sha)
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
        return self.assignment(unit.id, lease_id, deadline)

    def assignment(self, unit_id: str, lease_id: str, deadline: float) -> Assignment:
        """What a volunteer is told about a unit it was granted (from the store alone: a replica that
        forwarded the lease to the campaign's leader describes the unit itself)."""
        s = self.state
        unit = s.store.unit(unit_id)
        assert unit is not None
        version = s.store.version(s.row.id, unit.version)
        assert version is not None
        shapes = {n: s.shapes[n] for n in unit.shard}
        specs = {n: TensorSpec(shape) for n, shape in shapes.items()}
        return Assignment(
            unit=unit,
            lease_id=lease_id,
            lease_deadline=deadline,
            campaign=s.row,
            spec=s.spec,
            model_config=s.model_config,
            checkpoint=version,
            data_size=s.blobs.size(unit.data_sha),
            data_dtype=s.data_dtype(),
            shard_shapes=shapes,
            global_step=s.global_step(unit),
            inner=s.inner_config,
            max_update_bytes=encoded_size_bound(specs, s.spec.codec),
            deltas=self.delta_chain(version),
            tokenizer=s.tokenizer_blob() if s.spec.private else None,
        )

    def delta_chain(self, version: VersionRow) -> tuple[DeltaStep, ...]:
        """The deltas up to `version`'s checkpoint, oldest first: as many as add up to less than the
        checkpoint (past that a client downloads the checkpoint) and at most MAX_CHECKPOINT_DELTAS."""
        s = self.state
        first = max(0, version.version - MAX_CHECKPOINT_DELTAS)
        rows = s.store.versions_between(s.row.id, first, version.version)
        chain: list[DeltaStep] = []
        total = 0
        for earlier, later in reversed(list(itertools.pairwise(rows))):
            if later.delta_sha is None or later.delta_size is None or later.version != earlier.version + 1:
                break
            total += later.delta_size
            if total >= version.checkpoint_size:
                break
            chain.append(DeltaStep(earlier.checkpoint_sha, later.delta_sha, later.delta_size, later.checkpoint_sha))
        return tuple(reversed(chain))

    def heartbeat(
        self, volunteer_id: str, unit_id: str, lease_id: str, *, step: int | None = None
    ) -> float | tuple[str, str]:
        """Extend a lease on progress: the deadline (new, or unchanged when the progress doesn't earn an
        extension), or the (code, message) of why the lease is not this volunteer's.

        A report extends the lease when it names a newly finished step (`step`, at most the unit's
        steps), or while at most MAX_STALLED_EXTENSIONS reports in a row named none; and never beyond
        MAX_LEASE_PERIODS lease periods (or a round deadline) from the first report. A volunteer that
        only heartbeats can't hold a unit for long.
        """
        s = self.state
        unit = s.store.unit(unit_id)
        if unit is None or unit.campaign_id != s.row.id:
            return ("unknown_unit", f"no work unit {unit_id} in campaign {s.row.name}")
        problem = self.lease_problem(unit, volunteer_id, lease_id)
        if problem is not None:
            return problem
        now = s.clock()
        done, stalls, since = self._progress.get(lease_id, (0, 0, now))
        finished = min(step, s.spec.inner.steps) if step is not None else done
        stalls = 0 if finished > done else stalls + 1
        self._progress[lease_id] = (max(done, finished), stalls, since)
        rounds = s.spec.rounds
        limit = since + max(MAX_LEASE_PERIODS * rounds.lease_s, rounds.deadline_s)
        current = unit.lease_deadline or now
        if stalls > MAX_STALLED_EXTENSIONS or now + rounds.lease_s > limit:
            return current
        deadline = now + rounds.lease_s
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
        for unit in self.state.store.expire_leases(self.state.clock(), self.state.row.id):
            self._progress.pop(unit.lease_id or "", None)
        if len(self._progress) > 4 * self.state.spec.rounds.units_per_round + 64:
            live = {u.lease_id for u in self.state.store.units(self.state.row.id, (UnitState.LEASED,))}
            self._progress = {k: v for k, v in self._progress.items() if k in live}
