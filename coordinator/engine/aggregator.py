"""Closing rounds: the outer step over the round's accumulated updates, and publishing θ_{v+1}.

    >>> aggregator.close_if_due()          # after a commit reached the quorum
    >>> aggregator.close_at_deadline()     # from the periodic tick
    >>> aggregator.restore()               # after a restart: θ_v, the optimizer, the open round

A round closes when `min_accepted` updates are in, or at its deadline with at least one. Closing
credits replicas' originals whose twin never came back, applies the outer optimizer to the mean of
the accumulated updates, writes θ_{v+1} and the optimizer state as blobs, and then publishes the
version and closes the round in one transaction. Everything in memory is derived: `restore` rebuilds
θ_v, the outer optimizer and the open round's accumulator from the store, so a coordinator killed at
any instant loses no acknowledged update and applies none twice.
"""

from __future__ import annotations

import torch

from coordinator.campaign import CampaignSpec
from coordinator.engine.scheduler import Scheduler
from coordinator.engine.state import CampaignState, model_config_for
from coordinator.engine.states import CloseReason, SubmissionStatus, UnitState
from coordinator.store import VersionRow
from training.checkpoint import load_state, load_weights, save_state, save_weights
from training.data import TokenDataset
from training.model import build_model

__all__ = ["Aggregator", "initial_version"]


def initial_version(spec: CampaignSpec, dataset: TokenDataset) -> tuple[bytes, bytes]:
    """θ_0 and the empty optimizer state for a new campaign, as blobs."""
    model = build_model(model_config_for(spec, dataset), seed=spec.seed)
    return save_weights(dict(model.named_parameters())), save_state({"outer": {}, "cohort": {}})


class Aggregator:
    def __init__(self, state: CampaignState, scheduler: Scheduler) -> None:
        self.state = state
        self.scheduler = scheduler

    def restore(self) -> None:
        s = self.state
        row = s.refresh()
        version = s.store.version(row.id, row.current_version)
        if version is None:
            raise RuntimeError(f"campaign {row.name} has no version {row.current_version}")
        s.version_row = version
        s.params = load_weights(s.blobs.get(version.checkpoint_sha), s.shapes)
        saved = load_state(s.blobs.get(version.state_sha))
        if saved.get("outer"):
            s.outer.load_state_dict(saved["outer"])
        if saved.get("cohort"):
            s.cohort.load_state_dict(saved["cohort"])
        self.scheduler.repair_data_slices()
        open_round = s.store.open_round_of(row.id)
        if open_round is None:
            return
        s.round = self.scheduler.round_state(open_round.id)
        for sub in s.store.submissions(round_id=open_round.id, statuses=(SubmissionStatus.ACCEPTED,), applied=False):
            unit = s.store.unit(sub.unit_id)
            assert unit is not None
            delta = s.decode(s.blobs.get(sub.update_sha), unit.shard)
            s.round.accumulator.add(delta, weight=sub.weight)
            s.round.accepted += 1
            s.round.tokens += sub.tokens
            s.cohort.record(s.candidate(unit, delta, sub.losses, sub.tokens))

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
            if current.accumulator.contributions:
                s.outer.step(s.params, current.accumulator.mean())
            checkpoint = save_weights(s.params)
            checkpoint_sha = s.blobs.put(checkpoint)
            state_sha = s.blobs.put(save_state({"outer": s.outer.state_dict(), "cohort": s.cohort.state_dict()}))
            s.store.close_round(
                current.row.id,
                reason=reason,
                version=new_version,
                checkpoint=(checkpoint_sha, len(checkpoint)),
                state_sha=state_sha,
                updates=current.accepted,
                tokens=current.tokens,
            )
            s.counters.round_seconds.append(s.clock() - current.row.opened_at)
            s.round = None
            s.refresh()
            version = s.store.version(s.row.id, new_version)
            assert version is not None
            s.version_row = version
        return version

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
        """A copy of θ_v for readers on other threads (the holdout evaluator)."""
        with self.state.lock:
            return {n: t.clone() for n, t in self.state.params.items()}
