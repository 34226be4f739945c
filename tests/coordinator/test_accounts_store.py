"""Accounts, link codes, remote pause, teams and recent average credit in the store, on SQLite and on a
real PostgreSQL (the `backend` fixture), and the RAC arithmetic against BOINC's definition."""

from __future__ import annotations

import math

import pytest

from coordinator.store import Store, StoreError
from coordinator.store.credit import DAY_S, HALF_LIFE_S, add_credit, decayed
from tests.coordinator.test_store import Clock, clock, store

__all__ = ["clock", "store"]  # the fixtures, shared with test_store

TRUST = {"consecutive_valid": 1, "errors": 0}


def _machine(store: Store, volunteer_id: str) -> None:
    store.add_volunteer(volunteer_id, f"hash-{volunteer_id}", f"{volunteer_id}'s machine", {})


def test_a_link_code_joins_one_machine_once_and_only_before_it_expires(store: Store, clock: Clock) -> None:
    alice = store.add_account("alice", "key-alice")
    for name in ("laptop", "desktop", "late"):
        _machine(store, name)
    store.add_link_code(alice, "code-1", clock.now + 900)
    account = store.redeem_link_code("code-1", "laptop")
    assert account is not None and account.name == "alice"
    assert store.redeem_link_code("code-1", "desktop") is None  # spent
    store.add_link_code(alice, "code-2", clock.now + 900)
    store.add_link_code(alice, "code-3", clock.now + 900)  # a new code replaces the account's older one
    assert store.redeem_link_code("code-2", "desktop") is None
    assert store.redeem_link_code("code-3", "desktop") is not None
    store.add_link_code(alice, "code-4", clock.now + 900)
    clock.now += 901
    assert store.redeem_link_code("code-4", "late") is None  # expired
    assert sorted(m.id for m in store.machines(alice)) == ["desktop", "laptop"]
    late = store.volunteer("late")
    assert late is not None and late.account_id is None


def test_only_the_account_holding_a_machine_pauses_or_unlinks_it(store: Store, clock: Clock) -> None:
    alice, mallory = store.add_account("alice", "key-a"), store.add_account("mallory", "key-m")
    _machine(store, "laptop")
    store.add_link_code(alice, "code", clock.now + 60)
    store.redeem_link_code("code", "laptop")
    assert not store.set_machine_paused(mallory, "laptop", True)
    assert store.set_machine_paused(alice, "laptop", True)
    laptop = store.volunteer("laptop")
    assert laptop is not None and laptop.paused
    assert not store.unlink_machine(mallory, "laptop")
    assert store.unlink_machine(alice, "laptop")
    laptop = store.volunteer("laptop")
    assert laptop is not None and (laptop.account_id, laptop.paused) == (None, False)
    assert store.account_by_key("key-m") == store.account(mallory)


def test_teams_rank_by_the_credit_earned_while_in_them(store: Store, clock: Clock) -> None:
    accounts = {name: store.add_account(name, f"key-{name}") for name in ("a", "b", "c")}
    for name, account_id in accounts.items():
        _machine(store, name)
        store.add_link_code(account_id, f"code-{name}", clock.now + 60)
        store.redeem_link_code(f"code-{name}", name)
    with store.transaction():  # before any team: it counts for the accounts, for no team
        store.record_outcome("a", accepted=True, credit=100.0, tokens=10, trust=TRUST)
    red = store.add_team("red", "the red team", accounts["a"])
    blue = store.add_team("blue", "", accounts["c"])
    assert store.set_team(accounts["b"], red)
    assert not store.set_team(accounts["b"], 999)
    with pytest.raises(StoreError, match="already exists"):
        store.add_team("RED", "", accounts["c"])  # names differ only in case: taken
    with store.transaction():
        store.record_outcome("a", accepted=True, credit=5.0, tokens=10, trust=TRUST)
        store.record_outcome("b", accepted=True, credit=3.0, tokens=10, trust=TRUST)
        store.record_outcome("c", accepted=True, credit=4.0, tokens=10, trust=TRUST)
    ranked = store.teams()
    assert [(t.name, t.members, t.standing.machines, t.standing.credit) for t in ranked] == [
        ("red", 2, 2, 8.0),
        ("blue", 1, 1, 4.0),
    ]
    assert [a.name for a, _ in store.team_members(red)] == ["a", "b"]
    assert store.account_standing(accounts["a"]).credit == 105.0

    # Leaving takes nothing away, and brings nothing along: credit stays where it was earned.
    assert store.set_team(accounts["b"], blue)
    with store.transaction():
        store.record_outcome("b", accepted=True, credit=10.0, tokens=10, trust=TRUST)
    assert [(t.name, t.members, t.standing.credit) for t in store.teams()] == [("blue", 2, 14.0), ("red", 1, 8.0)]


def test_a_team_left_empty_without_credit_is_dropped(store: Store) -> None:
    spammer = store.add_account("spammer", "key-s")
    first = store.add_team("first", "", spammer)
    second = store.add_team("second", "", spammer)  # making a team moves its founder: first is empty now
    assert store.team(first) is None and store.team(second) is not None
    assert store.set_team(spammer, None)
    assert store.teams() == []


def test_recent_average_credit_decays_with_a_half_life_of_a_week(store: Store, clock: Clock) -> None:
    account = store.add_account("alice", "key")
    _machine(store, "laptop")
    store.add_link_code(account, "code", clock.now + 60)
    store.redeem_link_code("code", "laptop")
    for _ in range(8 * 7):  # 100 credits a day for eight weeks
        clock.now += DAY_S
        with store.transaction():
            store.record_outcome("laptop", accepted=True, credit=100.0, tokens=1, trust=TRUST)
    standing = store.account_standing(account)
    assert standing.credit == pytest.approx(5600.0)
    assert standing.recent_credit == pytest.approx(100.0, rel=0.01)
    clock.now += HALF_LIFE_S  # a week without work halves it
    assert store.account_standing(account).recent_credit == pytest.approx(standing.recent_credit / 2)


def test_the_average_is_boincs_update_average() -> None:
    # BOINC's lib/util.cpp update_average, for a grant `work` at `now` on an average last updated at `at`.
    def boinc(average: float, at: float, work: float, now: float) -> float:
        diff = now - at
        weight = math.exp(-diff * math.log(2) / HALF_LIFE_S)
        average *= weight
        if 1 - weight > 1e-6:
            return average + (1 - weight) * (work / (diff / DAY_S))
        return average + math.log(2) * work * DAY_S / HALF_LIFE_S

    average, at = 40.0, 1_000.0
    for step, grant in ((3_600.0, 5.0), (0.0, 2.0), (10 * DAY_S, 50.0)):
        expected = boinc(average, at, grant, at + step)
        average, at = add_credit(average, at, credit=grant, now=at + step)
        assert average == pytest.approx(expected)
    assert decayed(average, at, at - 5) == average  # a reading before the last grant decays nothing
