"""`check` units (coordinator/engine/ingest.py, coordinator/evaluations.py): an update the coordinator
did not measure waits while two unrelated forward-only volunteers measure the holdout loss of θ_v with a
small step along it; it counts when that loss does not rise, is rejected when it does, and the
coordinator measures it itself when volunteers don't settle it — in time, in agreement, or before a
restart."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator.engine import Assignment, CampaignRuntime
from coordinator.evaluations import EVAL_RTOL, EvalLease
from coordinator.service import Coordinator, CoordinatorConfig
from coordinator.validation.evidence import DESCENT_STEP
from tests.coordinator.test_evaluations import _losses
from tests.coordinator.test_runtime import Clock, lease, make_spec
from tests.support.inprocess_volunteer import payload, train
from training.checkpoint import load_weights

GRACE_S = 60.0
CHECKERS = ("10.0.1.0/24", "10.0.2.0/24")
TRAINER = "10.0.9.0/24"


def _config(tmp_path: Path, small_dataset: Path) -> CoordinatorConfig:
    return CoordinatorConfig(
        data_dir=tmp_path / "coordinator", datasets={"small": small_dataset}, eval_grace_s=GRACE_S, eval_tokens=4096
    )


@pytest.fixture
def service(tmp_path: Path, small_dataset: Path) -> Coordinator:
    return Coordinator.open(_config(tmp_path, small_dataset), clock=Clock())


def _campaign(service: Coordinator) -> CampaignRuntime:
    # Nothing measured by the coordinator and nothing replicated: every update waits for its check.
    spec = make_spec(codec="fp32", validation={"replication_rate": 0.0, "holdout_check_rate": 0.0, "check_rate": 1.0})
    campaign_id = service.create_campaign(spec, owner="test")
    job = service.eval_job(campaign_id, 0)
    assert job is not None
    service.store.set_holdout_loss(campaign_id, 0, job())  # what the coordinator's evaluator does
    return service.runtimes[campaign_id]


def _checkers(service: Coordinator) -> list[str]:
    ids = []
    for source in CHECKERS:
        ids.append(service.register_volunteer(f"checker {source}", {}, source=source)[0].id)
        service.evaluations.checker_joined(source)
    return ids


def _trained(service: Coordinator) -> tuple[str, Assignment, dict[str, torch.Tensor]]:
    trainer = service.register_volunteer("trainer", {}, source=TRAINER)[0].id
    unit = lease(service, trainer)
    delta, _ = train(service, unit)
    return trainer, unit, delta


def _submit(service: Coordinator, trainer: str, unit: Assignment, delta: dict[str, torch.Tensor]) -> str:
    _, report = train(service, unit)
    runtime = service.runtimes[unit.campaign.id]
    outcome = runtime.submit(trainer, unit.unit.id, unit.lease_id, payload(service, unit, delta), report)
    assert outcome.status == "accepted", outcome
    return outcome.message


def _status(service: Coordinator, unit: Assignment) -> tuple[str, str | None, str]:
    (sub,) = service.store.submissions_for_unit(unit.unit.id)
    return sub.status, sub.code, sub.message


def _check_leases(service: Coordinator, checkers: list[str], campaign_id: int) -> list[EvalLease]:
    leases = []
    for volunteer, source in zip(checkers, CHECKERS, strict=True):
        got = service.evaluations.lease(volunteer, source, [campaign_id], ("check",))
        assert got is not None and got.kind == "check"
        leases.append(got)
    return leases


def test_an_update_counts_once_two_volunteers_check_that_a_step_along_it_does_not_raise_the_holdout_loss(
    service: Coordinator,
) -> None:
    runtime = _campaign(service)
    checkers = _checkers(service)
    trainer, unit, delta = _trained(service)
    message = _submit(service, trainer, unit, delta)
    assert "holdout check" in message
    assert _status(service, unit)[0] == "pending_check"
    assert runtime.round is not None and runtime.round.accepted == 0, "it does not count before its check"
    assert service.evaluations.lease(trainer, TRAINER, [runtime.row.id], ("check",)) is None, "not its own update"
    assert service.evaluations.lease(trainer, TRAINER, [runtime.row.id], ("evaluate",)) is None, "kinds asked for"
    first, second = _check_leases(service, checkers, runtime.row.id)
    assert first.checkpoint == second.checkpoint and first.version == 0
    # What the checkers get is θ_0 − η·Δ: the update's step, made by the coordinator.
    served = load_weights(service.blobs.get(first.checkpoint[0]))
    theta = runtime.state.theta(0)
    for name, tensor in theta.items():
        torch.testing.assert_close(served[name], tensor - DESCENT_STEP * delta[name], rtol=0, atol=1e-6)
    losses = _losses(service, first)
    held = service.evaluations.report(checkers[0], first.unit_id, first.lease_id, losses)
    assert (held.status, held.credit) == ("accepted", 0.0)
    runtime.tick()
    assert _status(service, unit)[0] == "pending_check", "one volunteer's figure decides nothing"
    agreed = service.evaluations.report(checkers[1], second.unit_id, second.lease_id, [x * (1 + 1e-5) for x in losses])
    assert agreed.status == "accepted" and agreed.credit > 0
    runtime.tick()
    status, code, message = _status(service, unit)
    assert (status, code) == ("accepted", None) and "two volunteers" in message
    assert runtime.round is not None and runtime.round.accepted == 1
    volunteer = service.store.volunteer(trainer)
    assert volunteer is not None and volunteer.credit > 0 and volunteer.units_accepted == 1
    assert not service.blobs.exists(first.checkpoint[0]), "the stepped weights are freed once settled"


def test_an_update_that_a_step_along_raises_the_holdout_loss_is_rejected_and_its_slice_trained_again(
    service: Coordinator,
) -> None:
    runtime = _campaign(service)
    checkers = _checkers(service)
    trainer, unit, delta = _trained(service)
    # The first update of the round: no cohort yet, so norm and direction checks can't judge it.
    _submit(service, trainer, unit, {n: -40 * t for n, t in delta.items()})
    assert _status(service, unit)[0] == "pending_check"
    leases = _check_leases(service, checkers, runtime.row.id)
    losses = _losses(service, leases[0])
    base = service.store.version(runtime.row.id, 0)
    assert base is not None and base.holdout_loss is not None
    assert sum(losses) / len(losses) > base.holdout_loss + 0.02, "the flipped step goes uphill"
    for volunteer, got in zip(checkers, leases, strict=True):
        service.evaluations.report(volunteer, got.unit_id, got.lease_id, losses)
    runtime.tick()
    status, code, message = _status(service, unit)
    assert (status, code) == ("rejected", "holdout_regression") and "two volunteers" in message
    assert runtime.round is not None and runtime.round.accepted == 0
    assert all(service.store.volunteer(c).credit > 0 for c in checkers)  # type: ignore[union-attr]
    assert service.store.volunteer(trainer).units_rejected == 1  # type: ignore[union-attr]
    again = service.store.unit(unit.unit.id)
    assert again is not None and again.state == "cancelled", "the slice goes out again"


@pytest.mark.parametrize("how", ["nobody_in_time", "disagreeing", "restart"])
def test_the_coordinator_measures_an_update_its_checkers_did_not_settle(
    service: Coordinator, tmp_path: Path, small_dataset: Path, how: str
) -> None:
    runtime = _campaign(service)
    checkers = _checkers(service)
    trainer, unit, delta = _trained(service)
    _submit(service, trainer, unit, delta)
    if how == "nobody_in_time":
        runtime.tick()
        assert _status(service, unit)[0] == "pending_check", "within the grace, it waits"
        service.clock.now += GRACE_S + 1  # type: ignore[attr-defined]
    elif how == "disagreeing":
        first, second = _check_leases(service, checkers, runtime.row.id)
        losses = _losses(service, first)
        service.evaluations.report(checkers[0], first.unit_id, first.lease_id, losses)
        answer = service.evaluations.report(
            checkers[1], second.unit_id, second.lease_id, [x * (1 + 5 * EVAL_RTOL) for x in losses]
        )
        assert answer.code == "inconclusive"
    else:
        service.close()
        service = Coordinator.open(_config(tmp_path, small_dataset), clock=Clock())
        runtime = service.runtimes[runtime.row.id]
    runtime.tick()
    status, _, message = _status(service, unit)
    assert status == "accepted" and "measured by the coordinator" in message
    assert runtime.round is not None and runtime.round.accepted == 1
    if how == "disagreeing":
        assert all(service.store.volunteer(c).credit == 0 for c in checkers)  # type: ignore[union-attr]


def test_updates_wait_for_a_check_only_while_two_unrelated_checkers_are_connected(service: Coordinator) -> None:
    runtime = _campaign(service)
    service.register_volunteer("checker", {}, source=CHECKERS[0])
    service.evaluations.checker_joined(CHECKERS[0])
    service.evaluations.checker_joined(TRAINER)  # the trainer's own network does not count
    trainer, unit, delta = _trained(service)
    _submit(service, trainer, unit, delta)
    assert _status(service, unit)[0] == "accepted"
    assert runtime.round is not None and runtime.round.accepted == 1
