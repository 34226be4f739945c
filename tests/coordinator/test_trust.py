"""Trust against volunteers who lie, driven in-process with real training and real SQLite.

Each test plays one attack from issue 9 against the campaign runtime and checks it is rejected or
made harmless, and that it earns nothing; the same attacks over real processes and sockets are in
tests/integration/test_attacks.py and `commonweights bench adversarial`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from coordinator.engine import Assignment, NoWork, SubmissionReport
from coordinator.engine.models import Outcome
from coordinator.service import Coordinator, CoordinatorConfig
from coordinator.validation import Candidate, ValidationPipeline
from tests.coordinator.test_runtime import Clock, lease, make_spec, volunteers
from tests.support.inprocess_volunteer import payload, train


@pytest.fixture
def service(tmp_path: Path, small_dataset: Path) -> Coordinator:
    config = CoordinatorConfig(data_dir=tmp_path / "coordinator", datasets={"small": small_dataset})
    coordinator = Coordinator.open(config, clock=Clock())
    coordinator.version_listeners.clear()
    return coordinator


EVIDENCE_CODES = {"implausible_loss", "holdout_regression", "not_from_unit", "direction_outlier", "norm_outlier"}


def _norm(tensors: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.norm()) ** 2 for t in tensors.values()))


def _submit(
    service: Coordinator, volunteer: str, unit: Assignment, delta: dict[str, torch.Tensor], report: SubmissionReport
) -> Outcome:
    runtime = service.runtimes[unit.campaign.id]
    return runtime.submit(volunteer, unit.unit.id, unit.lease_id, payload(service, unit, delta), report)


def _credit(service: Coordinator, volunteer: str) -> float:
    row = service.store.volunteer(volunteer)
    assert row is not None
    return row.credit


def _rejected_in_the_end(service: Coordinator, attacker: str, unit: Assignment, outcome: Outcome, honest: str) -> str:
    """The code `attacker`'s update for `unit` is finally rejected with: at once, or — when it was held
    for a weak fit to its data — once `honest` computes the replica and it disagrees."""
    if outcome.status == "rejected":
        return str(outcome.code)
    held = service.store.submission(unit.unit.id, attacker)
    assert held is not None and held.status == "pending_replica" and held.code == "not_from_unit", (outcome, held)
    assert _credit(service, attacker) == 0, "a held update earns nothing yet"
    replica = lease(service, honest)
    assert replica.unit.replica_of == unit.unit.id, "the held update's replica is the next unit out"
    assert _submit(service, honest, replica, *train(service, replica)).status == "accepted"
    settled = service.store.submission(unit.unit.id, attacker)
    assert settled is not None and settled.status == "rejected", settled
    return str(settled.code)


# Units long enough for what training does to them to show (the evidence check measures it).
INNER = {"steps": 10, "batch_size": 4, "seq_len": 64, "warmup_steps": 0, "lr": 0.003}


def _campaign(service: Coordinator, **changes: object) -> int:
    settings: dict[str, object] = {
        "codec": "fp32",
        "inner": INNER,
        "rounds": {"units_per_round": 3, "min_accepted": 3, "lease_s": 60, "deadline_s": 600},
    }
    return service.create_campaign(make_spec(**(settings | changes)), owner="admin:1")


def test_honest_updates_of_new_volunteers_are_measured_and_accepted(service: Coordinator) -> None:
    campaign_id = _campaign(service)
    vols = volunteers(service, 3)
    for _ in range(2):
        for v in vols:
            unit = lease(service, v)
            outcome = _submit(service, v, unit, *train(service, unit))
            assert outcome.status == "accepted", outcome.message
    gains, fits = service.runtimes[campaign_id].state.cohort.evidence(1)
    assert len(gains) == 3 and len(fits) == 3, "new volunteers' updates are all measured"
    assert all(_credit(service, v) > 0 for v in vols)


def test_a_free_rider_reporting_the_public_holdout_loss_is_rejected_and_earns_nothing(service: Coordinator) -> None:
    _campaign(service)
    honest, rider = volunteers(service, 2)
    unit = lease(service, honest)
    delta, report = train(service, unit)
    assert _submit(service, honest, unit, delta, report).status == "accepted"
    unit = lease(service, rider)
    noise = {n: torch.randn_like(t) for n, t in delta.items()}
    scale = _norm(delta) / _norm(noise)
    public = service.store.version(unit.campaign.id, 0)
    assert public is not None
    loss = public.holdout_loss or report.losses[0]  # what the versions page shows, or a peer's number
    fake = SubmissionReport(losses=[loss] * len(report.losses), tokens=report.tokens, seconds=1.0)
    outcome = _submit(service, rider, unit, {n: t * scale for n, t in noise.items()}, fake)
    # At θ_0 every batch's loss is about ln(vocabulary), so the copied loss may pass; the noise does not.
    assert _rejected_in_the_end(service, rider, unit, outcome, honest) in EVIDENCE_CODES
    assert _credit(service, rider) == 0


def test_updates_that_do_not_come_from_training_on_the_unit_are_rejected(service: Coordinator) -> None:
    """Sign flip, noise at an honest norm and a shrunken update, each with the unit's true first loss,
    once a few honest updates of the version show what training does."""
    campaign_id = _campaign(service, rounds={"units_per_round": 7, "min_accepted": 7, "lease_s": 60, "deadline_s": 600})
    honest = volunteers(service, 3)
    attackers = volunteers(service, 3)
    kept: list[dict[str, torch.Tensor]] = []
    for v in honest:
        unit = lease(service, v)
        delta, report = train(service, unit)
        kept.append(delta)
        assert _submit(service, v, unit, delta, report).status == "accepted"
    forgeries = {
        "sign_flip": lambda d: {n: -t for n, t in d.items()},
        "noise": lambda d: {n: torch.randn_like(t) * (_norm(d) / math.sqrt(t.numel() * len(d))) for n, t in d.items()},
        "scale_down": lambda d: {n: 0.02 * t for n, t in d.items()},
    }
    for attacker, (kind, forge) in zip(attackers, forgeries.items(), strict=True):
        unit = lease(service, attacker)
        delta, report = train(service, unit)  # it trains, so its first loss is right; then it lies
        outcome = _submit(service, attacker, unit, forge(delta), report)
        assert _rejected_in_the_end(service, attacker, unit, outcome, honest[0]) in EVIDENCE_CODES, kind
        assert _credit(service, attacker) == 0, kind
    assert service.store.campaign(campaign_id).current_version == 0  # type: ignore[union-attr]


def test_a_replayed_update_from_an_earlier_unit_is_rejected(service: Coordinator) -> None:
    campaign_id = _campaign(service, rounds={"units_per_round": 2, "min_accepted": 2, "lease_s": 60, "deadline_s": 600})
    a, b = volunteers(service, 2)
    old: dict[str, torch.Tensor] = {}
    for v in (a, b):
        unit = lease(service, v)
        delta, report = train(service, unit)
        old = old or delta
        assert _submit(service, v, unit, delta, report).status == "accepted"
    assert service.store.campaign(campaign_id).current_version == 1  # type: ignore[union-attr]
    unit = lease(service, b)
    _, report = train(service, unit)  # the true losses of the new unit, with an old update
    outcome = _submit(service, b, unit, old, report)
    assert _rejected_in_the_end(service, b, unit, outcome, a) in EVIDENCE_CODES


def test_a_replica_never_goes_to_a_volunteer_from_the_same_network(service: Coordinator) -> None:
    campaign_id = _campaign(
        service,
        validation={"replication_rate": 1.0},
        rounds={"units_per_round": 2, "min_accepted": 1, "lease_s": 3600, "deadline_s": 600},
    )
    runtime = service.runtimes[campaign_id]
    sybil_a = service.register_volunteer("a", {}, source="198.51.100.0/24")[0].id
    sybil_b = service.register_volunteer("b", {}, source="198.51.100.0/24")[0].id
    stranger = service.register_volunteer("c", {}, source="203.0.113.0/24")[0].id
    first = lease(service, sybil_a)
    replica = service.store.replica_of(first.unit.id)
    assert replica is not None
    second = lease(service, sybil_b)
    assert second.unit.id != replica.id, "a Sybil got its twin's replica"
    third = lease(service, stranger)
    assert third.unit.replica_of in (first.unit.id, second.unit.id)
    original, owner = (first, sybil_a) if third.unit.replica_of == first.unit.id else (second, sybil_b)
    # The original waits for its replica: it is valid, but neither counted nor credited yet.
    outcome = _submit(service, owner, original, *train(service, original))
    assert outcome.status == "accepted" and "replica" in outcome.message
    assert _credit(service, owner) == 0 and runtime.round is not None and runtime.round.accepted == 0
    service.clock.now += 601  # type: ignore[attr-defined]  # past the round's deadline
    runtime.tick()
    assert service.store.campaign(campaign_id).current_version == 0, "a round closed on an unreplicated update"  # type: ignore[union-attr]
    outcome = _submit(service, stranger, third, *train(service, third))
    assert outcome.status == "accepted", outcome.message
    assert _credit(service, owner) > 0 and _credit(service, stranger) > 0


def test_a_volunteer_holds_at_most_its_campaigns_number_of_leases(service: Coordinator) -> None:
    spec = make_spec(rounds={"units_per_round": 8, "min_accepted": 2, "max_leases_per_volunteer": 2})
    service.create_campaign(spec, owner="admin:1")
    (hog,) = volunteers(service, 1)
    lease(service, hog)
    lease(service, hog)
    row = service.store.volunteer(hog)
    assert row is not None
    answer = service.assign_work(row, memory_bytes=8 << 30)
    assert isinstance(answer, NoWork) and "holds 2" in answer.reason


def test_units_held_by_new_identities_do_not_starve_the_round(service: Coordinator) -> None:
    spec = make_spec(rounds={"units_per_round": 2, "min_accepted": 2, "max_leases_per_volunteer": 1})
    service.create_campaign(spec, owner="admin:1")
    hogs = volunteers(service, 2)
    for hog in hogs:
        lease(service, hog)  # and never returned
    honest = service.register_volunteer("honest", {})[0]
    assert isinstance(service.assign_work(honest, memory_bytes=8 << 30), Assignment)


def test_progress_without_finished_steps_stops_extending_the_lease(service: Coordinator) -> None:
    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    runtime = service.runtimes[campaign_id]
    (v,) = volunteers(service, 1)
    unit = lease(service, v)
    clock = service.clock
    deadlines = []
    for _ in range(5):
        clock.now += 10  # type: ignore[attr-defined]
        deadlines.append(runtime.heartbeat(v, unit.unit.id, unit.lease_id, step=0))
    assert deadlines[0] < deadlines[1] < deadlines[2], "a few reports without a step still extend"
    assert deadlines[4] == deadlines[3], "then the lease runs out unless steps are finished"
    clock.now += 10  # type: ignore[attr-defined]
    assert runtime.heartbeat(v, unit.unit.id, unit.lease_id, step=1) > deadlines[4]  # type: ignore[operator]


def test_a_slice_never_trained_is_handed_out_again_before_the_cursor_moves(service: Coordinator) -> None:
    campaign_id = _campaign(service, rounds={"units_per_round": 2, "min_accepted": 1})
    runtime = service.runtimes[campaign_id]
    a, b = volunteers(service, 2)
    unit_a, unit_b = lease(service, a), lease(service, b)
    runtime.abandon(b, unit_b.unit.id, unit_b.lease_id)
    assert _submit(service, a, unit_a, *train(service, unit_a)).status == "accepted"  # closes the round
    assert service.store.unit(unit_b.unit.id).state == "cancelled"  # type: ignore[union-attr]
    again = lease(service, a)
    assert (again.unit.id, again.unit.data_start) == (unit_b.unit.id, unit_b.unit.data_start)
    assert again.unit.version == 1


def test_the_bytes_of_rejected_updates_are_freed_after_an_hour_and_the_slice_is_trained_by_someone_else(
    service: Coordinator,
) -> None:
    service.clock.now = time.time()  # type: ignore[attr-defined]  # blob files age in real time
    campaign_id = _campaign(service, rounds={"units_per_round": 2, "min_accepted": 2, "lease_s": 60, "deadline_s": 600})
    runtime = service.runtimes[campaign_id]
    attacker, honest = volunteers(service, 2)
    unit = lease(service, attacker)
    junk = bytes(range(256)) * 64
    report = SubmissionReport(losses=[5.0] * 10, tokens=10 * 4 * 64, seconds=1.0)
    outcome = runtime.submit(attacker, unit.unit.id, unit.lease_id, junk, report)
    assert (outcome.status, outcome.code) == ("rejected", "bad_encoding")
    rejected = service.store.submission(unit.unit.id, attacker)
    assert rejected is not None and service.blobs.exists(rejected.update_sha)
    again = lease(service, honest)
    assert again.unit.id == unit.unit.id, "the rejected unit's slice goes to the next volunteer"
    assert _submit(service, honest, again, *train(service, again)).status == "accepted"
    accepted = service.store.submission(unit.unit.id, honest)
    assert accepted is not None
    service.clock.now += 1800  # type: ignore[attr-defined]
    runtime.tick()
    assert service.blobs.exists(rejected.update_sha), "kept for an hour, for the admins to look at"
    service.clock.now += 3600  # type: ignore[attr-defined]
    runtime.tick()
    assert not service.blobs.exists(rejected.update_sha)
    assert service.blobs.exists(accepted.update_sha)
    assert service.store.submission(unit.unit.id, attacker) is not None, "the record of the rejection stays"


def test_an_update_that_copies_a_blob_the_coordinator_keeps_is_rejected_and_the_blob_is_not_freed(
    service: Coordinator,
) -> None:
    """A volunteer may download checkpoints, its data slices and ONNX graphs: sending one of them back
    as an "update" must not get it deleted with the rejected updates an hour later."""
    service.clock.now = time.time()  # type: ignore[attr-defined]  # blob files age in real time
    campaign_id = _campaign(service, rounds={"units_per_round": 2, "min_accepted": 2, "lease_s": 60, "deadline_s": 600})
    runtime = service.runtimes[campaign_id]
    (attacker,) = volunteers(service, 1)
    report = SubmissionReport(losses=[5.0] * 10, tokens=10 * 4 * 64, seconds=1.0)
    kept = []
    for blob in ("checkpoint", "data"):
        unit = lease(service, attacker)
        digest = unit.checkpoint.checkpoint_sha if blob == "checkpoint" else unit.unit.data_sha
        outcome = runtime.submit(attacker, unit.unit.id, unit.lease_id, service.blobs.get(digest), report)
        assert outcome.status == "rejected", (blob, outcome)
        kept.append(digest)
    service.clock.now += 2 * 3600  # type: ignore[attr-defined]
    runtime.tick()
    assert all(service.blobs.exists(digest) for digest in kept)


def test_an_update_scaled_after_training_is_rejected_even_before_any_honest_update_is_in(service: Coordinator) -> None:
    """×0.05 and ×−0.5 leave the unit's own batches where the reported losses say they weren't, with
    nothing to compare against yet (the first updates of a campaign decide what its norms look like);
    ×2 still descends, and is caught by the norms of updates trained from the same version."""
    _campaign(service, rounds={"units_per_round": 6, "min_accepted": 6, "lease_s": 60, "deadline_s": 600})
    honest = volunteers(service, 3)
    attackers = volunteers(service, 3)
    for attacker, factor in zip(attackers[:2], (0.05, -0.5), strict=True):
        unit = lease(service, attacker)
        delta, report = train(service, unit)
        outcome = _submit(service, attacker, unit, {n: factor * t for n, t in delta.items()}, report)
        assert (outcome.status, outcome.code) == ("rejected", "implausible_loss"), (factor, outcome)
        assert "reported losses" in outcome.message
    for v in honest:
        unit = lease(service, v)
        assert _submit(service, v, unit, *train(service, unit)).status == "accepted"
    unit = lease(service, attackers[2])
    delta, report = train(service, unit)
    outcome = _submit(service, attackers[2], unit, {n: 2 * t for n, t in delta.items()}, report)
    assert (outcome.status, outcome.code) == ("rejected", "norm_outlier"), outcome
    assert "same version" in outcome.message
    assert all(_credit(service, a) == 0 for a in attackers)


def test_two_unrelated_volunteers_who_computed_the_same_weakly_fitting_update_are_neither_credited_nor_blamed(
    service: Coordinator,
) -> None:
    """Honest work on uniform text, or colluders on two networks sending one forgery: nothing tells
    them apart, so the pair is inconclusive."""
    campaign_id = _campaign(service, rounds={"units_per_round": 2, "min_accepted": 2, "lease_s": 60, "deadline_s": 600})
    runtime = service.runtimes[campaign_id]
    # A bar no update clears stands for text so uniform that training on it helps the text beside it
    # as much as itself: the fit can't tell honest work there from a copy.
    runtime.state.pipeline = ValidationPipeline.default(min_fit=50.0)
    a, b = volunteers(service, 2)
    unit = lease(service, a)
    outcome = _submit(service, a, unit, *train(service, unit))
    assert outcome.status == "accepted" and "Held until a replica" in outcome.message, outcome
    assert _credit(service, a) == 0
    replica = lease(service, b)
    assert replica.unit.replica_of == unit.unit.id
    outcome = _submit(service, b, replica, *train(service, replica))
    assert (outcome.status, outcome.code) == ("rejected", "inconclusive"), outcome
    held = service.store.submission(unit.unit.id, a)
    assert held is not None and (held.status, held.code) == ("rejected", "inconclusive"), held
    assert _credit(service, a) == 0 and _credit(service, b) == 0
    for v in (a, b):
        row = service.store.volunteer(v)
        assert row is not None and row.errors == 0, "no mark against either"


def test_the_replica_of_an_update_held_a_version_late_trains_exactly_as_its_twin_did(service: Coordinator) -> None:
    campaign_id = _campaign(
        service, rounds={"units_per_round": 2, "min_accepted": 1, "lease_s": 600, "deadline_s": 600}
    )
    runtime = service.runtimes[campaign_id]
    late, prompt, replicator = volunteers(service, 3)
    unit = lease(service, late)
    other = lease(service, prompt)
    assert _submit(service, prompt, other, *train(service, other)).status == "accepted"
    assert service.store.campaign(campaign_id).current_version == 1  # type: ignore[union-attr]
    runtime.state.pipeline = ValidationPipeline.default(min_fit=50.0)  # every fit is too weak to tell now
    outcome = _submit(service, late, unit, *train(service, unit))
    assert outcome.status == "accepted" and "Held until a replica" in outcome.message, outcome
    replica = lease(service, replicator)
    assert replica.unit.replica_of == unit.unit.id
    assert (replica.checkpoint.version, replica.global_step) == (unit.checkpoint.version, unit.global_step)
    outcome = _submit(service, replicator, replica, *train(service, replica))
    assert outcome.code == "inconclusive", "the two agree (they would not from different versions)"


@pytest.mark.parametrize("attacker_first", [False, True], ids=["honest-first", "attacker-first"])
def test_when_replicas_disagree_the_one_that_fails_the_measured_checks_loses_alone(
    service: Coordinator, attacker_first: bool
) -> None:
    """An attacker whose updates go unmeasured (trusted, or a campaign that samples none) sends a sign
    flip as the replica of an honest unit. Both are measured once they disagree: the honest one counts
    and is credited, the flip is rejected for what it fails — not both for the mismatch."""
    campaign_id = _campaign(
        service,
        validation={"replication_rate": 1.0, "holdout_check_rate": 0.0},
        rounds={"units_per_round": 2, "min_accepted": 1, "lease_s": 600, "deadline_s": 600},
    )
    honest, attacker = volunteers(service, 2)
    first, second = (attacker, honest) if attacker_first else (honest, attacker)
    unit = lease(service, first)
    replica = lease(service, second)
    assert replica.unit.replica_of == unit.unit.id
    units = {first: unit, second: replica}
    outcomes = {}
    for v in (first, second):
        delta, report = train(service, units[v])
        if v == attacker:
            delta = {n: -t for n, t in delta.items()}
        outcomes[v] = _submit(service, v, units[v], delta, report)
    settled = {v: service.store.submission(units[v].unit.id, v) for v in (honest, attacker)}
    assert settled[honest] is not None and settled[honest].status == "accepted", settled[honest]
    assert settled[attacker] is not None and settled[attacker].status == "rejected"
    assert settled[attacker].code in EVIDENCE_CODES, settled[attacker]
    assert "its replica, which passed every check, disagrees" in settled[attacker].message
    assert _credit(service, honest) > 0 and _credit(service, attacker) == 0
    assert service.store.campaign(campaign_id).current_version == 1, "the honest update closed the round"  # type: ignore[union-attr]
    row = service.store.volunteer(honest)
    assert row is not None and row.errors == 0


def test_a_direction_set_by_early_attackers_does_not_reject_measured_honest_work(service: Coordinator) -> None:
    """Sign flips that slipped in first (at θ_0 with tied embeddings −Δ also lowers the loss, so they
    can pass the evidence check) set the cohort's running direction against honest work; honest
    updates are measured with the model and accepted all the same. Unmeasured ones still face the
    direction check."""
    campaign_id = _campaign(service)
    state = service.runtimes[campaign_id].state
    (honest,) = volunteers(service, 1)
    unit = lease(service, honest)
    row = state.store.unit(unit.unit.id)
    assert row is not None
    delta, report = train(service, unit)
    flipped = {n: -t for n, t in delta.items()}
    for _ in range(3):  # what Sybils replicating each other's flipped units leave in the cohort
        state.cohort.record(state.candidate(row, flipped, report.losses, report.tokens))
    unmeasured = state.candidate(row, delta, report.losses, report.tokens)
    verdict = state.pipeline.validate(unmeasured, state.cohort)
    assert verdict.code == "direction_outlier", "the poisoned direction rejects what it can't measure"
    outcome = _submit(service, honest, unit, delta, report)
    assert outcome.status == "accepted", outcome.message
    assert _credit(service, honest) > 0


def test_an_unmeasured_update_a_cohort_heuristic_flags_is_measured_before_it_is_rejected(
    service: Coordinator,
) -> None:
    """A trusted volunteer's unsampled update whose first loss is far from the version's (honest work
    on unusual text) is measured with the model, and the measurement accepts it."""
    campaign_id = _campaign(service)
    state = service.runtimes[campaign_id].state
    state.wants_evidence = lambda volunteer_id: False  # type: ignore[method-assign]  # trusted, not sampled
    (honest,) = volunteers(service, 1)
    unit = lease(service, honest)
    row = state.store.unit(unit.unit.id)
    assert row is not None
    delta, report = train(service, unit)
    for _ in range(3):  # units of the same version whose text was far easier
        state.cohort.record(state.candidate(row, delta, [x - 3.0 for x in report.losses], report.tokens))
    unmeasured = state.candidate(row, delta, report.losses, report.tokens)
    assert state.pipeline.validate(unmeasured, state.cohort).code == "implausible_loss"
    outcome = _submit(service, honest, unit, delta, report)
    assert outcome.status == "accepted", outcome.message
    assert _credit(service, honest) > 0


@pytest.mark.parametrize(("gains", "loser"), [((0.03, -0.01), "b"), ((-0.01, 0.03), "a"), ((0.03, 0.01), None)])
def test_of_two_disagreeing_replicas_that_pass_the_one_whose_step_raises_the_holdout_loss_loses(
    gains: tuple[float, float], loser: str | None
) -> None:
    from coordinator.engine.ingest import _tie_break
    from coordinator.validation import Verdict
    from coordinator.validation.evidence import Measurements

    def measured(gain: float) -> Candidate:
        candidate = Candidate(
            delta={"w": torch.ones(2)}, expected_shapes={"w": (2,)}, losses=[1.0], steps=1, tokens=1, expected_tokens=1
        )
        candidate.__dict__["measurements"] = Measurements(first_loss=1.0, holdout_gain=gain, fit=0.5)
        return candidate

    passed = Verdict(True, None, "accepted")
    a, b = _tie_break(measured(gains[0]), passed, measured(gains[1]), passed)
    lost = {"a": a, "b": b}
    for name, verdict in lost.items():
        if name == loser:
            assert (verdict.accepted, verdict.code) == (False, "holdout_regression") and "replica" in verdict.message
        else:
            assert verdict.accepted
