"""Shared moments in the coordinator: what units send, the median each version publishes, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coordinator.gateway import work_unit_message
from coordinator.service import Coordinator, CoordinatorConfig
from protocol.moments import decode_moments, encode_moments, moment_specs
from tests.coordinator.test_runtime import Clock, lease, make_spec, volunteers
from tests.support.inprocess_volunteer import payload, train
from training.moments import as_records, from_records


@pytest.fixture
def service(tmp_path: Path, small_dataset: Path) -> Coordinator:
    config = CoordinatorConfig(data_dir=tmp_path / "coordinator", datasets={"small": small_dataset})
    return Coordinator.open(config, clock=Clock())


def _frame(shapes: dict[str, tuple[int, ...]], fill: float) -> bytes:
    return encode_moments({name: torch.full(spec.shape, fill) for name, spec in moment_specs(shapes).items()})


def _submit(service: Coordinator, volunteer: str, moments: bytes) -> tuple[str, str | None, str]:
    unit = lease(service, volunteer)
    delta, report = train(service, unit)
    runtime = service.runtimes[unit.campaign.id]
    outcome = runtime.submit(
        volunteer, unit.unit.id, unit.lease_id, payload(service, unit, delta), report, moments=moments
    )
    return outcome.status, outcome.code, outcome.message


def test_each_version_publishes_the_lower_median_of_what_its_rounds_units_sent(service: Coordinator) -> None:
    rounds = {"units_per_round": 3, "min_accepted": 3, "lease_s": 60, "deadline_s": 600}
    campaign_id = service.create_campaign(make_spec(rounds=rounds), owner="admin:1")
    a, b, c = volunteers(service, 3)
    first = lease(service, a)
    shapes = first.shard_shapes
    assert first.inner.shared_moments and work_unit_message(first).recipe.shared_moments
    assert work_unit_message(first).moments is None  # version 0: nothing to share yet
    service.runtimes[campaign_id].scheduler.abandon(a, first.unit.id, first.lease_id)
    # Three volunteers' moments: 0.125, 0.25 and an outlier at the bound (grad_clip² = 1); the median is 0.25.
    for volunteer, fill in ((a, 0.125), (b, 0.25), (c, 1.0)):
        assert _submit(service, volunteer, _frame(shapes, fill))[0] == "accepted"
    versions = service.store.versions(campaign_id)
    assert [v.version for v in versions] == [0, 1] and versions[0].moments_sha is None
    published = versions[1]
    assert published.moments_sha is not None and published.moments_size == len(service.blobs.get(published.moments_sha))
    records = decode_moments(service.blobs.get(published.moments_sha), shapes)
    assert all(torch.equal(values, torch.full_like(values, 0.25)) for values in records.values())
    # Units of version 1 name it, and volunteers may download it.
    unit = work_unit_message(lease(service, a))
    assert unit.model_version == 1 and unit.moments is not None
    assert unit.moments.sha256 == published.moments_sha and service.volunteer_may_read(a, published.moments_sha)


def test_two_units_take_the_lower_of_their_values_and_a_unit_without_moments_still_counts(
    service: Coordinator,
) -> None:
    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    a, b, c = volunteers(service, 3)
    shapes = lease(service, c).shard_shapes
    assert _submit(service, a, b"")[0] == "accepted"  # no moments: judged as usual
    assert _submit(service, b, _frame(shapes, 0.5))[0] == "accepted"
    published = service.store.versions(campaign_id)[1]
    assert published.moments_sha is not None
    records = decode_moments(service.blobs.get(published.moments_sha), shapes)
    assert all(torch.equal(values, torch.full_like(values, 0.5)) for values in records.values())


def test_moments_that_are_not_a_moments_frame_of_the_shard_get_the_whole_submission_rejected(
    service: Coordinator,
) -> None:
    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    a, b, c = volunteers(service, 3)
    shapes = lease(service, c).shard_shapes
    negative = _frame(shapes, -1.0)
    nan = _frame(shapes, 1.0)[:-2] + b"\xc0\x7f"  # the last value a bf16 NaN
    first = dict(list(shapes.items())[:1])
    d = volunteers(service, 1)[0]
    for volunteer, bad, code in (
        (a, negative, "bad_encoding"),
        (b, nan, "non_finite"),
        (c, _frame(first, 1.0), "shape_mismatch"),
        # Above grad_clip² (1 here): no clipped gradient makes such a second moment.
        (d, _frame(shapes, 1.5), "bad_encoding"),
    ):
        status, got, message = _submit(service, volunteer, bad)
        assert (status, got) == ("rejected", code) and "submit.moments" in message, message
    assert service.store.campaign(campaign_id).current_version == 0  # type: ignore[union-attr]


def test_a_campaign_that_does_not_share_moments_sends_none_and_reads_none(service: Coordinator) -> None:
    inner = {"steps": 3, "batch_size": 2, "seq_len": 32, "warmup_steps": 0, "shared_moments": False}
    campaign_id = service.create_campaign(make_spec(inner=inner), owner="admin:1")
    a, b = volunteers(service, 2)
    shapes = lease(service, b).shard_shapes
    unit = work_unit_message(lease(service, a))
    assert not unit.recipe.shared_moments and unit.moments is None
    for volunteer in (a, b):
        assert _submit(service, volunteer, _frame(shapes, 1.0))[0] == "accepted"  # ignored, not refused
    assert service.store.versions(campaign_id)[1].moments_sha is None


def test_what_a_real_unit_returns_seeds_the_next_round(service: Coordinator) -> None:
    """The in-process volunteer trains for real; its AdamW's v, factored, becomes the next version's."""
    from tests.support.inprocess_volunteer import train_with_moments

    campaign_id = service.create_campaign(make_spec(), owner="admin:1")
    sent = []
    for volunteer in volunteers(service, 2):
        unit = lease(service, volunteer)
        delta, report, moments = train_with_moments(service, unit)
        sent.append(moments)
        runtime = service.runtimes[unit.campaign.id]
        outcome = runtime.submit(
            volunteer, unit.unit.id, unit.lease_id, payload(service, unit, delta), report, moments=moments
        )
        assert outcome.status == "accepted"
    published = service.store.versions(campaign_id)[1]
    assert published.moments_sha is not None
    shapes = lease(service, volunteers(service, 1)[0]).shard_shapes
    shared = from_records(decode_moments(service.blobs.get(published.moments_sha), shapes), shapes)
    mine = [from_records(decode_moments(frame, shapes), shapes) for frame in sent]
    for name in shapes:
        for i, values in enumerate(shared[name]):
            assert torch.equal(values, torch.minimum(mine[0][name][i], mine[1][name][i])), name
    assert all(float(f.max()) > 0 for fs in shared.values() for f in fs)
    assert as_records(shared).keys() == moment_specs(shapes).keys()


def test_a_sharded_campaign_publishes_zeros_for_the_parameters_no_unit_has_returned_yet(service: Coordinator) -> None:
    rounds = {"units_per_round": 2, "min_accepted": 1, "lease_s": 60, "deadline_s": 600}
    campaign_id = service.create_campaign(make_spec(shard_plan="groups:2", rounds=rounds), owner="admin:1")
    (a,) = volunteers(service, 1)
    unit = lease(service, a)
    trained = set(unit.unit.shard)
    delta, report = train(service, unit)
    runtime = service.runtimes[campaign_id]
    mine = _frame(unit.shard_shapes, 0.5)
    outcome = runtime.submit(a, unit.unit.id, unit.lease_id, payload(service, unit, delta), report, moments=mine)
    assert outcome.status == "accepted"
    published = service.store.versions(campaign_id)[1]
    assert published.moments_sha is not None
    shapes = runtime.state.shapes
    records = decode_moments(service.blobs.get(published.moments_sha), shapes)
    assert sorted(records) == sorted(moment_specs(shapes))
    for name, values in records.items():
        parameter = name.split(":")[0]
        assert torch.equal(values, torch.full_like(values, 0.5 if parameter in trained else 0.0)), name
