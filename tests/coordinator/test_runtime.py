"""The coordinator's campaign runtime, driven in-process with real training and real SQLite."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import torch

from coordinator.campaign import CampaignSpec
from coordinator.engine import Assignment, NoWork
from coordinator.engine.states import UnitState
from coordinator.service import Coordinator, CoordinatorConfig
from protocol.checkpoints import apply_delta
from tests.support.backends import Backend
from tests.support.inprocess_volunteer import nan_frame, payload, train
from training.checkpoint import load_weights


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_spec(**changes: object) -> CampaignSpec:
    data: dict[str, object] = {
        "name": "test",
        "dataset": "small",
        "model": "tiny",
        "token_budget": 100_000,
        "codec": "int8",
        "inner": {"steps": 3, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
        "rounds": {"units_per_round": 2, "min_accepted": 2, "lease_s": 60, "deadline_s": 600},
        "validation": {"replication_rate": 0.0},
    }
    data.update(changes)
    return CampaignSpec.from_dict(data)


def config_for(backend: Backend, data_dir: Path, small_dataset: Path) -> CoordinatorConfig:
    return CoordinatorConfig(
        data_dir=data_dir, database=backend.database, blobs=backend.blobs, datasets={"small": small_dataset}
    )


@pytest.fixture
def service(tmp_path: Path, small_dataset: Path, backend: Backend) -> Iterator[Coordinator]:
    coordinator = Coordinator.open(config_for(backend, tmp_path / "coordinator", small_dataset), clock=Clock())
    coordinator.version_listeners.clear()
    yield coordinator
    coordinator.close()


def volunteers(service: Coordinator, n: int) -> list[str]:
    return [service.register_volunteer(f"v{i}", {})[0].id for i in range(n)]


def lease(service: Coordinator, volunteer_id: str) -> Assignment:
    row = service.store.volunteer(volunteer_id)
    assert row is not None
    answer = service.assign_work(row, memory_bytes=8 << 30)
    assert isinstance(answer, Assignment), answer
    return answer


def submit_honest(service: Coordinator, volunteer_id: str) -> tuple[Assignment, str]:
    unit = lease(service, volunteer_id)
    delta, report = train(service, unit)
    outcome = service.runtimes[unit.campaign.id].submit(
        volunteer_id, unit.unit.id, unit.lease_id, payload(service, unit, delta), report
    )
    return unit, outcome.status


def test_a_round_closes_on_quorum_and_publishes_the_next_version(service: Coordinator) -> None:
    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    a, b = volunteers(service, 2)
    unit_a, status_a = submit_honest(service, a)
    assert status_a == "accepted"
    assert service.store.campaign(campaign_id).current_version == 0  # type: ignore[union-attr]
    unit_b, status_b = submit_honest(service, b)
    assert status_b == "accepted"
    assert unit_a.unit.data_start != unit_b.unit.data_start, "two units of a round got the same slice"
    campaign = service.store.campaign(campaign_id)
    assert campaign is not None and campaign.current_version == 1
    v0, v1 = (load_weights(service.blobs.get(v.checkpoint_sha)) for v in service.store.versions(campaign_id))
    assert any(not torch.equal(v0[n], v1[n]) for n in v0)
    assert campaign.tokens_trained == 2 * 3 * 2 * 32
    volunteer = service.store.volunteer(a)
    assert volunteer is not None and volunteer.credit > 0 and volunteer.units_accepted == 1


def test_holdout_loss_falls_over_a_few_rounds(service: Coordinator) -> None:
    spec = make_spec(
        inner={"steps": 10, "batch_size": 4, "seq_len": 64, "warmup_steps": 0, "lr": 0.003},
        outer={"optimizer": "nesterov", "lr": 0.7},
    )
    campaign_id = service.create_campaign(spec, owner="admin:1")
    vols = volunteers(service, 2)
    for _ in range(4):
        for v in vols:
            submit_honest(service, v)
    service.evaluate_pending()
    losses = [v.holdout_loss for v in service.store.versions(campaign_id)]
    assert len(losses) == 5 and all(loss is not None for loss in losses)
    assert losses[-1] < losses[0] - 0.5, losses  # type: ignore[operator]


@pytest.mark.parametrize(
    "tamper, code",
    [("nan", "non_finite"), ("norm100", "norm_outlier"), ("anti_consensus", "direction_outlier")],
)
def test_bad_updates_are_rejected_with_their_reason_and_training_goes_on(
    service: Coordinator, tamper: str, code: str
) -> None:
    # Nothing measured with the model (holdout_check_rate 0): the cohort checks alone judge, as they do
    # a trusted volunteer's unsampled update (a measured one is left to the evidence check).
    spec = make_spec(
        codec="fp32",
        rounds={"units_per_round": 4, "min_accepted": 4},
        validation={"replication_rate": 0.0, "holdout_check_rate": 0.0},
    )
    campaign_id = service.create_campaign(spec, owner="admin:1")
    runtime = service.runtimes[campaign_id]
    honest = volunteers(service, 3)
    honest_deltas = []
    for v in honest:
        unit = lease(service, v)
        delta, report = train(service, unit)
        honest_deltas.append(delta)
        assert (
            runtime.submit(v, unit.unit.id, unit.lease_id, payload(service, unit, delta), report).status == "accepted"
        )
    (bad,) = volunteers(service, 1)
    unit = lease(service, bad)
    delta, report = train(service, unit)
    if tamper == "nan":
        data = nan_frame(delta)
    elif tamper == "norm100":
        data = payload(service, unit, {n: t * 100 for n, t in delta.items()})
    else:
        # Poisoning: push against what the cohort agrees on, at an honest-looking size. (Honest
        # updates of short units are only weakly aligned, cosine ~0.1, so the direction check
        # targets this kind of attack rather than any single flipped update.)
        consensus = {n: sum(d[n] for d in honest_deltas) / len(honest_deltas) for n in delta}
        scale = _norm(delta) / _norm(consensus)
        data = payload(service, unit, {n: -t * scale for n, t in consensus.items()})
    outcome = runtime.submit(bad, unit.unit.id, unit.lease_id, data, report)
    assert (outcome.status, outcome.code) == ("rejected", code), outcome.message
    assert service.store.rejection_counts(campaign_id) == {code: 1}
    # The unit goes back to the pool and an honest volunteer completes the round.
    _, status = submit_honest(service, honest[0])
    assert status == "accepted"
    assert service.store.campaign(campaign_id).current_version == 1  # type: ignore[union-attr]


def _norm(tensors: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values())))  # type: ignore[arg-type]


def test_wrong_shapes_are_rejected_before_anything_is_allocated_for_them(service: Coordinator) -> None:
    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    (v,) = volunteers(service, 1)
    unit = lease(service, v)
    delta, report = train(service, unit)
    name = next(iter(delta))
    delta[name] = torch.zeros(3, 3)
    outcome = service.runtimes[campaign_id].submit(
        v, unit.unit.id, unit.lease_id, payload(service, unit, delta), report
    )
    assert (outcome.status, outcome.code) == ("rejected", "shape_mismatch")
    assert "shape" in outcome.message


def test_a_resent_update_gets_the_same_answer_and_counts_once(service: Coordinator) -> None:
    campaign_id = service.create_campaign(make_spec(rounds={"units_per_round": 3, "min_accepted": 3}), owner="admin:1")
    (v,) = volunteers(service, 1)
    unit = lease(service, v)
    delta, report = train(service, unit)
    data = payload(service, unit, delta)
    runtime = service.runtimes[campaign_id]
    first = runtime.submit(v, unit.unit.id, unit.lease_id, data, report)
    again = runtime.submit(v, unit.unit.id, unit.lease_id, data, report)
    other = runtime.submit(
        v, unit.unit.id, unit.lease_id, payload(service, unit, {n: t * 0.5 for n, t in delta.items()}), report
    )
    assert first.status == again.status == "accepted"
    assert again.credit == first.credit
    assert (other.status, other.code) == ("duplicate", "duplicate_submission")
    assert runtime.round is not None and runtime.round.accepted == 1
    volunteer = service.store.volunteer(v)
    assert volunteer is not None and volunteer.units_accepted == 1


def test_an_expired_lease_is_issued_again_and_the_late_result_is_refused(service: Coordinator) -> None:
    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    slow, fast = volunteers(service, 2)
    unit = lease(service, slow)
    clock: Clock = service.clock  # type: ignore[assignment]
    clock.now += 61
    service.tick()
    reissued = lease(service, fast)
    assert reissued.unit.id == unit.unit.id and reissued.lease_id != unit.lease_id
    delta, report = train(service, unit)
    late = service.runtimes[campaign_id].submit(
        slow, unit.unit.id, unit.lease_id, payload(service, unit, delta), report
    )
    assert (late.status, late.code) == ("rejected", "not_your_lease")


def test_a_unit_whose_lease_ends_after_its_round_closed_is_issued_again_in_a_later_round(
    service: Coordinator,
) -> None:
    """A volunteer killed mid-unit while others close the round: when its lease ends, the slice goes
    out again (it was left 'pending' in the closed round, where nothing ever issues units)."""
    service.create_campaign(make_spec(rounds={"units_per_round": 1, "min_accepted": 1, "lease_s": 60}), owner="a:1")
    killed, rescuer = volunteers(service, 2)
    doomed = lease(service, killed)  # held by an identity not yet trusted: it doesn't hold up the round
    first, _ = submit_honest(service, rescuer)
    assert first.unit.id != doomed.unit.id and service.store.round(doomed.unit.round_id).status == "closed"  # type: ignore[union-attr]
    clock: Clock = service.clock  # type: ignore[assignment]
    clock.now += 61
    service.tick()
    again = lease(service, rescuer)
    assert again.unit.id == doomed.unit.id and again.unit.round_id != doomed.unit.round_id
    assert again.unit.data_sha == doomed.unit.data_sha


def test_progress_heartbeats_extend_the_lease(service: Coordinator) -> None:
    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    (v,) = volunteers(service, 1)
    unit = lease(service, v)
    clock: Clock = service.clock  # type: ignore[assignment]
    runtime = service.runtimes[campaign_id]
    for _ in range(3):
        clock.now += 40
        assert runtime.heartbeat(v, unit.unit.id, unit.lease_id) == clock.now + 60
        service.tick()
    row = service.store.unit(unit.unit.id)
    assert row is not None and row.state == "leased" and row.lease_id == unit.lease_id


def test_a_round_past_its_deadline_closes_with_what_it_has(service: Coordinator) -> None:
    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    (v,) = volunteers(service, 1)
    submit_honest(service, v)
    clock: Clock = service.clock  # type: ignore[assignment]
    clock.now += 601
    service.tick()
    rounds = service.store.rounds(campaign_id)
    assert rounds[0].status == "closed" and rounds[0].close_reason == "deadline"
    assert service.store.campaign(campaign_id).current_version == 1  # type: ignore[union-attr]


def test_a_late_update_is_accepted_down_weighted_within_the_staleness_bound(service: Coordinator) -> None:
    spec = make_spec(rounds={"units_per_round": 3, "min_accepted": 2})
    campaign_id = service.create_campaign(spec, owner="admin:1")
    a, b, late = volunteers(service, 3)
    slow_unit = lease(service, late)
    delta, report = train(service, slow_unit)
    runtime = service.runtimes[campaign_id]
    submit_honest(service, a)
    submit_honest(service, b)  # quorum: the round closes without the slow unit
    assert service.store.campaign(campaign_id).current_version == 1  # type: ignore[union-attr]
    outcome = runtime.submit(late, slow_unit.unit.id, slow_unit.lease_id, payload(service, slow_unit, delta), report)
    assert outcome.status == "accepted", outcome.message
    assert "late" in outcome.message
    sub = service.store.submission(slow_unit.unit.id, late)
    assert sub is not None and sub.staleness == 1 and 0 < sub.weight < report.tokens


def _trusted(service: Coordinator, n: int) -> list[str]:
    """Volunteers with a long record of valid results: the units they hold count against the round."""
    ids = volunteers(service, n)
    with service.store.transaction():
        for v in ids:
            service.store.record_outcome(
                v, accepted=True, credit=0, tokens=0, trust={"consecutive_valid": 100, "errors": 0}
            )
    return ids


def test_with_overlap_a_volunteer_that_finished_trains_again_instead_of_waiting_for_the_round(
    service: Coordinator,
) -> None:
    """rounds.overlap 0.5 of 2 units: a third unit of version 0 goes out while the round waits for its
    second result; it arrives after the round closed and counts in the next one, down-weighted."""
    spec = make_spec(rounds={"units_per_round": 2, "min_accepted": 2, "overlap": 0.5})
    campaign_id = service.create_campaign(spec, owner="admin:1")
    fast, slow, other = _trusted(service, 3)
    runtime = service.runtimes[campaign_id]
    first, slow_unit = lease(service, fast), lease(service, slow)
    delta, report = train(service, first)
    assert (
        runtime.submit(fast, first.unit.id, first.lease_id, payload(service, first, delta), report).status == "accepted"
    )
    again = lease(service, fast)  # without overlap: "every unit of the current round is out"
    assert again.unit.version == 0 and again.unit.id not in (first.unit.id, slow_unit.unit.id)
    row = service.store.volunteer(other)
    assert row is not None
    assert isinstance(service.assign_work(row, memory_bytes=8 << 30), NoWork), "3 units issued: the most"
    slow_delta, slow_report = train(service, slow_unit)
    outcome = runtime.submit(
        slow, slow_unit.unit.id, slow_unit.lease_id, payload(service, slow_unit, slow_delta), slow_report
    )
    assert outcome.status == "accepted"
    assert service.store.campaign(campaign_id).current_version == 1  # type: ignore[union-attr]
    delta, report = train(service, again)
    outcome = runtime.submit(fast, again.unit.id, again.lease_id, payload(service, again, delta), report)
    assert outcome.status == "accepted" and "late" in outcome.message, outcome.message
    sub = service.store.submission(again.unit.id, fast)
    assert sub is not None and sub.staleness == 1 and 0 < sub.weight < report.tokens
    current = runtime.round
    assert current is not None and current.row.version == 1 and current.accepted == 1


def test_without_overlap_a_volunteer_waits_while_the_rounds_units_are_out(service: Coordinator) -> None:
    service.create_campaign(make_spec(rounds={"units_per_round": 2, "min_accepted": 2}), owner="admin:1")
    fast, slow = _trusted(service, 2)
    first, _ = lease(service, fast), lease(service, slow)
    delta, report = train(service, first)
    outcome = service.runtimes[first.campaign.id].submit(
        fast, first.unit.id, first.lease_id, payload(service, first, delta), report
    )
    assert outcome.status == "accepted"
    row = service.store.volunteer(fast)
    assert row is not None
    answer = service.assign_work(row, memory_bytes=8 << 30)
    assert isinstance(answer, NoWork) and "waiting for results" in answer.reason


def test_a_volunteer_with_too_little_memory_is_told_how_much_is_needed(service: Coordinator) -> None:
    service.create_campaign(make_spec(), owner="admin:1")
    (v,) = volunteers(service, 1)
    row = service.store.volunteer(v)
    assert row is not None
    answer = service.assign_work(row, memory_bytes=1 << 20)
    assert isinstance(answer, NoWork) and "MiB" in answer.reason


def test_a_paused_campaign_hands_out_no_work(service: Coordinator) -> None:
    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    service.set_status(campaign_id, "paused")
    (v,) = volunteers(service, 1)
    row = service.store.volunteer(v)
    assert row is not None
    answer = service.assign_work(row, memory_bytes=8 << 30)
    assert isinstance(answer, NoWork) and "no campaign is training" in answer.reason


def test_replicated_units_are_compared_and_a_cheat_is_caught(service: Coordinator) -> None:
    spec = make_spec(validation={"replication_rate": 1.0}, rounds={"units_per_round": 2, "min_accepted": 2})
    campaign_id = service.create_campaign(spec, owner="admin:1")
    a, b = volunteers(service, 2)
    unit_a = lease(service, a)
    unit_b = lease(service, b)
    assert unit_b.unit.replica_of == unit_a.unit.id, "the second volunteer should get the replica first"
    runtime = service.runtimes[campaign_id]
    delta, report = train(service, unit_a)
    first = runtime.submit(a, unit_a.unit.id, unit_a.lease_id, payload(service, unit_a, delta), report)
    assert first.status == "accepted" and "replica" in first.message
    cheat = {n: t * 1.5 for n, t in delta.items()}
    second = runtime.submit(b, unit_b.unit.id, unit_b.lease_id, payload(service, unit_b, cheat), report)
    assert (second.status, second.code) == ("rejected", "replication_mismatch")
    assert service.store.submission(unit_a.unit.id, a).status == "rejected"  # type: ignore[union-attr]


def test_after_a_mismatch_neither_side_won_the_slice_trained_again_counts_instead_of_waiting_forever(
    service: Coordinator,
) -> None:
    # An update ×1.5 beside its honest replica: the checks can't tell which is the honest one, so
    # neither counts and the unit submitted last goes out again. Its twin was trained already: the
    # next result for it has nothing to wait for (once, this left a round waiting for good).
    spec = make_spec(validation={"replication_rate": 1.0}, rounds={"units_per_round": 2, "min_accepted": 2})
    campaign_id = service.create_campaign(spec, owner="admin:1")
    a, b, c = volunteers(service, 3)
    unit_a, unit_b = lease(service, a), lease(service, b)
    runtime = service.runtimes[campaign_id]
    delta, report = train(service, unit_a)
    runtime.submit(a, unit_a.unit.id, unit_a.lease_id, payload(service, unit_a, delta), report)
    cheat = {n: t * 1.5 for n, t in delta.items()}
    runtime.submit(b, unit_b.unit.id, unit_b.lease_id, payload(service, unit_b, cheat), report)
    again = lease(service, c)
    assert again.unit.id == unit_b.unit.id, "the slice should go out again"
    delta, report = train(service, again)
    outcome = runtime.submit(c, again.unit.id, again.lease_id, payload(service, again, delta), report)
    assert outcome.status == "accepted", outcome.message
    row = service.store.submission(again.unit.id, c)
    assert row is not None and row.status == "accepted" and row.weight > 0  # counted, not held for a replica


def test_replicas_that_agree_count_once(service: Coordinator) -> None:
    spec = make_spec(validation={"replication_rate": 1.0}, rounds={"units_per_round": 2, "min_accepted": 1})
    campaign_id = service.create_campaign(spec, owner="admin:1")
    a, b = volunteers(service, 2)
    unit_a, unit_b = lease(service, a), lease(service, b)
    runtime = service.runtimes[campaign_id]
    for v, unit in ((a, unit_a), (b, unit_b)):
        delta, report = train(service, unit)
        outcome = runtime.submit(v, unit.unit.id, unit.lease_id, payload(service, unit, delta), report)
        assert outcome.status == "accepted", outcome.message
    versions = service.store.versions(campaign_id)
    assert len(versions) == 2 and versions[1].updates == 1
    for v in (a, b):
        row = service.store.volunteer(v)
        assert row is not None and row.units_accepted == 1 and row.credit > 0


def test_restart_mid_round_rebuilds_the_round_and_reaches_the_same_version(
    tmp_path: Path, small_dataset: Path, backend: Backend
) -> None:
    """Half a round, a new Coordinator on the same state, the other half: same θ_1 as without restart."""

    def run(data_dir: Path, restart: bool) -> dict[str, torch.Tensor]:
        config = config_for(backend if restart else backend.another(), data_dir, small_dataset)
        service = Coordinator.open(config, clock=Clock())
        campaign_id = service.create_campaign(make_spec(), owner="admin:1")
        a, b = volunteers(service, 2)
        submit_honest(service, a)
        if restart:
            service.close()
            service = Coordinator.open(config, clock=Clock())
            assert service.runtimes[campaign_id].round is not None
            assert service.runtimes[campaign_id].round.accepted == 1  # type: ignore[union-attr]
        submit_honest(service, b)
        version = service.store.version(campaign_id, 1)
        assert version is not None and version.updates == 2
        return load_weights(service.blobs.get(version.checkpoint_sha))

    straight = run(tmp_path / "straight", restart=False)
    restarted = run(tmp_path / "restarted", restart=True)
    for name in straight:
        assert torch.equal(straight[name], restarted[name]), name


def test_a_campaign_finishes_when_its_budget_is_spent(service: Coordinator) -> None:
    spec = make_spec(token_budget=2 * 3 * 2 * 32)  # exactly one round of two units
    campaign_id = service.create_campaign(spec, owner="admin:1")
    a, b = volunteers(service, 2)
    submit_honest(service, a)
    submit_honest(service, b)
    assert service.store.campaign(campaign_id).status == "finished"  # type: ignore[union-attr]
    row = service.store.volunteer(a)
    assert row is not None
    answer = service.assign_work(row, memory_bytes=8 << 30)
    assert isinstance(answer, NoWork)


def test_sharded_campaigns_hand_out_units_that_train_part_of_the_model(service: Coordinator) -> None:
    spec = msgspec.structs.replace(make_spec(), shard_plan="groups:2")
    campaign_id = service.create_campaign(CampaignSpec.from_dict(spec.to_dict()), owner="admin:1")
    a, b = volunteers(service, 2)
    unit_a, _ = submit_honest(service, a)
    unit_b, _ = submit_honest(service, b)
    assert set(unit_a.unit.shard).isdisjoint(unit_b.unit.shard)
    all_params = set(service.runtimes[campaign_id].shapes)
    assert set(unit_a.unit.shard) | set(unit_b.unit.shard) == all_params


def test_a_campaign_whose_updates_could_never_fit_a_frame_is_refused(service: Coordinator, small_dataset: Path) -> None:
    from coordinator.campaign import SpecError
    from training.data import TokenDataset

    inner = {"steps": 1, "batch_size": 1, "seq_len": 32}
    with pytest.raises(SpecError, match=r"MiB per update.*shard_plan"):
        service.create_campaign(make_spec(model="1b", codec="fp32", inner=inner), owner="admin:1")
    assert service.store.campaigns() == []
    # Sparse and split, the same model fits (checked without building its weights).
    fits = make_spec(model="1b", codec="topk", shard_plan="groups:4", inner=inner)
    service._check_update_size(fits, TokenDataset.open(small_dataset))


def test_a_lone_volunteer_whose_update_was_rejected_gets_fresh_work_instead_of_stalling(service: Coordinator) -> None:
    spec = make_spec(codec="fp32", rounds={"units_per_round": 1, "min_accepted": 1})
    campaign_id = service.create_campaign(spec, owner="admin:1")
    (v,) = volunteers(service, 1)
    unit = lease(service, v)
    delta, report = train(service, unit)
    bad = service.runtimes[campaign_id].submit(v, unit.unit.id, unit.lease_id, nan_frame(delta), report)
    assert bad.status == "rejected"
    retry = lease(service, v)  # not the unit it failed (that waits for someone else), but new work
    assert retry.unit.id != unit.unit.id and retry.unit.round_id == unit.unit.round_id
    delta, report = train(service, retry)
    outcome = service.runtimes[campaign_id].submit(
        v, retry.unit.id, retry.lease_id, payload(service, retry, delta), report
    )
    assert outcome.status == "accepted"
    assert service.store.campaign(campaign_id).current_version == 1  # type: ignore[union-attr]


def test_a_volunteer_that_gives_back_every_unit_adds_at_most_a_rounds_worth_of_units(service: Coordinator) -> None:
    spec = make_spec(rounds={"units_per_round": 2, "min_accepted": 2})
    campaign_id = service.create_campaign(spec, owner="admin:1")
    runtime = service.runtimes[campaign_id]
    a, b = volunteers(service, 2)
    given_back = 0
    for _ in range(20):  # both give back whatever they get, as on a version that diverges for everyone
        for volunteer in (a, b):
            row = service.store.volunteer(volunteer)
            assert row is not None
            answer = service.assign_work(row, memory_bytes=8 << 30)
            if isinstance(answer, NoWork):
                continue
            runtime.abandon(volunteer, answer.unit.id, answer.lease_id)
            given_back += 1
    units = service.store.units(campaign_id, (UnitState.PENDING, UnitState.LEASED))
    assert given_back >= 4  # each took both of the round's units and one more
    assert len(units) <= 2 + 2  # the round's two units and one round's worth for the given-back ones
    row = service.store.volunteer(a)
    assert row is not None
    waiting = service.assign_work(row, memory_bytes=8 << 30)
    assert isinstance(waiting, NoWork) and "waiting for results" in waiting.reason


def test_a_data_slice_lost_to_a_power_cut_is_cut_again_on_restart(tmp_path: Path, small_dataset: Path) -> None:
    # Data slices are written without fsync (they can be made again from the dataset): a power cut
    # may leave one empty or missing, and a restart must put it back before anyone downloads it.
    config = CoordinatorConfig(data_dir=tmp_path / "coordinator", datasets={"small": small_dataset})
    service = Coordinator.open(config, clock=Clock())
    service.create_campaign(make_spec(), owner="admin:1")
    first, second = (lease(service, v) for v in volunteers(service, 2))
    first_path, second_path = (service.blobs.path(u.unit.data_sha) for u in (first, second))
    original = first_path.read_bytes()
    first_path.write_bytes(b"")  # the rename survived, the bytes didn't
    second_path.unlink()
    service.close()
    restarted = Coordinator.open(config, clock=Clock())
    assert first_path.read_bytes() == original
    assert restarted.blobs.verify(second.unit.data_sha)
    restarted.close()


ONE_UNIT_ROUNDS = {"units_per_round": 1, "min_accepted": 1, "lease_s": 60, "deadline_s": 600}


@pytest.mark.parametrize("codec", ["int8", "fp16"])
def test_each_version_is_the_previous_checkpoint_plus_its_delta_and_units_list_the_chain(
    service: Coordinator, codec: str
) -> None:
    campaign_id = service.create_campaign(make_spec(download_codec=codec, rounds=ONE_UNIT_ROUNDS), owner="admin:1")
    (volunteer,) = volunteers(service, 1)
    for _ in range(3):
        assert submit_honest(service, volunteer)[1] == "accepted"
    versions = service.store.versions(campaign_id)
    assert [v.version for v in versions] == [0, 1, 2, 3] and versions[0].delta_sha is None
    for before, after in itertools.pairwise(versions):
        assert after.delta_sha is not None
        rebuilt = apply_delta(service.blobs.get(before.checkpoint_sha), service.blobs.get(after.delta_sha))
        assert hashlib.sha256(rebuilt).hexdigest() == after.checkpoint_sha
    chain = lease(service, volunteer).deltas
    sizes = [v.delta_size or 0 for v in versions]
    # The newest deltas, linked from base to result, as many as stay smaller than the checkpoint together.
    assert [(d.base, d.result) for d in chain] == [
        (before.checkpoint_sha, after.checkpoint_sha) for before, after in itertools.pairwise(versions)
    ][3 - len(chain) :]
    assert sum(d.delta_size for d in chain) < versions[3].checkpoint_size
    if len(chain) < 3:
        assert sum(sizes[3 - len(chain) :]) >= versions[3].checkpoint_size
    assert len(chain) == 3 if codec == "int8" else len(chain) in (1, 2)


def test_lossy_deltas_keep_the_exact_weights_across_a_restart(
    tmp_path: Path, small_dataset: Path, backend: Backend
) -> None:
    config = config_for(backend, tmp_path / "coordinator", small_dataset)
    service = Coordinator.open(config, clock=Clock())
    spec = make_spec(download_codec="sign1", rounds=ONE_UNIT_ROUNDS)
    campaign_id = service.create_campaign(spec, owner="admin:1")
    (volunteer,) = volunteers(service, 1)
    submit_honest(service, volunteer)
    state = service.runtimes[campaign_id].state
    exact = {n: t.clone() for n, t in state.params.items()}
    published = load_weights(service.blobs.get(service.store.version(campaign_id, 1).checkpoint_sha))  # type: ignore[union-attr]
    assert any(not torch.equal(exact[n], published[n]) for n in exact), "sign1 should lose something"
    assert all(torch.equal(state.published[n], published[n]) for n in exact)
    service.close()
    reopened = Coordinator.open(config, clock=Clock())
    restarted = reopened.runtimes[campaign_id].state
    assert all(torch.equal(restarted.params[n], exact[n]) for n in exact)
    assert all(torch.equal(restarted.published[n], published[n]) for n in exact)
    reopened.close()


def test_a_round_at_quorum_when_the_coordinator_died_closes_at_the_first_tick_after_the_restart(
    tmp_path: Path, small_dataset: Path, backend: Backend
) -> None:
    config = config_for(backend, tmp_path / "coordinator", small_dataset)
    service = Coordinator.open(config, clock=Clock())
    campaign_id = service.create_campaign(make_spec(), owner="test")
    runtime = service.runtimes[campaign_id]
    for volunteer_id in volunteers(service, 2):
        unit = lease(service, volunteer_id)
        delta, report = train(service, unit)
        prepared = runtime.prepare(volunteer_id, unit.unit.id, unit.lease_id, payload(service, unit, delta))
        assert runtime.commit(volunteer_id, unit.lease_id, prepared, report).status.value == "accepted"
    service.close()  # both acked, the round not yet closed: as if the process died before its close
    again = Coordinator.open(config, clock=Clock())
    try:
        restored = again.runtimes[campaign_id]
        assert restored.close_due == "quorum"  # not left for the round's deadline, ten minutes away
        restored.tick()
        assert [v.version for v in again.store.versions(campaign_id)] == [0, 1]
    finally:
        again.close()
