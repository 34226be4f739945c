"""Closing rounds: the outer step over the round's accumulated updates, and publishing θ_{v+1}.

    >>> aggregator.close_if_due()          # after a commit reached the quorum
    >>> aggregator.close_at_deadline()     # from the periodic tick
    >>> aggregator.restore()               # after a restart: θ_v, the optimizer, the open round

A round closes when `min_accepted` updates are in, or at its deadline with at least one. Closing
rejects (blamelessly) updates whose replica can no longer come back in time, applies the outer
optimizer to the round's aggregate, writes θ_{v+1} and the optimizer state as blobs, and then
publishes the version and closes the round in one transaction. Everything in memory is derived:
`restore` rebuilds θ_v, the outer optimizer and the open round's accumulator from the store, so a
coordinator killed at any instant loses no acknowledged update and applies none twice.

The aggregate is the campaign's `outer.aggregation` rule (training.aggregation). The mean is the
accumulator that ingest streamed each accepted update into. A robust rule (trimmed mean, centered
clipping) needs the updates themselves: at close they are decoded again from the blob store, one
at a time, into a stack file under DATA_DIR/aggregation/campaign-ID (swept at start), in the order
the history replay reads them, so a replay applies exactly what the coordinator did.
"""

from __future__ import annotations

from pathlib import Path

import torch

from coordinator.campaign import CampaignSpec
from coordinator.engine.scheduler import Scheduler
from coordinator.engine.state import CampaignState, model_config_for
from coordinator.engine.states import CloseReason, SubmissionStatus, UnitState
from coordinator.store import VersionRow
from protocol.checkpoints import checkpoint_bytes, make_delta
from protocol.moments import decode_moments, encode_moments
from training.aggregation import aggregate_updates
from training.checkpoint import load_state, load_weights, save_state
from training.data import TokenDataset
from training.model import build_model
from training.moments import Moments, as_records, factor, from_records, median_moments

__all__ = ["Aggregator", "initial_version"]

ALL = 1 << 40  # the store's `limit`: every row (a round's updates, however many)


def initial_version(spec: CampaignSpec, dataset: TokenDataset) -> tuple[bytes, bytes]:
    """θ_0 and the empty optimizer state for a new campaign, as blobs."""
    model = build_model(model_config_for(spec, dataset), seed=spec.seed)
    return checkpoint_bytes(dict(model.named_parameters())), save_state({"outer": {}, "cohort": {}})


class Aggregator:
    def __init__(self, state: CampaignState, scheduler: Scheduler, scratch: Path) -> None:
        self.state = state
        self.scheduler = scheduler
        self.scratch = scratch  # robust rules' stack files: on the data dir's disk, one folder per campaign

    def restore(self) -> None:
        s = self.state
        row = s.refresh()
        self._sweep_scratch()
        version = s.store.version(row.id, row.current_version)
        if version is None:
            raise RuntimeError(f"campaign {row.name} has no version {row.current_version}")
        s.version_row = version
        s.published = load_weights(s.blobs.get(version.checkpoint_sha), s.shapes)
        saved = load_state(s.blobs.get(version.state_sha))
        # The exact weights, where lossy deltas made the published ones differ (versions before deltas: equal).
        master = saved.get("master") or {}
        s.params = {name: (master.get(name, value)).clone() for name, value in s.published.items()}
        if saved.get("outer"):
            s.outer.load_state_dict(saved["outer"])
        if saved.get("cohort"):
            s.cohort.load_state_dict(saved["cohort"])
        self.scheduler.repair_data_slices()
        # Held for a holdout check: the volunteers' check died with the old process; the coordinator
        # measures them itself at the next tick.
        pending = s.store.submissions(campaign_id=row.id, statuses=(SubmissionStatus.PENDING_CHECK,))
        s.held_checks = dict.fromkeys((sub.unit_id for sub in pending), None)
        open_round = s.store.open_round_of(row.id)
        if open_round is None:
            return
        s.round = self.scheduler.round_state(open_round.id)
        for sub in s.store.submissions(
            round_id=open_round.id, statuses=(SubmissionStatus.ACCEPTED,), applied=False, limit=ALL
        ):
            unit = s.store.unit(sub.unit_id)
            assert unit is not None
            delta = s.decode(s.blobs.get(sub.update_sha), unit.shard)
            if sub.weight > 0:  # as ingest counts them: a zero-weight twin is in the cohort, not the round
                s.round.accumulator.add(delta, weight=sub.weight)
                s.round.accepted += 1
                s.round.tokens += sub.tokens
            s.cohort.record(s.candidate(unit, delta, sub.losses, sub.tokens))
        if s.round.accepted >= s.spec.rounds.min_accepted:
            # The quorum was reached before the restart (or the takeover) but the round not closed: the
            # next tick closes it, rather than its deadline.
            s.close_due = CloseReason.QUORUM

    def close_if_due(self) -> VersionRow | None:
        """Close the round if a commit reached its quorum. Apart from the commits, because a close is
        heavy (the outer step, a checkpoint written) and grouped commits hold the store's write lock."""
        s = self.state
        with s.lock:
            if s.close_due is None or s.round is None:
                s.close_due = None
                return None
            reason, s.close_due = s.close_due, None
            return self.close_round(reason)

    def close_at_deadline(self) -> VersionRow | None:
        """Close a round whose deadline passed with something to apply; give an empty one more time."""
        s = self.state
        with s.lock:
            current = s.round
            if current is None or s.clock() < current.row.deadline:
                return None
            if current.accepted > 0:  # an update waiting for its replica doesn't count yet
                return self.close_round(CloseReason.DEADLINE)
            s.store.extend_round_deadline(current.row.id, s.clock() + s.spec.rounds.deadline_s)
            refreshed = s.store.round(current.row.id)
            assert refreshed is not None
            current.row = refreshed
            return None

    def close_round(self, reason: str) -> VersionRow:
        s = self.state
        with s.lock:
            current = s.round
            assert current is not None
            self._expire_unreplicated(current.row.version + 1)
            new_version = s.row.current_version + 1
            aggregate = self._aggregate(current.row.id)
            if aggregate:
                s.outer.step(s.params, aggregate)
            # Volunteers holding θ'_v rebuild θ'_{v+1} from the delta bit for bit; it is the checkpoint.
            delta, s.published = make_delta(s.params, s.published, s.spec.download_codec)
            checkpoint = checkpoint_bytes(s.published)
            checkpoint_sha = s.blobs.put(checkpoint)
            delta_sha = s.blobs.put(delta)
            state_sha = s.blobs.put(
                save_state({"outer": s.outer.state_dict(), "cohort": s.cohort.state_dict(), "master": s.params})
            )
            moments = self._shared_moments(current.row.id)
            s.store.close_round(
                current.row.id,
                reason=reason,
                version=new_version,
                checkpoint=(checkpoint_sha, len(checkpoint)),
                state_sha=state_sha,
                updates=current.accepted,
                tokens=current.tokens,
                delta=(delta_sha, len(delta)),
                moments=moments,
                lease=s.lease,
            )
            s.counters.round_seconds.append(s.clock() - current.row.opened_at)
            s.round = None
            s.refresh()
            version = s.store.version(s.row.id, new_version)
            assert version is not None
            s.version_row = version
        return version

    def _aggregate(self, round_id: int) -> dict[str, torch.Tensor]:
        """The round's aggregate update by the campaign's rule ({} when nothing is to be applied)."""
        s = self.state
        assert s.round is not None
        rule = s.spec.outer.aggregation_rule
        if not rule.robust:
            accumulator = s.round.accumulator
            return accumulator.mean() if accumulator.contributions else {}
        subs = [
            sub
            for sub in s.store.submissions(
                round_id=round_id, statuses=(SubmissionStatus.ACCEPTED,), applied=False, limit=ALL
            )
            if sub.weight > 0
        ]
        if not subs:
            return {}
        self.scratch.mkdir(parents=True, exist_ok=True)
        # The store is the record a replay reads: the same rows, in the same order.
        updates = ((self._decoded(sub.unit_id, sub.update_sha), sub.weight) for sub in subs)
        return aggregate_updates(updates, s.shapes, rule, self.scratch).delta

    def _shared_moments(self, round_id: int) -> tuple[str, int] | None:
        """The moments frame the next version's units start from: each factor's lower median over the
        round's applied updates that sent one, for the parameters any of them trained; the last version's
        for the rest, and zeros (a fresh AdamW's v) for a parameter none has had yet. None until a frame
        has been sent."""
        s = self.state
        if not s.spec.inner.shared_moments:
            return None
        sent: list[Moments] = []
        for sub in s.store.submissions(
            round_id=round_id, statuses=(SubmissionStatus.ACCEPTED,), applied=False, limit=ALL
        ):
            unit = s.store.unit(sub.unit_id)
            if sub.weight <= 0 or sub.moments_sha is None or unit is None:
                continue
            shapes = {n: s.shapes[n] for n in unit.shard}
            sent.append(from_records(decode_moments(s.blobs.get(sub.moments_sha), shapes), shapes))
        earlier = s.version_row
        if earlier is not None and earlier.moments_sha is not None:
            kept = from_records(decode_moments(s.blobs.get(earlier.moments_sha), s.shapes), s.shapes)
        else:
            kept = {}
        if not sent and not kept:
            return None
        shared = kept | median_moments(sent)
        # A parameter no unit has returned a moment for yet starts from v = 0, as in a fresh AdamW.
        fresh = {n: factor(torch.zeros(shape)) for n, shape in s.shapes.items() if n not in shared}
        frame = encode_moments(as_records({n: (shared | fresh)[n] for n in s.shapes}))
        return s.blobs.put(frame), len(frame)

    def _decoded(self, unit_id: str, update_sha: str) -> dict[str, torch.Tensor]:
        unit = self.state.store.unit(unit_id)
        assert unit is not None
        return self.state.decode(self.state.blobs.get(update_sha), unit.shard)

    def _sweep_scratch(self) -> None:
        """Stack files a killed process left behind: nothing reads them again."""
        for stale in self.scratch.glob("update-stack-*"):
            stale.unlink(missing_ok=True)

    def _expire_unreplicated(self, new_version: int) -> None:
        """Updates still waiting for their replica when the model moves past their staleness bound will
        never count: reject them (blamelessly: nobody proved them wrong) and stop issuing their replicas."""
        s = self.state
        bound = s.spec.rounds.staleness_bound
        for sub in s.store.submissions(campaign_id=s.row.id, statuses=(SubmissionStatus.PENDING_REPLICA,)):
            unit = s.store.unit(sub.unit_id)
            assert unit is not None
            if new_version - unit.version <= bound:
                continue  # its replica may still come back; the update counts once it agrees
            replica = s.store.replica_of(unit.id) if unit.replica_of is None else s.store.unit(unit.replica_of)
            with s.store.transaction():
                s.store.update_submission(
                    sub.id,
                    status=SubmissionStatus.REJECTED,
                    code="stale_update",
                    message=(
                        f"its replica did not come back before the model moved {bound} version(s) past "
                        f"version {unit.version}; no credit, and no mark against this volunteer"
                    ),
                )
                if replica is not None and replica.state == UnitState.PENDING:
                    s.store.set_unit_state(replica.id, UnitState.CANCELLED)
            s.count_rejection("stale_update")

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of θ'_v, the published weights, for readers on other threads (the holdout evaluator)."""
        with self.state.lock:
            return {n: t.clone() for n, t in self.state.published.items()}
