"""The store's contract (coordinator/store/interface.py), checked through `Store` on SQLite and on a real
PostgreSQL (the `backend` fixture), and each backend's migrations."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from benchmarks.servers import PostgresServer
from coordinator.store import SCHEMA_VERSION, LeaseLost, SQLiteStore, Store, StoreError, open_store
from coordinator.store.sqlite import MIGRATIONS
from tests.support.backends import Backend


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Boom(Exception):
    pass


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock, backend: Backend) -> Iterator[Store]:
    opened = open_store(backend.database, tmp_path, clock=clock)
    yield opened
    opened.close()


def unit(unit_id: str) -> dict[str, Any]:
    return {
        "id": unit_id,
        "data_start": 0,
        "data_tokens": 64,
        "data_sha": f"data-{unit_id}",
        "shard_index": 0,
        "shard": ["layer.0"],
        "seed": 7,
    }


def submission(unit_id: str, volunteer_id: str, round_id: int) -> dict[str, Any]:
    return {
        "unit_id": unit_id,
        "volunteer_id": volunteer_id,
        "update_sha": f"update-{unit_id}",
        "update_size": 100,
        "status": "accepted",
        "code": None,
        "message": "accepted",
        "round_id": round_id,
        "staleness": 0,
        "weight": 1.0,
        "norm": 2.0,
        "tokens": 64,
        "seconds": 1.5,
        "losses": [4.0, 3.9],
        "credit": 1.0,
    }


def test_a_nested_transaction_that_raises_undoes_only_its_own_writes(store: Store) -> None:
    with store.transaction():
        store.add_volunteer("outer", "hash-outer", "outer", {})
        with pytest.raises(Boom), store.transaction():
            store.add_volunteer("inner", "hash-inner", "inner", {})
            raise Boom
        store.add_api_token("hash-token", "lead", "after the savepoint")

    assert store.volunteer("outer") is not None
    assert store.volunteer("inner") is None
    assert store.api_token_role("hash-token") == (1, "lead", "after the savepoint")


def test_a_transaction_that_raises_leaves_nothing(store: Store) -> None:
    with pytest.raises(Boom), store.transaction():
        store.add_volunteer("v", "hash-v", "v", {})
        store.add_api_token("hash-token", "admin", "admin")
        raise Boom

    assert store.volunteer("v") is None
    assert store.api_tokens() == []


def test_rows_carry_the_injected_clocks_time(store: Store, clock: Clock) -> None:
    campaign_id = store.create_campaign("c", {}, "data", "lead", ("sha0", 10, "state0"))
    store.add_volunteer("v", "hash-v", "v", {})
    store.add_api_token("hash-token", "lead", "lead")
    round_id = store.open_round(campaign_id, 1, 0, clock.now + 600, [unit("u1")])
    clock.now += 10
    store.lease("u1", "v", "lease-1", clock.now + 300)
    store.touch_volunteer("v", "v", {})
    with store.transaction():
        store.add_submission(submission("u1", "v", round_id))
    clock.now += 10
    store.close_round(
        round_id, reason="quorum", version=1, checkpoint=("sha1", 10), state_sha="state1", updates=1, tokens=64
    )

    campaign, round_row, volunteer = store.campaign(campaign_id), store.round(round_id), store.volunteer("v")
    assert campaign is not None and round_row is not None and volunteer is not None
    assert campaign.created_at == 1_000_000.0
    assert [v.created_at for v in store.versions(campaign_id)] == [1_000_000.0, 1_000_020.0]
    assert (round_row.opened_at, round_row.closed_at) == (1_000_000.0, 1_000_020.0)
    assert store.units(campaign_id, states=("leased",))[0].created_at == 1_000_000.0
    assert (volunteer.created_at, volunteer.last_seen) == (1_000_000.0, 1_000_010.0)
    assert store.submissions(round_id=round_id)[0].created_at == 1_000_010.0
    assert store.api_tokens()[0]["created_at"] == 1_000_000.0


def test_two_threads_writing_concurrently_both_commit(store: Store) -> None:
    start = threading.Barrier(2)

    def write(prefix: str) -> None:
        start.wait()
        for i in range(50):
            with store.transaction():
                store.add_volunteer(f"{prefix}{i}", f"hash-{prefix}{i}", prefix, {})
                store.touch_volunteer(f"{prefix}{i}", prefix, {"i": i})

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(write, "a"), pool.submit(write, "b")]:
            future.result(timeout=60)  # re-raises "database is locked", if any

    assert sorted(v.id for v in store.volunteers()) == sorted(f"{p}{i}" for p in "ab" for i in range(50))


def test_a_reader_on_another_thread_sees_committed_data_and_not_uncommitted(store: Store) -> None:
    store.add_volunteer("committed", "hash-committed", "committed", {})
    with ThreadPoolExecutor(1) as reader:
        with store.transaction():
            store.add_volunteer("pending", "hash-pending", "pending", {})
            # The writer still holds its transaction: the reader must neither wait for it nor see it.
            seen = reader.submit(lambda: [v.id for v in store.volunteers()]).result(timeout=2)
            assert seen == ["committed"]
        seen = reader.submit(lambda: sorted(v.id for v in store.volunteers())).result(timeout=2)
    assert seen == ["committed", "pending"]


def test_migrating_from_schema_version_1_keeps_existing_lease_ids(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.executescript(
        """
        INSERT INTO campaigns (id, name, spec_json, dataset_path, status, created_at)
            VALUES (1, 'c', '{}', 'data', 'active', 1.0);
        INSERT INTO rounds (id, campaign_id, number, version, status, opened_at, deadline)
            VALUES (1, 1, 1, 0, 'open', 1.0, 600.0);
        INSERT INTO units (id, campaign_id, round_id, version, data_start, data_tokens, data_sha, shard_index,
                           shard_json, seed, state, volunteer_id, lease_id, lease_deadline, created_at)
            VALUES ('leased', 1, 1, 0, 0, 64, 'd1', 0, '[]', 7, 'leased', 'v', 'lease-1', 300.0, 2.0),
                   ('pending', 1, 1, 0, 64, 64, 'd2', 0, '[]', 7, 'pending', NULL, NULL, NULL, 2.0);
        PRAGMA user_version = 1;
        """
    )
    db.close()

    store: Store = SQLiteStore.open(path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert store.lease_holder("leased", "lease-1") == "v"
        assert store.lease_holder("leased", "lease-0") is None
        leased = store.unit("leased")
        assert leased is not None and (leased.lease_id, leased.volunteer_id) == ("lease-1", "v")
        store.lease("pending", "w", "lease-2", 900.0)  # the new table takes new leases
        assert store.lease_holder("pending", "lease-2") == "w"
    finally:
        store.close()


def test_a_volunteer_keeps_its_registration_source_and_each_hello_updates_its_last_source(store: Store) -> None:
    store.add_volunteer("v", "hash-v", "v", {}, source="203.0.113.0/24")
    row = store.volunteer("v")
    assert row is not None and (row.source, row.last_source) == ("203.0.113.0/24", "203.0.113.0/24")
    store.touch_volunteer("v", "v", {}, source="198.51.100.0/24")
    store.touch_volunteer("v", "v", {})  # a hello whose source is not known leaves the last one
    row = store.volunteer_by_token("hash-v")
    assert row is not None and (row.source, row.last_source) == ("203.0.113.0/24", "198.51.100.0/24")


def test_a_ban_covers_the_volunteers_prefixes_until_it_is_lifted(store: Store) -> None:
    store.add_volunteer("mallory", "hash-m", "m", {}, source="203.0.113.0/24")
    store.touch_volunteer("mallory", "m", {}, source="198.51.100.0/24")
    store.add_volunteer("eve", "hash-e", "e", {}, source="198.51.100.0/24")
    store.add_volunteer("quiet", "hash-q", "q", {})  # no known source: banning it bans no prefix
    assert not store.source_banned("203.0.113.0/24")

    assert store.set_banned("mallory", True) and store.set_banned("eve", True) and store.set_banned("quiet", True)
    assert store.source_banned("203.0.113.0/24") and store.source_banned("198.51.100.0/24")
    assert not store.source_banned("192.0.2.0/24") and not store.source_banned("")
    # Lifting one ban leaves the other's on the prefix they share.
    assert store.set_banned("mallory", False)
    assert not store.source_banned("203.0.113.0/24") and store.source_banned("198.51.100.0/24")
    assert store.set_banned("eve", False)
    assert not store.source_banned("198.51.100.0/24")
    assert not store.set_banned("nobody", True)


def test_migrating_from_schema_version_2_gives_existing_volunteers_empty_sources(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.executescript(MIGRATIONS[1])
    db.executescript(
        """
        INSERT INTO volunteers (id, token_hash, name, created_at, last_seen, banned)
            VALUES ('old', 'hash-old', 'old', 1.0, 2.0, 1);
        PRAGMA user_version = 2;
        """
    )
    db.close()

    store: Store = SQLiteStore.open(path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        old = store.volunteer("old")
        assert old is not None and old.banned and (old.source, old.last_source) == ("", "")
        store.add_volunteer("new", "hash-new", "new", {}, source="192.0.2.0/24")
        assert [(v.id, v.source) for v in store.volunteers()] == [("old", ""), ("new", "192.0.2.0/24")]
    finally:
        store.close()


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite3"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(StoreError, match="newer than this coordinator's"):
        SQLiteStore.open(path)


def test_replicas_opening_a_new_postgresql_database_together_migrate_it_once(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: open_store(url, Path("/nonexistent"), clock=Clock()), range(4)))
    try:
        assert {s.schema_version for s in stores} == {SCHEMA_VERSION}
        first, second = stores[0], stores[1]
        first.add_volunteer("v", "hash-v", "v", {})
        row = second.volunteer("v")  # one database: what one replica commits, another reads
        assert row is not None and row.created_at == 1_000_000.0
    finally:
        for opened in stores:
            opened.close()


def test_a_postgresql_database_newer_than_the_code_is_refused(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    open_store(url, Path("/nonexistent"), clock=Clock()).close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this coordinator's"):
        open_store(url, Path("/nonexistent"), clock=Clock())


def test_an_unreachable_postgresql_server_is_a_store_error_that_names_it_without_the_password() -> None:
    pytest.importorskip("psycopg")
    from benchmarks.servers import free_port

    url = f"postgresql://cw:hunter2@127.0.0.1:{free_port()}/cw?connect_timeout=1"
    with pytest.raises(StoreError, match=r"can.t connect to PostgreSQL at 127\.0\.0\.1") as caught:
        open_store(url, Path("/nonexistent"), clock=Clock())
    assert "hunter2" not in str(caught.value)


def test_a_database_url_of_an_unknown_kind_is_refused_with_the_kinds_there_are(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"postgresql://… or sqlite:///PATH"):
        open_store("mysql://db/cw", tmp_path, clock=Clock())


def test_a_second_coordinator_on_the_same_postgresql_database_is_refused_until_the_first_closes(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    first, second = (open_store(url, Path("/nonexistent"), clock=Clock()) for _ in range(2))
    try:
        first.serve_exclusively()
        with pytest.raises(StoreError, match="another coordinator is serving the database"):
            second.serve_exclusively()
        first.close()
        second.serve_exclusively()  # the claim ends with the first's connection
    finally:
        first.close()
        second.close()


def test_a_malformed_postgresql_url_is_refused_without_quoting_it() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StoreError, match="malformed") as caught:
        open_store("postgresql://cw:se%zzcret@127.0.0.1/cw", Path("/nonexistent"), clock=Clock())
    assert "se%zzcret" not in str(caught.value) and caught.value.__cause__ is None


CLOSE = {"reason": "quorum", "version": 1, "checkpoint": ("sha1", 10), "state_sha": "state1", "updates": 0, "tokens": 0}


def test_one_holder_at_a_time_leads_a_campaign_and_a_lapsed_lease_is_taken_over_in_a_new_term(
    store: Store, clock: Clock
) -> None:
    campaign_id = store.create_campaign("c", {}, "data", "lead", ("sha0", 10, "state0"))
    assert store.claim_campaign(campaign_id, "replica-a", ttl_s=10) == 1
    assert store.claim_campaign(campaign_id, "replica-b", ttl_s=10) is None  # a's lease is live
    clock.now += 9
    assert store.claim_campaign(campaign_id, "replica-a", ttl_s=10) == 1  # renewed in time: the same term
    clock.now += 9
    assert store.claim_campaign(campaign_id, "replica-b", ttl_s=10) is None  # the renewal moved its end
    clock.now += 2  # past it: a died or hung
    assert store.claim_campaign(campaign_id, "replica-b", ttl_s=10) == 2
    assert store.claim_campaign(campaign_id, "replica-a", ttl_s=10) is None  # a, back, can't take it again
    lease = store.campaign_lease(campaign_id)
    assert lease is not None and (lease.holder, lease.epoch, lease.expires_at) == ("replica-b", 2, clock.now + 10)
    store.release_campaign(campaign_id, "replica-b")  # a clean shutdown hands over at once
    assert store.claim_campaign(campaign_id, "replica-a", ttl_s=10) == 3


def test_a_round_closes_only_under_a_live_lease_of_the_current_term(store: Store, clock: Clock) -> None:
    campaign_id = store.create_campaign("c", {}, "data", "lead", ("sha0", 10, "state0"))
    round_id = store.open_round(campaign_id, 1, 0, clock.now + 600, [unit("u1")])
    assert store.claim_campaign(campaign_id, "replica-a", ttl_s=10) == 1
    clock.now += 11
    assert store.claim_campaign(campaign_id, "replica-b", ttl_s=10) == 2
    with pytest.raises(StoreError, match="no longer holds"):
        store.close_round(round_id, **CLOSE, lease=("replica-a", 1))  # type: ignore[arg-type]
    assert store.round(round_id).status == "open" and len(store.versions(campaign_id)) == 1  # type: ignore[union-attr]
    store.close_round(round_id, **CLOSE, lease=("replica-b", 2))  # type: ignore[arg-type]
    assert [v.version for v in store.versions(campaign_id)] == [0, 1]


def test_replicas_racing_for_a_campaign_or_a_rounds_close_on_postgresql_have_one_winner(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    stores = [open_store(url, Path("/nonexistent"), clock=Clock()) for _ in range(6)]
    try:
        campaign_id = stores[0].create_campaign("c", {}, "data", "lead", ("sha0", 10, "state0"))
        round_id = stores[0].open_round(campaign_id, 1, 0, 2e6, [unit("u1")])
        start = threading.Barrier(len(stores))

        def claim(i: int) -> int | None:
            start.wait()
            return stores[i].claim_campaign(campaign_id, f"replica-{i}", ttl_s=30)

        def close(i: int) -> bool:
            start.wait()
            try:
                stores[i].close_round(round_id, **CLOSE)  # type: ignore[arg-type]
            except StoreError:
                return False
            return True

        with ThreadPoolExecutor(len(stores)) as pool:
            claims = list(pool.map(claim, range(len(stores))))
            closes = list(pool.map(close, range(len(stores))))
        assert sorted(claims, key=lambda epoch: epoch is None) == [1] + [None] * (len(stores) - 1)
        assert closes.count(True) == 1
        assert [v.version for v in stores[0].versions(campaign_id)] == [0, 1]
    finally:
        for opened in stores:
            opened.close()


def test_work_under_a_lease_is_refused_once_the_term_is_over(store: Store, clock: Clock) -> None:
    campaign_id = store.create_campaign("c", {}, "data", "lead", ("sha0", 10, "state0"))
    assert store.claim_campaign(campaign_id, "replica-a", ttl_s=10) == 1
    store.hold_campaign(campaign_id, "replica-a", 1)  # a's term: its work may go on
    with pytest.raises(LeaseLost, match="replica-b no longer holds"):
        store.hold_campaign(campaign_id, "replica-b", 1)
    with pytest.raises(LeaseLost):
        store.hold_campaign(campaign_id, "replica-a", 2)  # a term it never had
    clock.now += 11  # lapsed: even before anyone takes over, a's work is refused
    with pytest.raises(LeaseLost):
        store.hold_campaign(campaign_id, "replica-a", 1)
    assert store.claim_campaign(campaign_id, "replica-b", ttl_s=10) == 2
    store.hold_campaign(campaign_id, "replica-b", 2)


def test_replicas_register_where_they_are_reached_and_their_token_hash(store: Store, clock: Clock) -> None:
    store.register_replica("c1", "http://10.0.0.1:8470", "hash-1")
    store.register_replica("c2", "http://10.0.0.2:8470", "hash-2")
    clock.now += 5
    store.register_replica("c1", "http://10.0.0.9:8470", "hash-9")  # restarted elsewhere, with a new token
    store.touch_replica("c2")
    assert [(r.name, r.url, r.token_hash, r.seen_at) for r in store.replicas()] == [
        ("c1", "http://10.0.0.9:8470", "hash-9", clock.now),
        ("c2", "http://10.0.0.2:8470", "hash-2", clock.now),
    ]
    assert store.replica("c3") is None


def test_a_takeover_on_postgresql_waits_for_the_leaders_transaction_to_end(postgres_server: PostgresServer) -> None:
    """The leader's check holds the lease row to its commit: a replica claiming the campaign the moment
    the term ends waits, and then sees everything that transaction wrote."""
    url = postgres_server.create_database()
    clock = Clock()
    leader, successor = (open_store(url, Path("/nonexistent"), clock=clock) for _ in range(2))
    try:
        campaign_id = leader.create_campaign("c", {}, "data", "lead", ("sha0", 10, "state0"))
        assert leader.claim_campaign(campaign_id, "leader", ttl_s=10) == 1
        claimed: list[int | None] = []
        inside = threading.Event()

        def take_over() -> None:
            inside.wait()
            claimed.append(successor.claim_campaign(campaign_id, "successor", ttl_s=10))

        thread = threading.Thread(target=take_over)
        thread.start()
        with leader.transaction():
            leader.hold_campaign(campaign_id, "leader", 1)
            clock.now += 11  # the term ends while the leader's transaction is still open
            inside.set()
            thread.join(timeout=1.0)
            assert thread.is_alive(), "the claim went through while the leader's transaction held the lease"
            leader.set_campaign_status(campaign_id, "paused")
        thread.join(timeout=30)
        assert claimed == [2]
        row = successor.campaign(campaign_id)
        assert row is not None and row.status == "paused"  # what the leader committed, seen by its successor
    finally:
        leader.close()
        successor.close()
