"""Replays a coordinator's whole history from its data dir and checks it is consistent.

Used after crash tests: starting from θ_0, every closed round's accepted updates are decoded from
the blob store, averaged with their recorded weights and applied with the campaign's outer
optimizer; each result must match the checkpoint published as that round's version. An update
lost, applied twice, or applied to the wrong round shows up as a mismatch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from coordinator.blobs import BlobStore
from coordinator.campaign import CampaignSpec
from coordinator.store import SQLiteStore
from protocol.codecs import decode
from protocol.tensors import TensorSpec
from training.accumulator import DeltaAccumulator
from training.checkpoint import load_weights
from training.outer import make_outer_optimizer


def check_history(data_dir: Path, campaign_id: int) -> int:
    """Asserts the history is consistent; returns the number of versions checked."""
    store = SQLiteStore.open(data_dir / "coordinator.sqlite3")
    blobs = BlobStore(data_dir / "blobs")
    try:
        campaign = store.campaign(campaign_id)
        assert campaign is not None
        spec = CampaignSpec.from_dict(campaign.spec)
        versions = store.versions(campaign_id)
        assert [v.version for v in versions] == list(range(len(versions))), "version numbers have gaps"
        assert campaign.current_version == versions[-1].version
        params = load_weights(blobs.get(versions[0].checkpoint_sha))
        shapes = {n: tuple(t.shape) for n, t in params.items()}
        outer = make_outer_optimizer(spec.outer.optimizer, lr=spec.outer.lr, momentum=spec.outer.momentum)
        closed = [r for r in store.rounds(campaign_id) if r.status == "closed"]
        assert len(closed) == len(versions) - 1, "every closed round publishes exactly one version"
        seen: set[int] = set()
        for round_row, version in zip(closed, versions[1:], strict=True):
            assert version.round_id == round_row.id
            accepted = store.submissions(round_id=round_row.id, statuses=("accepted",))
            accumulator = DeltaAccumulator(shapes)
            for sub in accepted:
                assert sub.id not in seen, f"submission {sub.id} counted in two rounds"
                seen.add(sub.id)
                assert sub.applied, f"submission {sub.id} of a closed round is not marked applied"
                if sub.weight == 0:
                    continue  # a replica's twin: the update entered the average once, through its pair
                unit = store.unit(sub.unit_id)
                assert unit is not None
                specs = {n: TensorSpec(shapes[n]) for n in unit.shard}
                accumulator.add(decode(blobs.get(sub.update_sha), specs), weight=sub.weight)
            assert accumulator.contributions == version.updates, (
                f"version {version.version}: {accumulator.contributions} updates on record, {version.updates} applied"
            )
            if accumulator.contributions:
                outer.step(params, accumulator.mean())
            published = load_weights(blobs.get(version.checkpoint_sha))
            for name, tensor in published.items():
                torch.testing.assert_close(params[name], tensor, rtol=1e-5, atol=1e-6, msg=f"v{version.version} {name}")
            params = published  # continue from the published bits, as the coordinator does
        for sub in store.submissions(statuses=("accepted",), applied=False, campaign_id=campaign_id):
            round_row = store.round(sub.round_id) if sub.round_id is not None else None
            assert round_row is None or round_row.status == "open", f"submission {sub.id} left out of its round"
        return len(versions)
    finally:
        store.close()
