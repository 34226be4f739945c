"""Replays a coordinator's whole history from its data dir and checks it is consistent.

    >>> check_history(data_dir, campaign_id)  # raises HistoryError at the first inconsistency
    9
    >>> audit_history(data_dir, campaign_id).applied_twice
    0

Starting from θ_0, every closed round's accepted updates are decoded from the blob store, combined
with their recorded weights by the campaign's aggregation rule (the weighted mean, or a robust rule:
the coordinator's own `training.aggregation.aggregate_updates`) and applied with the campaign's outer
optimizer; each result must match the exact weights the coordinator recorded for that round's
version, and the published checkpoint must be what the campaign's download codec makes of them (and
what the version's delta makes of the previous checkpoint). An update lost,
applied twice, or applied to the wrong round shows up as a mismatch. `audit_history` adds direct
counts of updates the record holds twice, for `bench crash` to report instead of stopping at the
first problem. Run either on a data dir no coordinator is writing to. The crash tests use it
through tests/support/history.py.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from coordinator.campaign import CampaignSpec
from coordinator.store import open_blobs, open_store
from protocol.checkpoints import apply_delta, checkpoint_bytes, make_delta
from protocol.codecs import decode
from protocol.tensors import TensorSpec
from training.aggregation import aggregate_updates
from training.checkpoint import load_state, load_weights
from training.outer import make_outer_optimizer

__all__ = ["HistoryAudit", "HistoryError", "audit_history", "check_history"]

ALL = 1 << 40  # the store's `limit`: every row


class HistoryError(AssertionError):
    """The record contradicts itself: what and where, in the message."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise HistoryError(message)


def check_history(data_dir: Path, campaign_id: int, *, database: str = "", blobs_url: str = "") -> int:
    """Raises HistoryError unless the history replays to the published versions; returns how many it checked.
    `database` and `blobs_url` are the coordinator's `--database` and `--blobs` ("": SQLite and the folder
    in `data_dir`)."""
    store = open_store(database, data_dir, clock=time.time)
    blobs = open_blobs(blobs_url, data_dir)
    try:
        campaign = store.campaign(campaign_id)
        _require(campaign is not None, f"campaign {campaign_id} is not in the store")
        assert campaign is not None
        spec = CampaignSpec.from_dict(campaign.spec)
        versions = store.versions(campaign_id)
        _require([v.version for v in versions] == list(range(len(versions))), "version numbers have gaps")
        _require(campaign.current_version == versions[-1].version, "the campaign's version is not its last one")
        published_bytes = blobs.get(versions[0].checkpoint_sha)
        params = load_weights(published_bytes)
        shapes = {n: tuple(t.shape) for n, t in params.items()}
        outer = make_outer_optimizer(spec.outer.optimizer, lr=spec.outer.lr, momentum=spec.outer.momentum)
        closed = [r for r in store.rounds(campaign_id) if r.status == "closed"]
        _require(len(closed) == len(versions) - 1, "every closed round publishes exactly one version")
        seen: set[int] = set()

        def round_updates(round_id: int) -> Iterator[tuple[dict[str, torch.Tensor], float]]:
            """The round's weighted updates as the aggregator reads them: decoded one at a time, in order."""
            for sub in store.submissions(round_id=round_id, statuses=("accepted",), limit=ALL):
                _require(sub.id not in seen, f"submission {sub.id} counted in two rounds")
                seen.add(sub.id)
                _require(sub.applied, f"submission {sub.id} of a closed round is not marked applied")
                if sub.weight == 0:
                    continue  # a replica's twin: the update entered the aggregate once, through its pair
                unit = store.unit(sub.unit_id)
                _require(unit is not None, f"submission {sub.id}'s unit {sub.unit_id} is not in the store")
                assert unit is not None
                specs = {n: TensorSpec(shapes[n]) for n in unit.shard}
                yield decode(blobs.get(sub.update_sha), specs), sub.weight

        rule = spec.outer.aggregation_rule
        for round_row, version in zip(closed, versions[1:], strict=True):
            _require(version.round_id == round_row.id, f"version {version.version} is not round {round_row.id}'s")
            with tempfile.TemporaryDirectory(prefix="history-", dir=data_dir) as scratch:
                aggregate = aggregate_updates(round_updates(round_row.id), shapes, rule, scratch)
            _require(
                aggregate.contributions == version.updates,
                f"version {version.version}: {aggregate.contributions} updates on record, {version.updates} applied",
            )
            if aggregate.contributions:
                outer.step(params, aggregate.delta)
            # The coordinator steps its exact weights (the version state's "master") and publishes the
            # checkpoint its download codec's delta rebuilds; compare the replay with the exact weights.
            checkpoint = blobs.get(version.checkpoint_sha)
            master = load_state(blobs.get(version.state_sha)).get("master") or load_weights(checkpoint)
            for name, tensor in master.items():
                try:
                    torch.testing.assert_close(params[name], tensor, rtol=1e-5, atol=1e-6)
                except AssertionError as error:
                    raise HistoryError(
                        f"v{version.version} {name}: the replay differs from the published\n{error}"
                    ) from None
            if version.delta_sha is not None:
                _require(
                    apply_delta(published_bytes, blobs.get(version.delta_sha)) == checkpoint,
                    f"v{version.version}: the previous checkpoint plus the delta is not the checkpoint",
                )
            rebuilt = make_delta(master, load_weights(published_bytes), spec.download_codec)[1]
            _require(
                checkpoint_bytes(rebuilt) == checkpoint,
                f"v{version.version}: the checkpoint is not what the download codec makes of the weights",
            )
            params, published_bytes = master, checkpoint  # continue from the recorded bits, as the coordinator does
        for sub in store.submissions(statuses=("accepted",), applied=False, campaign_id=campaign_id, limit=ALL):
            home = store.round(sub.round_id) if sub.round_id is not None else None
            _require(home is None or home.status == "open", f"submission {sub.id} left out of its round")
        return len(versions)
    finally:
        store.close()


@dataclass(frozen=True)
class HistoryAudit:
    """What a data dir's record says, counted rather than asserted."""

    versions: int  # versions the replay checked; 0 when it failed
    replay_error: str | None  # the replay's first inconsistency, None when it passed
    accepted: int  # accepted submissions on record
    applied: int  # of them, applied with a weight (a replica's zero-weight twin is not)
    extra_by_unit: int  # weighted accepted submissions beyond the first of their unit
    extra_by_update: int  # weighted accepted submissions beyond the first of the same update blob
    applied_minus_published: int  # weighted applied submissions minus the updates the versions say they applied

    @property
    def applied_twice(self) -> int:
        """Updates the record counts more than once, by whichever count shows the most."""
        return max(self.extra_by_unit, self.extra_by_update, self.applied_minus_published, 0)

    @property
    def consistent(self) -> bool:
        return self.replay_error is None and self.applied_twice == 0 and self.applied_minus_published == 0


def audit_history(data_dir: Path, campaign_id: int, *, database: str = "", blobs_url: str = "") -> HistoryAudit:
    """The replay's verdict plus direct counts of double-counted updates."""
    try:
        versions, replay_error = check_history(data_dir, campaign_id, database=database, blobs_url=blobs_url), None
    except HistoryError as error:
        versions, replay_error = 0, str(error)
    store = open_store(database, data_dir, clock=time.time)
    try:
        accepted = store.submissions(statuses=("accepted",), campaign_id=campaign_id, limit=ALL)
        weighted = [s for s in accepted if s.weight > 0]
        applied = [s for s in weighted if s.applied]
        published = sum(v.updates for v in store.versions(campaign_id))
    finally:
        store.close()
    per_unit = Counter(s.unit_id for s in weighted)
    per_update = Counter(s.update_sha for s in weighted)
    return HistoryAudit(
        versions=versions,
        replay_error=replay_error,
        accepted=len(accepted),
        applied=len(applied),
        extra_by_unit=sum(n - 1 for n in per_unit.values()),
        extra_by_update=sum(n - 1 for n in per_update.values()),
        applied_minus_published=len(applied) - published,
    )
