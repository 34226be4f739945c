"""`commonweights bench adversarial`: one campaign clean, and again with a fifth of its volunteers lying.

Each run is a real coordinator process (`commonweights coordinator serve`) on loopback with N real
volunteer processes: honest ones (`commonweights volunteer run`) and attackers
(`python -m benchmarks.adversaries`, one kind each, see that module). The same `tiny` campaign (same
seed, so the same data slices and units) runs to its token budget once with N honest volunteers,
then once per attack kind with 20 % of the N replaced by attackers of that kind, and once `mixed`
(the attacker slots filled with one kind after another, in a seeded order). Replication is on
(`validation.replication_rate`), so replicas and their comparison are exercised.

Where the volunteer CLI has `--bind-address`, every volunteer connects from its own loopback
address (127.0.0.N) and the coordinator runs with `--source-prefix-v4 32`, so each is its own
source; a colluding pair shares one address, as two identities on one machine would.

Per run, from the coordinator's store (read-only) and REST API once the campaign finished:

- the final holdout loss the coordinator published, against the clean run's (target: within 2 %);
- attacker updates accepted (of those submitted) and the credit attackers earned (target: 0);
- honest updates rejected, and their share of honest submissions (target: below 2 %);
- rounds and wall-clock time, and the codes updates were rejected with.

    >>> result = run_one(dataset, work, Kind.SIGN_FLIP, Setup())      # one attacked campaign
    >>> result.attacker_accepted, result.attacker_credit

`run_one` and `audit` are what tests/integration/test_attacks.py shares with the bench.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from benchmarks.adversaries import KINDS, Kind
from benchmarks.report import machine_line, markdown_table, write_section
from coordinator.local import LocalCoordinator, start_coordinator, stop
from protocol.errors import ErrorCode

__all__ = [
    "MIXED",
    "Audit",
    "Population",
    "RunResult",
    "Setup",
    "Slot",
    "audit",
    "lineup",
    "run_bench_adversarial",
    "run_one",
    "source_flags",
]

MIXED: Final = "mixed"
AGAIN: Final = "clean again"
TARGET_LOSS: Final = 0.02  # final holdout loss within 2 % of the clean run's
TARGET_HONEST_REJECTED: Final = 0.02  # below 2 % of honest submissions rejected
HEARTBEAT_S: Final = 1.0
# Rejections that judge no one's work (the model moved on, the campaign ended): not false positives.
BLAMELESS: Final = frozenset(
    {ErrorCode.STALE_UPDATE.value, ErrorCode.CAMPAIGN_CLOSED.value, ErrorCode.INCONCLUSIVE.value}
)
GRACE_S: Final = 30.0  # how long a volunteer may take to stop at a step boundary and say goodbye
HONEST_PREFIX: Final = "honest-"
ATTACKER_PREFIX: Final = "attacker-"


@dataclass(frozen=True)
class Setup:
    """One campaign's shape and the population that trains it."""

    volunteers: int = 10
    attacker_share: float = 0.2
    rounds: int = 6
    units_per_round: int = 8
    min_accepted: int = 6
    steps: int = 20
    batch: int = 4
    seq: int = 64
    replication_rate: float = 0.25
    # Plain averaging: Nesterov's momentum on a few short rounds overshoots and makes the loss swing by
    # ±10 % from version to version (measured), which would drown what an attack changes.
    outer: str = "average"
    aggregation: str | None = None  # the campaign's default (the token-weighted mean) unless named
    lease_s: float = 20.0
    deadline_s: float = 600.0  # rounds close at their quorum; the deadline only bounds a starved one
    seed: int = 0
    timeout_s: float = 900.0  # a run that has not finished by then is reported as stalled

    @property
    def attackers(self) -> int:
        return max(1, round(self.attacker_share * self.volunteers))

    def spec(self, name: str, *, dataset: str = "bench", budget: int | None = None) -> dict[str, Any]:
        tokens_per_round = self.units_per_round * self.steps * self.batch * self.seq
        return {
            "name": name,
            "model": "tiny",
            "dataset": dataset,
            "codec": "int8",
            "seed": self.seed,
            "token_budget": budget if budget is not None else self.rounds * tokens_per_round,
            "inner": {"steps": self.steps, "batch_size": self.batch, "seq_len": self.seq, "warmup_steps": 0},
            "rounds": {
                "units_per_round": self.units_per_round,
                "min_accepted": self.min_accepted,
                "lease_s": self.lease_s,
                "deadline_s": self.deadline_s,
            },
            "outer": {"optimizer": self.outer, **({"aggregation": self.aggregation} if self.aggregation else {})},
            "validation": {"replication_rate": self.replication_rate},
        }


# who takes part -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One attacker process: its kind, display name, source address and (colluding) shared folder."""

    kind: Kind
    name: str
    address: str
    partner: str | None = None  # the pair's name, for a colluding pair


def lineup(kind: Kind | str | None, count: int, *, seed: int = 0) -> list[Slot]:
    """The attacker processes for `count` attacker slots of `kind` (None: clean; "mixed": kinds in turn,
    in a seeded order).

    Each attacker connects from its own address; a colluding pair is two identities from one address
    and takes two slots (a lone slot left is filled with a pair all the same: half a pair tests nothing).
    """
    if kind is None:
        return []
    if kind == MIXED:
        order = list(KINDS)
        random.Random(seed).shuffle(order)
    else:
        order = [Kind(kind)]
    slots: list[Slot] = []
    position = 0
    while len(slots) < count:
        k = order[position % len(order)]
        address = f"127.0.0.{100 + position}"
        name = f"{ATTACKER_PREFIX}{k.value}-{position}"
        if k is Kind.COLLUDING:
            slots += [Slot(k, f"{name}{side}", address, partner=f"pair-{position}") for side in "ab"]
        else:
            slots.append(Slot(k, name, address))
        position += 1
    return slots


@functools.cache
def source_flags() -> bool:
    """Whether each volunteer can have its own source: the volunteer CLI's `--bind-address` and the
    coordinator's `--source-prefix-v4` both exist in this checkout."""

    def has(command: Sequence[str], flag: str) -> bool:
        answer = subprocess.run(
            [sys.executable, "-m", "commonweights", *command, "--help"], capture_output=True, text=True, timeout=120
        )
        return flag in answer.stdout

    return has(["volunteer", "run"], "--bind-address") and has(["coordinator", "serve"], "--source-prefix-v4")


def coordinator_args() -> list[str]:
    args = ["--heartbeat-interval", str(HEARTBEAT_S)]
    return args + (["--source-prefix-v4", "32"] if source_flags() else [])


class Population:
    """Honest volunteer and attacker processes, each with its own home, address and log."""

    def __init__(self, root: Path, coordinator: LocalCoordinator) -> None:
        self.root = root
        self.coordinator = coordinator
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.slots: dict[str, Slot] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"}

    def home(self, name: str) -> Path:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        return home

    def log(self, name: str) -> Path:
        return self.root / name / "log.txt"

    def report(self, name: str) -> Path:
        return self.root / name / "report.jsonl"

    def start_honest(self, index: int) -> str:
        name = f"{HONEST_PREFIX}{index}"
        home = self.home(name)
        command = [
            sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", self.coordinator.ws_url,
            "--name", name, "--threads", "1", "--config-dir", str(home / "config"), "--cache-dir",
            str(home / "cache"), "--data-dir", str(home / "data"), "--quiet",
        ]  # fmt: skip
        if source_flags():
            command += ["--bind-address", f"127.0.0.{10 + index}"]
        self._spawn(name, command)
        return name

    def start_attacker(self, slot: Slot) -> str:
        home = self.home(slot.name)
        command = [
            sys.executable, "-m", "benchmarks.adversaries", "--kind", slot.kind.value, "--coordinator",
            self.coordinator.ws_url, "--name", slot.name, "--report", str(self.report(slot.name)),
            "--cache-dir", str(home / "cache"), "--seed", str(zlib.crc32(slot.name.encode())), "--bind", slot.address,
        ]  # fmt: skip
        if slot.partner is not None:
            command += ["--partner-dir", str(self.root / slot.partner)]
        self.slots[slot.name] = slot
        self._spawn(slot.name, command)
        return slot.name

    def _spawn(self, name: str, command: list[str]) -> None:
        with self.log(name).open("ab") as log:
            self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def events(self, name: str) -> list[dict[str, Any]]:
        """An attacker's report so far (what it tried and what it was told)."""
        try:
            text = self.report(name).read_text()
        except FileNotFoundError:
            return []
        events = []
        for line in text.splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the line being written
        return events

    def connected(self, name: str) -> bool:
        return any(e["event"] == "welcome" for e in self.events(name))

    def stop(self, name: str) -> None:
        stop(self.processes[name], grace=GRACE_S)

    def stop_all(self) -> None:
        """Ask every process to stop at once, then wait for them together (and kill the stragglers)."""
        running = [p for p in self.processes.values() if p.poll() is None]
        for process in running:
            process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + GRACE_S
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=GRACE_S)

    def died(self) -> list[str]:
        """Processes that exited on their own, with the end of their log."""
        return [
            f"{name} exited with {p.returncode}: {self.log(name).read_text(errors='replace')[-1500:]}"
            for name, p in self.processes.items()
            if p.poll() is not None
        ]


# what happened --------------------------------------------------------------------------------------------


@dataclass
class Audit:
    """Submissions and credit of a campaign, split between honest volunteers and attackers."""

    attacker_submissions: int = 0
    attacker_accepted: int = 0  # accepted, with or without weight (a replica's twin, a late one)
    attacker_pending: int = 0  # valid but waiting for a replica: not counted yet, not rejected either
    attacker_credit: float = 0.0
    attacker_codes: dict[str, int] = field(default_factory=dict)
    honest_submissions: int = 0
    honest_accepted: int = 0
    honest_rejected: int = 0
    honest_codes: dict[str, int] = field(default_factory=dict)
    attacker_ids: dict[str, str] = field(default_factory=dict)  # volunteer id → name

    @property
    def honest_rejected_rate(self) -> float:
        return self.honest_rejected / self.honest_submissions if self.honest_submissions else 0.0

    @property
    def honest_blameless(self) -> int:
        """Honest updates rejected for reasons that judge no one's work: the model moved on, the campaign ended."""
        return sum(n for code, n in self.honest_codes.items() if code in BLAMELESS)

    @property
    def honest_false_positive_rate(self) -> float:
        """Honest updates that validation judged bad, of all honest submissions: the target's figure."""
        bad = self.honest_rejected - self.honest_blameless
        return bad / self.honest_submissions if self.honest_submissions else 0.0


def audit(db_path: Path, campaign_id: int | None, attackers: Sequence[str]) -> Audit:
    """Who submitted what to `campaign_id` (None: to any campaign), by the names of `attackers`
    (anyone else is honest).

    Attacker credit is those volunteers' whole credit: an attacker is a fresh identity, so all of it
    comes from the attack.
    """
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        names = {vid: name for vid, name in db.execute("SELECT id, name FROM volunteers")}
        credit = {vid: c for vid, c in db.execute("SELECT id, credit FROM volunteers")}
        rows = db.execute(
            "SELECT s.volunteer_id, s.status, s.code FROM submissions s JOIN units u ON u.id = s.unit_id "
            "WHERE ? IS NULL OR u.campaign_id = ?",
            (campaign_id, campaign_id),
        ).fetchall()
    finally:
        db.close()
    wanted = set(attackers)
    result = Audit(attacker_ids={vid: name for vid, name in names.items() if name in wanted})
    attacker_codes: Counter[str] = Counter()
    honest_codes: Counter[str] = Counter()
    for volunteer_id, status, code in rows:
        if volunteer_id in result.attacker_ids:
            result.attacker_submissions += 1
            result.attacker_accepted += status == "accepted"
            result.attacker_pending += status in ("pending_replica", "pending_check")
            if status == "rejected":
                attacker_codes[str(code)] += 1
        else:
            result.honest_submissions += 1
            result.honest_accepted += status == "accepted"
            if status == "rejected":
                result.honest_rejected += 1
                honest_codes[str(code)] += 1
    result.attacker_credit = sum(credit[vid] for vid in result.attacker_ids)
    result.attacker_codes = dict(attacker_codes.most_common())
    result.honest_codes = dict(honest_codes.most_common())
    return result


@dataclass
class RunResult:
    label: str  # "clean", a kind, or "mixed"
    attackers: list[str]  # their names
    kinds: list[str]  # their kinds, in the same order
    honest: int
    finished: bool
    final_loss: float | None
    versions: int
    rounds: int
    seconds: float
    audit: Audit
    refused: dict[str, int] = field(default_factory=dict)  # forged attempts refused before the store, by answer
    forged_through: int = 0  # forged attempts the coordinator went along with (accepted, extended, welcomed)
    most_leases: int = 0  # the most leases one hog held at once


def campaign_name(label: str) -> str:
    """The campaign's name for a run's label ("clean again" has a space, which names may not)."""
    return "adversarial-" + label.replace(" ", "-")


def run_one(
    dataset: Path, work: Path, kind: Kind | str | None, setup: Setup, *, progress: Progress | None = None,
    task: TaskID | None = None, timeout_s: float | None = None, label: str | None = None,
) -> RunResult:  # fmt: skip
    """One campaign to its budget on a fresh coordinator: clean (kind None), one kind, or mixed."""
    label = label or ("clean" if kind is None else str(kind))
    work.mkdir(parents=True, exist_ok=True)
    coordinator = start_coordinator(
        work / "coordinator", datasets={"bench": dataset}, log=work / "coordinator.log", extra_args=coordinator_args()
    )
    crowd = Population(work / "volunteers", coordinator)
    slots = lineup(kind, setup.attackers, seed=setup.seed)
    honest = setup.volunteers - (len(slots) if kind is not None else 0)
    timeout = timeout_s or setup.timeout_s
    try:
        api = coordinator.api
        for i in range(honest):
            crowd.start_honest(i)
        for slot in slots:
            crowd.start_attacker(slot)
        # Everyone connected before the campaign opens, so no one gets a head start.
        wait(lambda: len(api.volunteers()) >= honest + len(slots), 600, "every volunteer to connect", crowd)
        began = time.monotonic()
        campaign_id: int = api.post_campaign(setup.spec(campaign_name(label)))["id"]
        finished = False
        while time.monotonic() - began < timeout:
            row = api.campaign(campaign_id)
            if progress is not None and task is not None:
                progress.update(task, completed=row["version"])
            if row["status"] == "finished":
                finished = True
                break
            time.sleep(0.5)
        seconds = time.monotonic() - began
        versions = api.versions(campaign_id)
        if finished:
            # The last version's holdout loss is evaluated after it is published.
            def scored() -> bool:
                versions[:] = api.versions(campaign_id)
                return versions[-1]["holdout_loss"] is not None

            wait(scored, 600, "the last version's holdout loss", crowd)
        rounds = api.rounds(campaign_id)
    finally:
        crowd.stop_all()
        stop(coordinator.process)
    scored_versions = [v for v in versions if v["holdout_loss"] is not None]
    result = RunResult(
        label=label,
        attackers=[s.name for s in slots],
        kinds=[s.kind.value for s in slots],
        honest=honest,
        finished=finished,
        final_loss=float(scored_versions[-1]["holdout_loss"]) if scored_versions else None,
        versions=len(versions) - 1,
        rounds=sum(1 for r in rounds if r.get("status") == "closed"),
        seconds=seconds,
        audit=audit(coordinator.data_dir / "coordinator.sqlite3", campaign_id, [s.name for s in slots]),
    )
    tally_reports(result, crowd)
    return result


def tally_reports(result: RunResult, crowd: Population) -> None:
    """What the attackers' own reports add to the store's record: attempts refused before anything was
    recorded (forged ids), and how many leases a hog held."""
    refused: Counter[str] = Counter()
    for name, slot in crowd.slots.items():
        for event in crowd.events(name):
            if event["event"] == "leases":
                result.most_leases = max(result.most_leases, int(event["held"]))
            if slot.kind is not Kind.FORGED or event["event"] not in ("submit", "progress", "hello"):
                continue
            if event["event"] == "submit":
                answer = str(event["code"] or event["status"])
                went_along = event["status"] == "accepted"
            else:
                answer = str(event["answer"])
                went_along = answer in ("extended", "welcome")
            refused[f"{event['event']} {answer}"] += 1
            result.forged_through += went_along
    result.refused = dict(refused.most_common())


def wait(condition: Any, timeout: float, what: str, crowd: Population | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            died = "\n".join(crowd.died()) if crowd is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{died}" if died else ""))
        time.sleep(0.5)


# report ---------------------------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def loss_change(result: RunResult, clean: RunResult) -> float | None:
    if result.final_loss is None or clean.final_loss is None:
        return None
    return result.final_loss / clean.final_loss - 1


def row_for(result: RunResult, clean: RunResult) -> list[str]:
    a = result.audit
    change = loss_change(result, clean)
    loss = "—" if result.final_loss is None else f"{result.final_loss:.4f}"
    if result.label == "clean":
        versus = "—"
    elif change is None:
        versus = f"no loss {verdict(False)}"
    elif not result.finished:
        versus = f"{100 * change:+.2f}%, unfinished {verdict(False)}"
    else:
        versus = f"{100 * change:+.2f}% {verdict(abs(change) <= TARGET_LOSS)}"
    if not result.finished:
        loss += f" (stalled at version {result.versions} after {result.seconds:.0f} s)"
    accepted = "—"
    credit = "—"
    if result.attackers:
        accepted = f"{a.attacker_accepted} of {a.attacker_submissions}"
        if a.attacker_pending:
            accepted += f" (+{a.attacker_pending} pending)"
        if result.forged_through:
            accepted += f"; {result.forged_through} forged attempts went through"
        accepted += f" {verdict(a.attacker_accepted + result.forged_through == 0)}"
        credit = f"{a.attacker_credit:.4g} {verdict(a.attacker_credit == 0)}"
    honest = f"{a.honest_rejected} of {a.honest_submissions} ({100 * a.honest_rejected_rate:.1f}%"
    if a.honest_blameless:
        honest += f"; by validation {100 * a.honest_false_positive_rate:.1f}%"
    honest += f") {verdict(a.honest_false_positive_rate < TARGET_HONEST_REJECTED)}"
    attackers = str(len(result.attackers))
    if result.label == MIXED:
        attackers += f" ({', '.join(result.kinds)})"
    return [result.label, attackers, loss, versus, accepted, honest, credit,
            str(result.rounds), f"{result.seconds:.0f}"]  # fmt: skip


def codes_line(result: RunResult) -> str:
    a = result.audit
    parts = []
    if a.attacker_codes:
        parts.append("attackers rejected as " + ", ".join(f"{c} {n}" for c, n in a.attacker_codes.items()))
    if result.refused:
        parts.append("forged attempts answered " + ", ".join(f"{c} ×{n}" for c, n in result.refused.items()))
    if result.most_leases:
        parts.append(f"a hog held up to {result.most_leases} leases at once")
    if a.honest_codes:
        parts.append("honest rejected as " + ", ".join(f"{c} {n}" for c, n in a.honest_codes.items()))
    return f"- **{result.label}**: " + ("; ".join(parts) if parts else "nothing rejected")


HEADER: Final = [
    "run", "attackers", "final holdout loss", f"vs clean (≤ {100 * TARGET_LOSS:.0f}%)",
    "attacker updates accepted (target 0)", f"honest updates rejected (< {100 * TARGET_HONEST_REJECTED:.0f}%)",
    "attacker credit (target 0)", "rounds", "seconds",
]  # fmt: skip


def section(results: Sequence[RunResult], setup: Setup, *, sources: bool) -> str:
    clean = results[0]
    rows = [row_for(r, clean) for r in results]
    attacked = [r for r in results if r.attackers]
    again = [r for r in results if r.label == AGAIN]
    noise = loss_change(again[0], clean) if again else None
    got_through = [
        r.label for r in attacked if r.audit.attacker_accepted or r.audit.attacker_credit or r.forged_through
    ]
    harmful = [
        r.label for r in attacked if not r.finished or (c := loss_change(r, clean)) is None or abs(c) > TARGET_LOSS
    ]
    false_positive = [r.label for r in results if r.audit.honest_false_positive_rate >= TARGET_HONEST_REJECTED]
    source_note = (
        "Each volunteer connects from its own loopback address (`--bind-address 127.0.0.N`) and the coordinator "
        "runs with `--source-prefix-v4 32`, so each is its own source; a colluding pair shares one address."
        if sources
        else "All volunteers connect from 127.0.0.1 (this checkout's volunteer CLI has no `--bind-address`), so "
        "the coordinator can't tell their sources apart."
    )
    summary = [
        f"Attack kinds that got updates accepted or credit: {', '.join(got_through) or 'none'}.",
        *(
            [f"The clean campaign run twice landed {100 * abs(noise):.2f}% apart: the noise the loss target sits in."]
            if noise is not None
            else []
        ),
        f"Unfinished, or final loss outside {100 * TARGET_LOSS:.0f}% of clean: {', '.join(harmful) or 'none'}.",
        f"Runs where validation rejected {100 * TARGET_HONEST_REJECTED:.0f}% or more of honest updates: "
        f"{', '.join(false_positive) or 'none'}.",
    ]
    return "\n\n".join([
        "## Byzantine, free-riding and Sybil volunteers (`commonweights bench adversarial`)",
        machine_line(),
        f"A real coordinator process and {setup.volunteers} real volunteer processes on loopback train a `tiny` "
        f"campaign to its budget: {setup.rounds} rounds of {setup.units_per_round} units (quorum "
        f"{setup.min_accepted}), H={setup.steps} steps of {setup.batch}×{setup.seq} tokens, int8 updates, outer "
        f"`{setup.outer}`, aggregation `{setup.aggregation or 'mean'}`, replication rate {setup.replication_rate}, "
        f"seed {setup.seed}. Clean: {setup.volunteers} honest volunteers "
        "(`commonweights volunteer run`); `clean again` repeats it last. Each other row: "
        f"{100 * setup.attacker_share:.0f}% of them replaced by "
        "attackers of one kind (`python -m benchmarks.adversaries`, speaking the protocol like any third-party "
        "client); `mixed` fills the attacker slots with different kinds in a seeded order; a colluding pair is "
        f"two identities. {source_note} Every run starts a fresh coordinator, waits until all volunteers are "
        "connected, then posts the campaign; figures come from the coordinator's store and REST API. "
        "Honest updates rejected: all of them, and (the target's figure) those validation rejected, leaving out "
        "`stale_update`, `campaign_closed` and `inconclusive`, which judge no one's work. "
        "Accepted counts an attacker's submissions the store marks accepted (pending: valid, waiting for a "
        "replica); forged attempts refused before anything is stored (made-up leases, another's unit) come "
        "from the attacker's own record. Final loss: the holdout loss the coordinator published for the last "
        "version.",
        markdown_table(HEADER, rows),
        "Rejections by code:\n\n" + "\n".join(codes_line(r) for r in results),
        " ".join(summary),
    ])  # fmt: skip


# command --------------------------------------------------------------------------------------------------


@contextmanager
def bar(console: Console) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    with progress:
        yield progress


def parse_kinds(text: str) -> list[str]:
    """`--kinds`: comma-separated kinds and `mixed`, or `all`."""
    known = [k.value for k in KINDS] + [MIXED]
    wanted = known if text.strip() == "all" else [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in known]
    if unknown or not wanted:
        raise ValueError(f"unknown attack kind(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}")
    return wanted


def run_bench_adversarial(args: argparse.Namespace) -> int:
    from training.data import ensure_default_dataset

    console = Console()
    setup = Setup(
        volunteers=args.volunteers, attacker_share=args.attacker_share, rounds=args.rounds,
        units_per_round=args.units_per_round, min_accepted=min(args.min_accepted, args.units_per_round),
        steps=args.inner_steps, replication_rate=args.replication_rate, outer=args.outer, aggregation=args.aggregation,
        seed=args.seed,
    )  # fmt: skip
    try:
        kinds = parse_kinds(args.kinds)
    except ValueError as error:
        console.print(f"[red]{error}")
        return 2
    dataset = args.dataset or ensure_default_dataset(progress=True)
    work = Path(tempfile.mkdtemp(prefix="commonweights-bench-adversarial-"))
    console.print(f"working in {work}; {len(kinds) + 2} campaigns of {setup.volunteers} volunteers")
    results: list[RunResult] = []
    # The clean campaign runs again last: how far two clean runs land apart is the noise the loss target sits in.
    runs: list[tuple[str, str | None]] = [("clean", None), *((k, k) for k in kinds), (AGAIN, None)]
    with bar(console) as progress:
        for name, kind in runs:
            task = progress.add_task(name, total=setup.rounds)
            # An attack that stalls the campaign is cut off: a few times the clean run's time is enough to tell.
            timeout = setup.timeout_s if not results else max(300.0, 4 * results[0].seconds)
            result = run_one(
                dataset, work / name.replace(" ", "-"), kind, setup, progress=progress, task=task, timeout_s=timeout,
                label=name,
            )  # fmt: skip
            progress.update(task, completed=setup.rounds if result.finished else result.versions)
            results.append(result)
            progress.console.print(" | ".join(row_for(result, results[0])))
    body = section(results, setup, sources=source_flags())
    write_section(args.output, "adversarial", body)
    console.print(body)
    console.print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2, default=str) + "\n")
    return 0
