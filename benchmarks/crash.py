"""`commonweights bench crash`: a coordinator SIGKILLed again and again, and volunteers that come and go.

Two measurements, written to docs/benchmarks.md:

1. Crashes. A real coordinator process with real volunteer processes (`commonweights volunteer run`)
   on loopback trains a `tiny` campaign with small, fast units. The coordinator is SIGKILLed at
   seeded random instants, spread over the phases of its work: any moment once it serves, while a
   volunteer submits, right after a volunteer received an ack, at a round's close, and while it
   is still starting up. Each time it is started again on the same data dir and port; the
   volunteers reconnect on their own (backoff with jitter) and carry on. After the last kill the
   campaign must publish more versions; then everything stops and the record is audited:
   every `result` frame with status accepted that a volunteer logged must be an accepted
   submission of that volunteer and unit in the store (acknowledged updates lost), and the
   history replay (benchmarks/history.py) must rebuild every published version from θ_0 and the
   accepted updates, with direct counts of any update counted twice (applied twice).
2. Churn. The same campaign (same seed, same units) runs twice on a fresh coordinator: calm, and
   with 30 % of its volunteers SIGKILLed mid-run at seeded moments and replaced at once by fresh
   processes with new identities. The last version's published holdout loss is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from benchmarks.history import HistoryAudit, audit_history
from benchmarks.report import machine_line, markdown_table, write_section
from coordinator.client import CoordinatorClient
from coordinator.local import free_port, stop, wait_until_healthy

__all__ = ["run_bench_crash"]

TARGET_KILLS = 100
TARGET_CHURN_LOSS = 0.01  # the churned campaign's final holdout loss within 1 % of the calm one's
HEARTBEAT_S = 1.0
TRIGGER_TIMEOUT_S = 600.0  # longer than the volunteers' longest reconnect backoff (300 s)
VERSIONS_AFTER_LAST_KILL = 2
# A kill at "any moment" lands this long after the coordinator serves, at most: long enough for
# volunteers in backoff to come back, so that the coordinator is not down most of the time.
ANY_WINDOW_S = 10.0

ACK = re.compile(r"unit ([0-9a-f]{32}): accepted\b")
IDENTITY = re.compile(r"(?:registered|signed in) as ([0-9a-f]+)")
REREGISTERED = "doesn't know our token"


class Phase(StrEnum):
    """Where in the coordinator's work a kill lands."""

    ANY = "any moment once serving"
    SUBMIT = "while a volunteer submits"
    ACK = "right after an ack"
    CLOSE = "at a round's close"
    STARTUP = "while starting up"


PHASE_WEIGHTS = {Phase.ANY: 3.0, Phase.SUBMIT: 2.5, Phase.ACK: 2.0, Phase.CLOSE: 1.5, Phase.STARTUP: 1.0}


def campaign_spec(
    name: str, *, seed: int, units: int, min_accepted: int, steps: int, batch: int, seq: int, rounds: int | None,
    lease_s: float, deadline_s: float,
) -> dict[str, Any]:  # fmt: skip
    tokens_per_round = units * steps * batch * seq
    return {
        "name": name,
        "model": "tiny",
        "dataset": "bench",
        "codec": "int8",
        "seed": seed,
        # No budget for the crash run: it trains until the bench stops it.
        "token_budget": rounds * tokens_per_round if rounds is not None else 1 << 40,
        "inner": {"steps": steps, "batch_size": batch, "seq_len": seq, "warmup_steps": 0},
        "rounds": {
            "units_per_round": units,
            "min_accepted": min_accepted,
            "lease_s": lease_s,
            "deadline_s": deadline_s,
        },
        "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
    }


# processes -------------------------------------------------------------------------------------------


class Server:
    """A coordinator's data dir and port, served by one process at a time: killed and started again.

    Not coordinator.local.start_coordinator, which returns only once the server answers: a kill
    during start-up needs the process before that.
    """

    def __init__(self, data_dir: Path, dataset: Path, log: Path) -> None:
        self.data_dir, self.dataset, self.log = data_dir, dataset, log
        log.parent.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def api(self) -> CoordinatorClient:
        return CoordinatorClient(self.base, (self.data_dir / "admin_token").read_text().strip())

    @property
    def db(self) -> Path:
        return self.data_dir / "coordinator.sqlite3"

    def launch(self) -> None:
        command = [
            sys.executable, "-m", "commonweights", "coordinator", "serve", "--data-dir", str(self.data_dir),
            "--port", str(self.port), "--log-level", "warning", "--dataset", f"bench={self.dataset}",
            "--heartbeat-interval", str(HEARTBEAT_S),
        ]  # fmt: skip
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )

    def wait_ready(self) -> None:
        assert self.process is not None
        try:
            wait_until_healthy(CoordinatorClient(self.base), timeout=300, process=self.process)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}; its log ends:\n{self.log.read_text(errors='replace')[-3000:]}") from error

    def start(self) -> float:
        """Launch and wait until /api/health answers; the seconds that took."""
        began = time.monotonic()
        self.launch()
        self.wait_ready()
        return time.monotonic() - began

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, grace=60)


class Volunteers:
    """Headless volunteer processes, each with its own home (credentials, cache, unit in progress) and log."""

    def __init__(self, root: Path, server: Server) -> None:
        self.root, self.server = root, server
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", self.server.ws_url,
            "--name", name, "--threads", "1", "--config-dir", str(home / "config"), "--cache-dir", str(home / "cache"),
            "--data-dir", str(home / "data"),
        ]  # fmt: skip
        # Unbuffered and unwrapped: the bench reads acks from the log while the volunteer runs.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"}
        with self.log(name).open("ab") as log:
            self.processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log(self, name: str) -> Path:
        return self.root / name / "log.txt"

    @property
    def logs(self) -> list[Path]:
        return [self.log(name) for name in self.processes]

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        for process in self.processes.values():
            stop(process, grace=30)


class LogTail:
    """The complete lines appended to a file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def lines(self) -> list[str]:
        try:
            if self.path.stat().st_size <= self.offset:
                return []
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        *complete, self.partial = (self.partial + chunk).split(b"\n")
        return [line.decode(errors="replace") for line in complete]


class Activity:
    """What the volunteers and the store show as it happens: submissions begun, acks received, rounds closing."""

    def __init__(self, logs: Sequence[Path], db: Path, campaign_id: int, min_accepted: int) -> None:
        self.tails = [LogTail(path) for path in logs]
        self.db, self.campaign_id, self.min_accepted = db, campaign_id, min_accepted
        self.submits = self.acks = 0

    def read(self) -> tuple[int, int]:
        """(submissions begun, accepted results received) in the volunteers' logs so far."""
        for tail in self.tails:
            for line in tail.lines():
                self.submits += line.startswith("[submitting]")
                self.acks += ACK.search(line) is not None
        return self.submits, self.acks

    def round_state(self) -> tuple[int, int]:
        """(versions published, accepted submissions in the open round), straight from the database."""
        try:
            db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
            try:
                (versions,) = db.execute(
                    "SELECT COUNT(*) FROM versions WHERE campaign_id = ?", (self.campaign_id,)
                ).fetchone()
                (in_round,) = db.execute(
                    "SELECT COUNT(*) FROM submissions s JOIN rounds r ON r.id = s.round_id "
                    "WHERE r.campaign_id = ? AND r.status = 'open' AND s.status = 'accepted'",
                    (self.campaign_id,),
                ).fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            return -1, -1
        return int(versions), int(in_round)

    def next_submit(self) -> bool:
        submits, _ = self.read()
        return wait_for(lambda: self.read()[0] > submits, timeout=TRIGGER_TIMEOUT_S)

    def next_ack(self) -> bool:
        _, acks = self.read()
        return wait_for(lambda: self.read()[1] > acks, timeout=TRIGGER_TIMEOUT_S)

    def next_close(self) -> bool:
        versions, _ = self.round_state()

        def closing() -> bool:
            now, in_round = self.round_state()
            return now > versions or in_round >= self.min_accepted

        return wait_for(closing, timeout=TRIGGER_TIMEOUT_S)


def wait_for(condition: Callable[[], bool], *, timeout: float, every: float = 0.01) -> bool:
    """Whether `condition()` came true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


# 1: crashes ---------------------------------------------------------------------------------------------


@dataclass
class CrashResult:
    volunteers: int
    kills: int
    by_phase: dict[str, int]
    stalled: int  # kills whose trigger did not come within TRIGGER_TIMEOUT_S (killed anyway)
    restart_s: list[float]
    load: list[float]  # the machine's 1-minute load average at each kill: restarts are CPU-bound
    acks: int
    acks_lost: list[str]
    unacknowledged: int  # accepted submissions no volunteer logged an ack for
    identities_lost: int  # volunteers the coordinator forgot after a crash and that registered again
    audit: HistoryAudit
    rounds_closed: int
    versions_after_last_kill: int
    seconds: float
    rejections: dict[str, int] = field(default_factory=dict)

    @property
    def applied_twice(self) -> int:
        return self.audit.applied_twice


def trigger(phase: Phase, activity: Activity, rng: random.Random) -> bool:
    """Wait, the coordinator serving, for the moment `phase` names; False when it never came (a stall)."""
    if phase is Phase.ANY:
        time.sleep(rng.uniform(0.0, ANY_WINDOW_S))
        return True
    if phase is Phase.SUBMIT:
        came = activity.next_submit()
        time.sleep(rng.uniform(0.0, 0.25))  # the update in flight, being validated, committed, or answered
        return came
    if phase is Phase.ACK:
        return activity.next_ack()
    return activity.next_close()


def acks_in(log: str) -> tuple[list[tuple[str, str]], int]:
    """(volunteer id, unit id) of every accepted result in a volunteer's log, and how often it registered again."""
    acks: list[tuple[str, str]] = []
    identity = ""
    for line in log.splitlines():
        if (found := IDENTITY.search(line)) is not None:
            identity = found.group(1)
        elif (ack := ACK.search(line)) is not None:
            acks.append((identity, ack.group(1)))
    return acks, log.count(REREGISTERED)


def recorded(db_path: Path) -> set[tuple[str, str]]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {
            (v, u) for v, u in db.execute("SELECT volunteer_id, unit_id FROM submissions WHERE status = 'accepted'")
        }
    finally:
        db.close()


def run_crashes(
    dataset: Path, work: Path, *, kills: int, volunteers: int, seed: int, progress: Progress
) -> CrashResult:  # fmt: skip
    rng = random.Random(seed)
    server = Server(work / "coordinator", dataset, work / "coordinator.log")
    began = time.monotonic()
    restarts = [server.start()]  # the first start, only the median for start-up kills: not a restart
    crew = Volunteers(work / "volunteers", server)
    min_accepted = max(1, volunteers - 1)  # a round closes without its slowest unit, which then arrives stale
    campaign_id: int = server.api.post_campaign(
        campaign_spec("crash", seed=seed, units=volunteers, min_accepted=min_accepted, steps=3, batch=2, seq=32,
                      rounds=None, lease_s=30, deadline_s=60)
    )["id"]  # fmt: skip
    by_phase: Counter[str] = Counter()
    stalled = 0
    load: list[float] = []
    task = progress.add_task("SIGKILLs", total=kills)
    try:
        for i in range(volunteers):
            crew.start(f"v{i}")
        activity = Activity(crew.logs, server.db, campaign_id, min_accepted)
        # The volunteers start together and load PyTorch: let training begin before the first kill.
        wait_for(lambda: activity.read()[1] > 0, timeout=TRIGGER_TIMEOUT_S, every=0.2)
        launched: float | None = None  # when the process now running was launched, until it serves
        for _ in range(kills):
            phases = [p for p in Phase if launched is not None or p is not Phase.STARTUP]
            phase = rng.choices(phases, [PHASE_WEIGHTS[p] for p in phases])[0]
            if phase is Phase.STARTUP:
                time.sleep(rng.uniform(0.0, statistics.median(restarts)))
            else:
                if launched is not None:
                    server.wait_ready()
                    restarts.append(time.monotonic() - launched)
                stalled += not trigger(phase, activity, rng)
            server.kill()
            load.append(os.getloadavg()[0])
            launched = time.monotonic()
            server.launch()
            by_phase[phase.value] += 1
            progress.advance(task)
        server.wait_ready()
        if launched is not None:
            restarts.append(time.monotonic() - launched)
        versions, _ = activity.round_state()
        after = wait_for(
            lambda: activity.round_state()[0] >= versions + VERSIONS_AFTER_LAST_KILL, timeout=TRIGGER_TIMEOUT_S
        )
        rejections = server.api.campaign(campaign_id).get("rejections", {})
    finally:
        crew.stop_all()
        server.stop()
    logs = [acks_in(path.read_text(errors="replace")) for path in crew.logs]
    acks = [ack for found, _ in logs for ack in found]
    in_store = recorded(server.db)
    lost = sorted(f"{unit} (volunteer {vid})" for vid, unit in set(acks) - in_store)
    audit = audit_history(server.data_dir, campaign_id)
    db = sqlite3.connect(f"file:{server.db}?mode=ro", uri=True)
    try:
        (closed,) = db.execute(
            "SELECT COUNT(*) FROM rounds WHERE campaign_id = ? AND status = 'closed'", (campaign_id,)
        ).fetchone()
    finally:
        db.close()
    return CrashResult(
        volunteers=volunteers,
        kills=sum(by_phase.values()),
        by_phase=dict(by_phase),
        stalled=stalled,
        restart_s=restarts[1:],
        load=load,
        acks=len(acks),
        acks_lost=lost,
        unacknowledged=len(in_store - set(acks)),
        identities_lost=sum(again for _, again in logs),
        audit=audit,
        rounds_closed=int(closed),
        versions_after_last_kill=VERSIONS_AFTER_LAST_KILL if after else 0,
        seconds=time.monotonic() - began,
        rejections=dict(rejections),
    )


# 2: churn -----------------------------------------------------------------------------------------------


@dataclass
class ChurnRun:
    churned: bool
    final_loss: float
    versions: int
    seconds: float
    killed: list[str]
    units_issued_again: int


def run_campaign(
    dataset: Path, work: Path, *, volunteers: int, rounds: int, fraction: float, churn: bool, seed: int,
    progress: Progress, task: TaskID,
) -> ChurnRun:  # fmt: skip
    name = "churn" if churn else "calm"
    server = Server(work / name / "coordinator", dataset, work / name / "coordinator.log")
    server.start()
    crew = Volunteers(work / name / "volunteers", server)
    rng = random.Random(seed)
    victims = sorted(rng.sample(range(volunteers), k=round(fraction * volunteers))) if churn else []
    # Each victim dies at its own version in the middle half of the run, mid-unit.
    due = {v: rng.randint(max(1, rounds // 4), max(1, 3 * rounds // 4)) for v in victims}
    began = time.monotonic()
    try:
        api = server.api
        campaign_id: int = api.post_campaign(
            campaign_spec(name, seed=seed, units=volunteers, min_accepted=volunteers, steps=30, batch=4, seq=64,
                          rounds=rounds, lease_s=8, deadline_s=3600)
        )["id"]  # fmt: skip
        for i in range(volunteers):
            crew.start(f"v{i}")
        killed: list[str] = []
        deadline = time.monotonic() + 3 * 3600
        while (row := api.campaign(campaign_id))["status"] != "finished":
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {name} campaign did not finish in 3 hours (at version {row['version']})")
            progress.update(task, completed=row["version"])
            for victim in [v for v, at in due.items() if row["version"] >= at]:
                del due[victim]
                time.sleep(rng.uniform(0.0, 1.0))
                crew.kill(f"v{victim}")
                crew.start(f"v{victim}-new")  # a fresh process, home and identity
                killed.append(f"v{victim}")
            time.sleep(0.2)
        progress.update(task, completed=rounds)
        versions: list[dict[str, Any]] = []

        def last_loss_published() -> bool:
            versions[:] = api.versions(campaign_id)
            return versions[-1]["holdout_loss"] is not None

        if not wait_for(last_loss_published, timeout=600, every=0.5):
            raise TimeoutError(f"the {name} campaign's last version has no holdout loss after 10 minutes")
        seconds = time.monotonic() - began
    finally:
        crew.stop_all()
        server.stop()
    db = sqlite3.connect(f"file:{server.db}?mode=ro", uri=True)
    try:
        (again,) = db.execute("SELECT COUNT(*) FROM units WHERE attempts > 1").fetchone()
    finally:
        db.close()
    return ChurnRun(churn, float(versions[-1]["holdout_loss"]), len(versions) - 1, seconds, killed, int(again))


# report ---------------------------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def crash_section(result: CrashResult) -> str:
    audit = result.audit
    restarts = result.restart_s
    phases = ", ".join(f"{phase.value} {result.by_phase.get(phase.value, 0)}" for phase in Phase)
    replay = (
        f"the replay rebuilt all {audit.versions} published versions from θ_0"
        if audit.replay_error is None
        else f"the replay FAILED: {audit.replay_error.splitlines()[0]}"
    )
    rejected = ", ".join(f"{code} {n}" for code, n in sorted(result.rejections.items())) or "none"
    lost = f"{len(result.acks_lost)} of {result.acks:,} acks"
    if result.unacknowledged:
        have = "submission has" if result.unacknowledged == 1 else "submissions have"
        lost += (
            f"; {result.unacknowledged} more accepted {have} no ack in the logs (the kill came before the answer "
            "reached the volunteer)"
        )
    if result.acks_lost:
        lost += " (" + ", ".join(result.acks_lost[:3]) + (" …)" if len(result.acks_lost) > 3 else ")")
    stalled = f"; {result.stalled} whose moment never came" if result.stalled else ""
    rows = [
        ["coordinator SIGKILLs", f"{result.kills} ({phases}{stalled})", f"{TARGET_KILLS}",
         verdict(result.kills >= TARGET_KILLS)],
        ["acknowledged updates lost", lost, "0", verdict(not result.acks_lost)],
        ["updates applied twice", f"{audit.applied_twice} ({replay}; {audit.extra_by_unit} units and "
         f"{audit.extra_by_update} update blobs accepted twice, {audit.applied_minus_published:+d} applied vs the "
         "versions' counts)", "0", verdict(audit.consistent)],
        ["volunteer identities lost", str(result.identities_lost), "0", verdict(result.identities_lost == 0)],
        ["restart, SIGKILL to /api/health", f"p50 {statistics.median(restarts):.1f} s, max {max(restarts):.1f} s "
         f"({len(restarts)} restarts; load average {statistics.mean(result.load):.1f} on {os.cpu_count()} cores)", "—",
         "—"],
        ["rounds completed", f"{result.rounds_closed:,} ({audit.applied:,} updates applied of {audit.accepted:,} "
         f"accepted; rejected: {rejected}); {result.versions_after_last_kill} more versions after the last kill",
         "—", "—"],
    ]  # fmt: skip
    return "\n\n".join([
        "## Coordinator crashes and volunteer churn (`commonweights bench crash`)",
        machine_line(),
        f"Crashes: a real coordinator process and {result.volunteers} real volunteer processes (`commonweights "
        "volunteer run`, one thread each) on loopback train a `tiny` campaign with small units (3 steps of 2×32 "
        f"tokens, int8; {result.volunteers} units a round, closed at {max(1, result.volunteers - 1)} so the last "
        "one arrives stale). The coordinator is SIGKILLed at seeded random instants: any moment once it serves "
        f"(0–{ANY_WINDOW_S:.0f} s after /api/health answers), while a volunteer submits (0–250 ms after a "
        "volunteer logs `[submitting]`), right after an ack (a volunteer logged an accepted `result`), at a "
        "round's close (the open round holds its quorum or a new version appeared), or while it starts up (before or "
        "during its restore). After each kill it is started again on the same data dir and port; the "
        "volunteers reconnect with their backoff (exponential with full jitter, up to 300 s: a coordinator that "
        "keeps dying sees its volunteers come back ever later, which is what bounds the acks per kill here) and "
        "resubmit what had no answer. After the last kill the "
        f"campaign must publish {VERSIONS_AFTER_LAST_KILL} more versions, then everything is stopped and "
        "audited. Lost: an accepted `result` a volunteer logged with no accepted submission of that volunteer "
        "and unit in the store. Applied twice: the history replay (benchmarks/history.py: every closed "
        "round's accepted updates from θ_0 through the outer optimizer must give each published checkpoint, "
        "and each version's update count must match) and direct counts of a unit or an update blob accepted "
        f"with a weight twice. The run took {result.seconds / 60:.0f} minutes.",
        markdown_table(["measure", "result", "target", "verdict"], rows),
    ])  # fmt: skip


def churn_section(calm: ChurnRun, churned: ChurnRun, *, volunteers: int, rounds: int) -> str:
    change = churned.final_loss / calm.final_loss - 1
    rows = [
        ["calm", f"{calm.final_loss:.4f}", str(calm.versions), "—", str(calm.units_issued_again),
         f"{calm.seconds:.0f}"],
        [f"churn ({len(churned.killed)} of {volunteers} killed and replaced)", f"{churned.final_loss:.4f}",
         str(churned.versions), ", ".join(churned.killed), str(churned.units_issued_again), f"{churned.seconds:.0f}"],
    ]  # fmt: skip
    return "\n\n".join([
        "### Churn",
        f"The same `tiny` campaign twice, each on a fresh coordinator with {volunteers} real volunteer "
        f"processes: {rounds} rounds of {volunteers} units (30 steps of 4×64 tokens, int8), a round closing "
        "when all its units are in, leases of 8 s; same seed, so the same units. In the churned run "
        f"{len(churned.killed)} volunteers are SIGKILLed, each at a seeded version in the middle half of the "
        "run, and replaced at once by a fresh process with a new identity; a dead volunteer's unit is issued "
        "again when its lease runs out. Units issued again: units leased more than once (a killed volunteer's, or one "
        "whose lease ran out while its volunteer, short of CPU, trained it). Loss: the holdout loss the coordinator "
        "published for the last version.",
        markdown_table(
            ["run", "final holdout loss", "versions", "killed", "units issued again", "seconds"], rows
        ),
        f"Churned vs calm: {100 * change:+.2f}% (target within ±{100 * TARGET_CHURN_LOSS:.0f}%): "
        f"{verdict(abs(change) <= TARGET_CHURN_LOSS)}.",
    ])  # fmt: skip


# command --------------------------------------------------------------------------------------------------


@contextmanager
def bar(console: Console) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    with progress:
        yield progress


def run_bench_crash(args: argparse.Namespace) -> int:
    from training.data import ensure_default_dataset

    console = Console()
    dataset = args.dataset or ensure_default_dataset(progress=True)
    work = Path(tempfile.mkdtemp(prefix="commonweights-bench-crash-"))
    console.print(f"working in {work}")
    results: dict[str, Any] = {}
    consistent = True
    if not args.churn_only:
        with bar(console) as progress:
            crash = run_crashes(
                dataset, work / "crash", kills=args.kills, volunteers=args.volunteers, seed=args.seed, progress=progress
            )
        results["crash"] = {**asdict(crash), "applied_twice": crash.applied_twice}
        consistent = crash.audit.consistent and not crash.acks_lost
        section = crash_section(crash)
        write_section(args.output, "crash", section)
        console.print(section, markup=False)
    if not args.crash_only:
        runs: list[ChurnRun] = []
        with bar(console) as progress:
            for churn in (False, True):
                task = progress.add_task("churn run" if churn else "calm run", total=args.churn_rounds)
                runs.append(
                    run_campaign(
                        dataset, work / "churn", volunteers=args.churn_volunteers, rounds=args.churn_rounds,
                        fraction=args.churn_fraction, churn=churn, seed=args.seed, progress=progress, task=task,
                    )
                )  # fmt: skip
        calm, churned = runs
        results["churn"] = {"calm": asdict(calm), "churned": asdict(churned)}
        section = churn_section(calm, churned, volunteers=args.churn_volunteers, rounds=args.churn_rounds)
        write_section(args.output, "churn", section)
        console.print(section, markup=False)
    console.print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if not consistent:
        console.print(f"[bold red]the coordinator lost or double-counted updates; its data dir is in {work}")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    return 0
