"""Attacks by volunteers, as real processes: each one is rejected or harmless.

One coordinator process and three honest volunteer processes (`commonweights volunteer run`) serve
the whole module. Each test starts attackers of one kind (`python -m benchmarks.adversaries`,
clients that speak the protocol and lie; see that module), opens a fresh campaign for them, and
waits until they have acted and the campaign has published versions; then it reads the store. An
attack is defeated when none of the attacker's updates is accepted and it earns no credit (for
`scale_down` and `hog`, harmless is enough: the campaign goes on and honest work is accepted), and
the honest volunteers' updates are still accepted. The whole population runs through
benchmarks/adversarial.py's harness, the same as `commonweights bench adversarial`.

Every attacker is a fresh identity, so everything it ever submitted (to this campaign or to the
previous one, still open while it connected) is counted against it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchmarks.adversarial import Audit, Population, Setup, Slot, audit, coordinator_args, lineup
from benchmarks.adversaries import Kind
from coordinator.local import LocalCoordinator, start_coordinator, stop

pytestmark = pytest.mark.slow

HONEST = 3
VERSIONS = 2  # versions a campaign must publish while attacked
TIMEOUT_S = 300.0
SETUP = Setup(rounds=10_000, units_per_round=3, min_accepted=3, steps=8, batch=4, seq=64, replication_rate=0.25,
              lease_s=10.0, deadline_s=60.0)  # fmt: skip
HARMLESS_IF_ACCEPTED = {Kind.SCALE_DOWN, Kind.HOG}


def poll(what: str, check: Callable[[], Any], *, timeout: float = TIMEOUT_S, crowd: Population | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while not (answer := check()):
        if time.monotonic() > deadline:
            died = "\n".join(crowd.died()) if crowd is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{died}")
        time.sleep(0.5)
    return answer


@dataclass
class Arena:
    coordinator: LocalCoordinator
    crowd: Population
    campaigns: list[int] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.coordinator.data_dir / "coordinator.sqlite3"

    def open_campaign(self, name: str) -> int:
        """A new campaign, and the previous one stopped right after: the honest volunteers move over
        without a gap (a volunteer told "no work" would wait half a minute before asking again)."""
        api = self.coordinator.api
        campaign_id: int = api.post_campaign(SETUP.spec(name, dataset="small", budget=10_000_000))["id"]
        for previous in self.campaigns:
            if api.campaign(previous)["status"] in ("active", "paused"):
                api.stop(previous)
        self.campaigns.append(campaign_id)
        return campaign_id

    def version(self, campaign_id: int) -> int:
        return int(self.coordinator.api.campaign(campaign_id)["version"])


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> Iterator[Arena]:
    root = tmp_path_factory.mktemp("attacks")
    coordinator = start_coordinator(
        root / "coordinator", datasets={"small": small_dataset}, log=root / "coordinator.log",
        extra_args=coordinator_args(),
    )  # fmt: skip
    crowd = Population(root / "volunteers", coordinator)
    arena = Arena(coordinator, crowd)
    try:
        warmup = arena.open_campaign("warmup")
        for i in range(HONEST):
            crowd.start_honest(i)
        poll("the honest volunteers to train a version", lambda: arena.version(warmup) >= 1, crowd=crowd)
        yield arena
    finally:
        crowd.stop_all()
        stop(coordinator.process)


def events(crowd: Population, slot: Slot, event: str) -> list[dict[str, Any]]:
    return [e for e in crowd.events(slot.name) if e["event"] == event]


def acted(crowd: Population, slots: list[Slot]) -> bool:
    """Whether every attacker has done its thing at least twice (forged: including to another's unit)."""
    for slot in slots:
        if slot.kind is Kind.HOG:
            if not any(e["held"] >= 1 for e in events(crowd, slot, "leases")):
                return False
        elif slot.kind is Kind.FORGED:
            if not any(e["how"].startswith("another's unit") for e in events(crowd, slot, "submit")):
                return False
        elif len(events(crowd, slot, "submit")) < (1 if slot.kind is Kind.COLLUDING else 2):
            return False
    return True


def attack(arena: Arena, kind: Kind) -> tuple[list[Slot], Audit, Audit]:
    """Attackers of `kind` against a fresh campaign until they acted and it published VERSIONS versions
    since; (their slots, their record over every campaign, the honest record in this campaign)."""
    crowd = arena.crowd
    slots = lineup(kind, 1)
    for slot in slots:
        crowd.start_attacker(slot)
    try:
        poll(f"the {kind} attacker to connect", lambda: all(crowd.connected(s.name) for s in slots), crowd=crowd)
        campaign_id = arena.open_campaign(f"attacked-{kind}")
        poll(f"the {kind} attacker to act", lambda: acted(crowd, slots), crowd=crowd)
        since = arena.version(campaign_id)
        poll(
            f"campaign {campaign_id} to publish {VERSIONS} versions under attack (at {since} when it began)",
            lambda: arena.version(campaign_id) >= since + VERSIONS,
            crowd=crowd,
        )
    finally:
        for slot in slots:
            crowd.stop(slot.name)
    names = [s.name for s in slots]
    return slots, audit(arena.db, None, names), audit(arena.db, campaign_id, names)


def outcome(crowd: Population, slots: list[Slot], theirs: Audit) -> str:
    """What the attackers were told, for a failing assertion's message."""
    told = [
        f"{e['how']}: {e['status']} {e.get('code') or ''} credit {e['credit']}"
        for slot in slots
        for e in events(crowd, slot, "submit")
    ]
    return f"{theirs}\nattackers were told:\n" + "\n".join(told[-12:])


KINDS = list(Kind)


@pytest.mark.parametrize("kind", KINDS, ids=[k.value for k in KINDS])
def test_an_attack_is_rejected_or_harmless_and_honest_work_still_counts(arena: Arena, kind: Kind) -> None:
    slots, theirs, honest = attack(arena, kind)
    crowd = arena.crowd
    if kind not in HARMLESS_IF_ACCEPTED:
        assert theirs.attacker_accepted == 0, outcome(crowd, slots, theirs)
        assert theirs.attacker_credit == 0, outcome(crowd, slots, theirs)
    assert honest.honest_accepted >= SETUP.min_accepted, honest
    if kind is Kind.FORGED:
        (slot,) = slots
        for event in events(crowd, slot, "submit"):
            assert event["status"] != "accepted", event
        for event in events(crowd, slot, "progress"):
            assert event["answer"] != "extended", event
        for event in events(crowd, slot, "hello"):
            assert event["answer"] != "welcome", event
        assert events(crowd, slot, "progress"), "the forged attacker never tried another's lease"
