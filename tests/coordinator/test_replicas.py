"""Coordinator replicas in one process, over a real PostgreSQL and a real S3 server: who leads a campaign,
how a replica that lost its term is fenced, and what its successor rebuilds. (Replicas as processes
behind HAProxy: tests/integration/test_replicas.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.servers import PostgresServer, S3Server
from coordinator.engine import Assignment, CampaignRuntime, SubmissionReport
from coordinator.replicas import FollowerRuntime
from coordinator.service import Coordinator, CoordinatorConfig
from coordinator.store import LeaseLost, VolunteerRow
from tests.coordinator.test_runtime import Clock, make_spec
from tests.support.backends import BUCKET
from tests.support.inprocess_volunteer import payload, train

TTL_S = 10.0


@pytest.fixture
def shared(postgres_server: PostgresServer, s3_server: S3Server) -> tuple[str, str]:
    """A fresh database and bucket prefix for the replicas of one test."""
    return postgres_server.create_database(), f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


OpenReplica = Callable[[str], Coordinator]


@pytest.fixture
def open_replica(shared: tuple[str, str], tmp_path: Path, small_dataset: Path, clock: Clock) -> Iterator[OpenReplica]:
    """Opens replica NAME of the shared store (each with its own data dir); closes them all at the end."""
    opened: list[Coordinator] = []

    def named(name: str) -> Coordinator:
        config = CoordinatorConfig(
            data_dir=tmp_path / name,
            database=shared[0],
            blobs=shared[1],
            datasets={"small": small_dataset},
            replica_url=f"http://{name}.invalid:8470",
            replica_name=name,
            lease_ttl_s=TTL_S,
        )
        service = Coordinator.open(config, clock=clock)
        opened.append(service)
        return service

    yield named
    for service in opened:
        service.close()


def test_the_replica_that_creates_a_campaign_leads_it_and_the_others_follow(open_replica: OpenReplica) -> None:
    a, b = open_replica("a"), open_replica("b")
    campaign_id = a.create_campaign(make_spec(), owner="admin")
    assert a.cluster is not None and a.cluster.leads(campaign_id)
    b.cluster.step()
    assert not b.cluster.leads(campaign_id) and isinstance(b.followed[campaign_id], FollowerRuntime)
    assert b.cluster.leader_url(campaign_id) == "http://a.invalid:8470"
    assert [r.row.id for r in b.campaigns()] == [campaign_id]
    # Both replicas' tokens are known to each other; nobody else's is.
    assert b.cluster.authorized("a", a.cluster.token)
    assert not b.cluster.authorized("a", b.cluster.token) and not b.cluster.authorized("c", a.cluster.token)


def test_a_leader_that_lost_its_term_changes_nothing_and_its_successor_takes_the_acked_updates_over(
    open_replica: OpenReplica, clock: Clock
) -> None:
    a, b, campaign_id = _two_replicas_and_a_campaign(open_replica)
    stale = a.runtimes[campaign_id]
    volunteer, unit, frame, report = _trained_unit(a, stale)
    first = stale.submit(volunteer.id, unit.unit.id, unit.lease_id, frame, report)
    assert first.status.value == "accepted"

    # a hangs past its term; b claims the campaign in term 2 and rebuilds it from the store.
    clock.now += TTL_S + 1
    b.cluster.step()
    assert b.cluster.leads(campaign_id) and b.runtimes[campaign_id].state.lease == (b.cluster.holder, 2)
    successor = b.runtimes[campaign_id]
    assert successor.round is not None and successor.round.accepted == 1  # the acked update, restored

    # a wakes up: whatever it tries under its old term is refused, and its next step makes it a follower.
    other, _ = a.register_volunteer("w", {})
    with pytest.raises(LeaseLost):
        stale.lease(other.id, memory_bytes=8 << 30)
    with pytest.raises(LeaseLost):
        stale.tick()
    a.cluster.step()
    assert not a.cluster.leads(campaign_id) and campaign_id in a.followed

    # The successor carries on: the second unit closes the round into version 1.
    unit2 = successor.lease(other.id, memory_bytes=8 << 30)
    assert isinstance(unit2, Assignment)
    delta2, report2 = train(b, unit2)
    second = successor.submit(other.id, unit2.unit.id, unit2.lease_id, payload(b, unit2, delta2), report2)
    assert second.status.value == "accepted"
    assert [v.version for v in b.store.versions(campaign_id)] == [0, 1]
    assert b.store.version(campaign_id, 1).updates == 2  # type: ignore[union-attr]


def test_an_update_stored_by_a_follower_is_judged_by_the_leader_from_the_object_store(
    open_replica: OpenReplica,
) -> None:
    a, b, campaign_id = _two_replicas_and_a_campaign(open_replica)
    leader = a.runtimes[campaign_id]
    volunteer, unit, frame, report = _trained_unit(a, leader)
    follower = b.followed[campaign_id]
    # The follower describes the unit as the leader granted it, from the store alone.
    described = follower.assignment(unit.unit.id, unit.lease_id, unit.lease_deadline)
    assert (described.unit.id, described.checkpoint, described.data_size) == (
        unit.unit.id,
        unit.checkpoint,
        unit.data_size,
    )
    # A stranger's bytes for the unit are not stored by the follower; the holder's are.
    assert not follower.store_update("someone-else", unit.unit.id, unit.lease_id, b"junk", b"")
    assert follower.store_update(volunteer.id, unit.unit.id, unit.lease_id, frame, b"")
    digest = a.blobs.put(frame)  # the same name: content-addressed
    prepared = leader.prepare_stored(volunteer.id, unit.unit.id, unit.lease_id, digest, len(frame))
    outcome = leader.commit(volunteer.id, unit.lease_id, prepared, report)
    assert outcome.status.value == "accepted"


def _two_replicas_and_a_campaign(open_replica: OpenReplica) -> tuple[Coordinator, Coordinator, int]:
    """Replica a leads a new campaign; b follows it."""
    a, b = open_replica("a"), open_replica("b")
    campaign_id = a.create_campaign(make_spec(), owner="admin")
    b.cluster.step()
    return a, b, campaign_id


def _trained_unit(
    service: Coordinator, leader: CampaignRuntime
) -> tuple[VolunteerRow, Assignment, bytes, SubmissionReport]:
    """A new volunteer's leased unit, trained honestly: the volunteer, the unit, the update and its report."""
    volunteer, _ = service.register_volunteer(f"v{uuid.uuid4().hex[:6]}", {})
    unit = leader.lease(volunteer.id, memory_bytes=8 << 30)
    assert isinstance(unit, Assignment)
    delta, report = train(service, unit)
    return volunteer, unit, payload(service, unit, delta), report
