"""`evaluate` units (coordinator/evaluations.py): two unrelated volunteers' losses for a version settle
its holdout loss when they agree, and settle nothing when they don't; a late one is judged against the
loss the version got."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator.evaluations import EVAL_RTOL, EvalLease
from coordinator.service import Coordinator, CoordinatorConfig
from tests.coordinator.test_runtime import Clock, make_spec
from training.checkpoint import load_weights
from training.inner import sequence_batches
from training.model import GPT

GRACE_S = 60.0


@pytest.fixture
def service(tmp_path: Path, small_dataset: Path) -> Coordinator:
    config = CoordinatorConfig(
        data_dir=tmp_path / "coordinator", datasets={"small": small_dataset}, eval_grace_s=GRACE_S, eval_tokens=4096
    )
    return Coordinator.open(config, clock=Clock())


def _open(service: Coordinator) -> tuple[int, int]:
    campaign_id = service.create_campaign(make_spec(), owner="test")
    runtime = service.runtimes[campaign_id]
    version = service.store.version(campaign_id, 0)
    assert version is not None
    service.evaluations.open(runtime, version)
    return campaign_id, 0


def _volunteer(service: Coordinator, source: str) -> str:
    row, _ = service.register_volunteer(f"v-{source}", {}, source=source)
    return row.id


def _losses(service: Coordinator, lease: EvalLease) -> list[float]:
    """What an honest volunteer computes: the checkpoint's loss on each of the unit's batches."""
    runtime = service.runtimes[lease.campaign_id]
    model = GPT(runtime.model_config)
    model.load_state_dict(load_weights(service.blobs.get(lease.checkpoint[0])))
    tokens = torch.frombuffer(bytearray(service.blobs.get(lease.data[0])), dtype=torch.uint16).to(torch.int64)
    batches = list(sequence_batches(tokens.numpy(), service.config.eval_batch, runtime.spec.inner.seq_len))
    assert len(batches) == lease.batches
    with torch.inference_mode():
        return [float(model.loss(x, y)) for x, y in batches]


def test_two_unrelated_volunteers_that_agree_settle_the_holdout_loss_and_are_credited(service: Coordinator) -> None:
    campaign_id, version = _open(service)
    service.evaluations.evaluator_joined()
    assert service.evaluations.pending(campaign_id, version), "the coordinator waits for its evaluators"
    a, b, b_sybil = (
        _volunteer(service, "10.0.1.0/24"),
        _volunteer(service, "10.0.2.0/24"),
        _volunteer(service, "10.0.1.0/24"),
    )
    first = service.evaluations.lease(a, "10.0.1.0/24", [campaign_id])
    assert first is not None
    assert service.evaluations.lease(b_sybil, "10.0.1.0/24", [campaign_id]) is None, "not from the same network"
    assert service.evaluations.lease(a, "10.0.1.0/24", [campaign_id]) is None, "one unit per volunteer and version"
    second = service.evaluations.lease(b, "10.0.2.0/24", [campaign_id])
    assert second is not None and second.data == first.data and second.checkpoint == first.checkpoint
    losses = _losses(service, first)
    held = service.evaluations.report(a, first.unit_id, first.lease_id, losses)
    assert (held.status, held.credit) == ("accepted", 0.0) and "another volunteer" in held.message
    # Another runtime's numbers (ONNX Runtime differs from torch by ~1e-6) agree.
    agreed = service.evaluations.report(b, second.unit_id, second.lease_id, [x * (1 + 1e-5) for x in losses])
    assert agreed.status == "accepted" and agreed.credit > 0
    settled = service.store.version(campaign_id, version)
    assert settled is not None and settled.holdout_loss == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert not service.evaluations.pending(campaign_id, version)
    credits = {v: service.store.volunteer(v).credit for v in (a, b)}  # type: ignore[union-attr]
    assert credits[a] == credits[b] == agreed.credit


def test_volunteers_that_disagree_settle_nothing_and_the_coordinator_measures_the_version(service: Coordinator) -> None:
    campaign_id, version = _open(service)
    service.evaluations.evaluator_joined()
    a, b = _volunteer(service, "10.0.1.0/24"), _volunteer(service, "10.0.2.0/24")
    first = service.evaluations.lease(a, "10.0.1.0/24", [campaign_id])
    second = service.evaluations.lease(b, "10.0.2.0/24", [campaign_id])
    assert first is not None and second is not None
    losses = _losses(service, first)
    service.evaluations.report(a, first.unit_id, first.lease_id, losses)
    # A made-up figure a little off: more than the tolerance.
    lying = service.evaluations.report(b, second.unit_id, second.lease_id, [x * (1 + 5 * EVAL_RTOL) for x in losses])
    assert (lying.status, lying.code) == ("rejected", "inconclusive")
    assert not service.evaluations.pending(campaign_id, version), "the coordinator measures it itself now"
    assert service.evaluations.settled_loss(campaign_id, version) is None
    assert all(service.store.volunteer(v).credit == 0 for v in (a, b))  # type: ignore[union-attr]


def test_the_coordinator_waits_for_evaluators_only_while_one_is_there_and_only_for_the_grace(
    service: Coordinator,
) -> None:
    campaign_id, version = _open(service)
    assert not service.evaluations.pending(campaign_id, version), "nobody evaluates: measured here at once"
    service.evaluations.evaluator_joined()
    assert service.evaluations.pending(campaign_id, version)
    service.clock.now += GRACE_S + 1  # type: ignore[attr-defined]
    assert not service.evaluations.pending(campaign_id, version), "nobody settled it in time"
    service.evaluations.evaluator_left()
    a, b, c = (_volunteer(service, f"10.0.{i}.0/24") for i in (1, 2, 3))
    assert service.evaluations.lease(a, "10.0.1.0/24", [campaign_id]) is not None
    assert service.evaluations.lease(b, "10.0.2.0/24", [campaign_id]) is not None
    assert service.evaluations.lease(c, "10.0.3.0/24", [campaign_id]) is None, "two results per version at most"
