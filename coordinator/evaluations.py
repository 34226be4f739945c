"""`evaluate` units: the holdout loss of each new version, measured by volunteers instead of the
coordinator, forward only — work for clients that can't train (a phone's browser) as well as for those
that can.

When a campaign publishes a version, the desk opens a job: the version's checkpoint and the holdout
slice the coordinator's own evaluator would read, in the same batches. It leases the job to
volunteers that offer `evaluate`, at most two at a time, never two from the same network prefix
(Sybils run from one place can't confirm each other). Each answers with `report`: every batch's loss.

    >>> desk.open(runtime, version)
    >>> lease = desk.lease(volunteer_id, source, campaigns)       # an EvalLease, or None
    >>> desk.report(volunteer_id, unit_id, lease_id, losses)      # the verdict (an Outcome)

- The first report is held (`accepted`, no credit yet): one volunteer's figure decides nothing.
- A second report from an unrelated volunteer that agrees batch by batch (within `EVAL_RTOL`, far
  above the torch/ONNX Runtime difference of ~1e-6 and far below what a made-up or misweighted figure
  misses by) settles the job: the holdout loss is the mean of the two, and both are credited.
- Two that disagree settle nothing: both `inconclusive` (no credit, no blame: one of them is wrong
  and the desk can't tell which), and the coordinator measures the version itself.
- A job nobody settles within `grace_s` is measured by the coordinator, as before. A job takes at
  most two results, so an evaluator can't stretch one version into a stream of credit.
The coordinator's evaluator asks `pending` before measuring a version itself; with no volunteer that
evaluates connected, it measures at once, as it always did.

`check` units are the same work on other weights: when the engine holds an update for its holdout
check (`validation.check_rate`), it writes θ_v − η·Δ as a checkpoint and the desk opens a job for
its holdout loss, which the engine compares with the version's (`farm(runtime)` is the engine's
side of it: `CheckFarm`). Nobody checks an update of their own, or one from their network prefix.

Jobs live in memory: after a restart the coordinator measures the versions still without a
holdout loss, and the updates still waiting for their check, itself.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from coordinator.engine import CampaignRuntime, Outcome, OutcomeStatus
from coordinator.engine.models import CheckFarm
from coordinator.store import Store, VersionRow
from protocol.errors import ErrorCode
from training.inner import sequence_batches

__all__ = ["EVAL_RTOL", "EvalLease", "EvaluationDesk"]

log = logging.getLogger(__name__)

EVAL_RTOL = 1e-3  # relative difference of one batch's loss two reports may have and agree
UNIT_PREFIX = "eval-"
CHECK_PREFIX = "check-"


class _LeaseProblem(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Lease:
    volunteer_id: str
    source: str
    lease_id: str
    deadline: float


@dataclass
class _Job:
    campaign_id: int
    version: int
    checkpoint: tuple[str, int]
    data: tuple[str, int, int]  # sha256, size, tokens
    batches: int
    params: int
    opened_at: float
    leases: dict[str, _Lease] = field(default_factory=dict)  # by unit id
    reports: dict[str, tuple[str, list[float]]] = field(default_factory=dict)  # volunteer -> (source, losses)
    loss: float | None = None  # settled by volunteers
    disputed: bool = False
    kind: str = "evaluate"  # or "check": the loss of θ_v − η·Δ for the update of unit `checked`
    checked: str = ""
    barred: frozenset[str] = frozenset()  # a checked update's volunteer and its network prefixes

    @property
    def open(self) -> bool:
        return self.loss is None and not self.disputed


@dataclass(frozen=True)
class EvalLease:
    """What the gateway needs to describe an evaluate unit."""

    unit_id: str
    lease_id: str
    deadline: float
    campaign_id: int
    version: int
    checkpoint: tuple[str, int]
    data: tuple[str, int, int]
    batches: int
    kind: str = "evaluate"


class EvaluationDesk:
    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        grace_s: float = 60.0,
        lease_s: float = 120.0,
        batch: int = 8,
        eval_tokens: int = 32768,
    ) -> None:
        self.store = store
        self.clock = clock
        self.grace_s = grace_s
        self.lease_s = lease_s
        self.batch = batch
        self.eval_tokens = eval_tokens
        self._jobs: dict[tuple[int, int], _Job] = {}  # evaluate jobs by (campaign, version)
        self._checks: dict[tuple[int, str], _Job] = {}  # check jobs by (campaign, checked unit)
        self._slices: dict[int, tuple[tuple[str, int, int], int, int]] = {}  # campaign -> (data, batches, params)
        self._lock = threading.Lock()
        self._evaluators = 0  # connected volunteers that offer evaluate
        self._checkers: Counter[str] = Counter()  # network prefixes of connected volunteers that offer check

    def evaluator_joined(self) -> None:
        with self._lock:
            self._evaluators += 1

    def evaluator_left(self) -> None:
        with self._lock:
            self._evaluators = max(0, self._evaluators - 1)

    def checker_joined(self, source: str) -> None:
        with self._lock:
            self._checkers[source] += 1

    def checker_left(self, source: str) -> None:
        with self._lock:
            self._checkers[source] -= 1
            if self._checkers[source] <= 0:
                del self._checkers[source]

    def _all(self) -> list[_Job]:
        return [*self._jobs.values(), *self._checks.values()]

    # opening --------------------------------------------------------------------------------------

    def open(self, runtime: CampaignRuntime, version: VersionRow) -> None:
        """A job for `version`'s holdout loss (nothing when volunteers don't evaluate: grace 0)."""
        if self.grace_s <= 0:
            return
        data, batches, params = self._holdout(runtime)
        if batches == 0:
            return
        job = _Job(
            campaign_id=runtime.row.id,
            version=version.version,
            checkpoint=(version.checkpoint_sha, version.checkpoint_size),
            data=data,
            batches=batches,
            params=params,
            opened_at=self.clock(),
        )
        with self._lock:
            self._jobs[(job.campaign_id, job.version)] = job
            for key in [k for k in self._jobs if k[0] == job.campaign_id and k[1] < job.version - 4]:
                del self._jobs[key]  # old versions: the coordinator has long measured them

    # check units --------------------------------------------------------------------------------

    def farm(self, runtime: CampaignRuntime) -> CheckFarm:
        """The engine's side of check units for one campaign."""
        return _Farm(self, runtime)

    def wants_check(self, volunteer_id: str) -> bool:
        """Whether two volunteers from other network prefixes than `volunteer_id`'s could check its update."""
        if self.grace_s <= 0:
            return False
        barred = self._barred(volunteer_id)
        with self._lock:
            return len(set(self._checkers) - barred) >= 2

    def _barred(self, volunteer_id: str) -> frozenset[str]:
        volunteer = self.store.volunteer(volunteer_id)
        sources = {volunteer.source, volunteer.last_source} if volunteer is not None else set()
        return frozenset(p for p in sources if p)

    def open_check(
        self, runtime: CampaignRuntime, unit_id: str, version: int, checkpoint: tuple[str, int], volunteer_id: str
    ) -> None:
        data, batches, params = self._holdout(runtime)
        if batches == 0:
            return  # no job: the engine measures the update itself
        job = _Job(
            campaign_id=runtime.row.id,
            version=version,
            checkpoint=checkpoint,
            data=data,
            batches=batches,
            params=params,
            opened_at=self.clock(),
            kind="check",
            checked=unit_id,
            barred=self._barred(volunteer_id) | {volunteer_id},
        )
        with self._lock:
            self._checks[(job.campaign_id, unit_id)] = job

    def check_result(self, campaign_id: int, unit_id: str) -> float | bool:
        """CheckFarm.result: the agreed loss, True while volunteers may settle it, False when they won't."""
        with self._lock:
            job = self._checks.get((campaign_id, unit_id))
            if job is None or job.disputed:
                return False
            if job.loss is not None:
                return job.loss
            return self.clock() - job.opened_at < self.grace_s

    def close_check(self, campaign_id: int, unit_id: str) -> None:
        with self._lock:
            self._checks.pop((campaign_id, unit_id), None)

    def _holdout(self, runtime: CampaignRuntime) -> tuple[tuple[str, int, int], int, int]:
        """The campaign's holdout slice blob (sha256, size, tokens), its batch count and the model's
        parameter count: the same for every version, so cut once per campaign."""
        known = self._slices.get(runtime.row.id)
        if known is not None and runtime.state.blobs.exists(known[0][0]):
            return known
        dataset, seq_len = runtime.dataset, runtime.spec.inner.seq_len
        tokens = dataset.holdout_slice(0, min(self.eval_tokens + 1, dataset.num_holdout_tokens))
        batches = sum(1 for _ in sequence_batches(tokens, self.batch, seq_len))
        dtype = runtime.state.data_dtype()
        data = np.ascontiguousarray(tokens[: batches * self.batch * seq_len + 1].astype(dtype)).tobytes()
        digest = runtime.state.blobs.put(data, durable=False)  # cut again from the dataset if lost
        params = sum(math.prod(shape) for shape in runtime.shapes.values())
        found = ((digest, len(data), len(data) // np.dtype(dtype).itemsize), batches, params)
        self._slices[runtime.row.id] = found
        return found

    def pending(self, campaign_id: int, version: int) -> bool:
        """Whether volunteers may still settle this version's loss, so the coordinator waits for them:
        its job is open, younger than `grace_s`, and a volunteer that evaluates is connected (or holds it)."""
        with self._lock:
            job = self._jobs.get((campaign_id, version))
            if job is None or not job.open or self.clock() - job.opened_at >= self.grace_s:
                return False
            return self._evaluators > 0 or bool(job.leases) or bool(job.reports)

    def settled_loss(self, campaign_id: int, version: int) -> float | None:
        with self._lock:
            job = self._jobs.get((campaign_id, version))
            return job.loss if job is not None else None

    def is_unit(self, unit_id: str) -> bool:
        return unit_id.startswith((UNIT_PREFIX, CHECK_PREFIX))

    def is_blob(self, digest: str) -> bool:
        with self._lock:
            return any(digest in (job.data[0], job.checkpoint[0]) for job in self._all())

    # leasing --------------------------------------------------------------------------------------

    def offers(self, campaign_id: int, kinds: Collection[str] = ("evaluate",)) -> bool:
        """Whether the campaign has a job of these kinds still open (cheap: asked before choosing a
        runtime for it)."""
        with self._lock:
            return any(j.campaign_id == campaign_id and j.open and j.kind in kinds for j in self._all())

    def lease(
        self, volunteer_id: str, source: str, campaign_ids: Sequence[int], kinds: Collection[str] = ("evaluate",)
    ) -> EvalLease | None:
        """A unit of an open job of these campaigns and kinds this volunteer may take: checks first
        (an update waits for each), then evaluations, newest first."""
        now = self.clock()
        with self._lock:
            jobs = sorted(
                (j for j in self._all() if j.campaign_id in campaign_ids and j.open and j.kind in kinds),
                key=lambda j: (j.kind != "check", -j.version, j.opened_at),
            )
            for job in jobs:
                live = {u: lease for u, lease in job.leases.items() if lease.deadline > now}
                job.leases = live
                if volunteer_id in job.reports or any(lease.volunteer_id == volunteer_id for lease in live.values()):
                    continue
                if volunteer_id in job.barred or source in job.barred:
                    continue  # nobody checks their own update, or one from their network
                others = {lease.source for lease in live.values()} | {src for src, _ in job.reports.values()}
                if source in others or len(live) + len(job.reports) >= 2:
                    continue
                prefix = CHECK_PREFIX if job.kind == "check" else UNIT_PREFIX
                unit_id = f"{prefix}{job.campaign_id}-{job.version}-{secrets.token_hex(6)}"
                lease = _Lease(volunteer_id, source, secrets.token_hex(8), now + self.lease_s)
                job.leases[unit_id] = lease
                return EvalLease(
                    unit_id, lease.lease_id, lease.deadline, job.campaign_id, job.version, job.checkpoint, job.data,
                    job.batches, job.kind,
                )  # fmt: skip
        return None

    def _find(self, unit_id: str, lease_id: str, volunteer_id: str) -> tuple[_Job, _Lease]:
        """The job and live lease `lease_id` of `volunteer_id` on `unit_id`; raises _LeaseProblem."""
        for job in self._all():
            lease = job.leases.get(unit_id)
            if lease is None:
                continue
            if lease.lease_id != lease_id or lease.volunteer_id != volunteer_id:
                raise _LeaseProblem("not_your_lease", "this volunteer holds no lease with this id on this unit")
            if lease.deadline <= self.clock():
                raise _LeaseProblem("lease_expired", f"the lease on this {job.kind} unit has ended")
            return job, lease
        raise _LeaseProblem("unknown_unit", f"no evaluate or check unit {unit_id} is open")

    def heartbeat(self, volunteer_id: str, unit_id: str, lease_id: str) -> float | tuple[str, str]:
        """The lease's new deadline, or (code, message) of why it is not this volunteer's."""
        with self._lock:
            try:
                _, lease = self._find(unit_id, lease_id, volunteer_id)
            except _LeaseProblem as problem:
                return problem.code, problem.message
            lease.deadline = self.clock() + self.lease_s
            return lease.deadline

    def abandon(self, volunteer_id: str, unit_id: str, lease_id: str) -> None:
        with self._lock:
            try:
                job, _ = self._find(unit_id, lease_id, volunteer_id)
            except _LeaseProblem:
                return
            job.leases.pop(unit_id, None)

    # reports --------------------------------------------------------------------------------------

    def report(self, volunteer_id: str, unit_id: str, lease_id: str, losses: Sequence[float]) -> Outcome:
        """The verdict on an evaluate or check unit's losses; credit is recorded in the store with it."""
        with self._lock:
            try:
                job, lease = self._find(unit_id, lease_id, volunteer_id)
            except _LeaseProblem as problem:
                return Outcome(OutcomeStatus.REJECTED, problem.code, problem.message)
            del job.leases[unit_id]
            if len(losses) != job.batches or not all(math.isfinite(x) for x in losses):
                return self._reject(
                    ErrorCode.SCHEMA_VIOLATION, f"report.losses: {len(losses)} values for {job.batches} batches"
                )
            credit = 2.0 * job.params * (job.data[2] - 1) / 1e12  # a forward pass: 2 FLOPs per parameter and token
            subject = "this version" if job.kind == "evaluate" else "this update's check"
            if not job.open:  # settled or disputed while this lease ran
                return self._reject(ErrorCode.INCONCLUSIVE, f"{subject} was settled without this result")
            if not job.reports:
                job.reports[volunteer_id] = (lease.source, list(losses))
                return Outcome(
                    OutcomeStatus.ACCEPTED,
                    None,
                    f"accepted; credited once another volunteer's result for {subject} agrees with it",
                )
            (first, (_, theirs)), *_ = job.reports.items()
            job.reports[volunteer_id] = (lease.source, list(losses))
            worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, theirs, strict=True))
            if worst > EVAL_RTOL:
                job.disputed = True
                measured = "the version" if job.kind == "evaluate" else "the update"
                return Outcome(
                    OutcomeStatus.REJECTED,
                    ErrorCode.INCONCLUSIVE.value,
                    f"another volunteer's losses for {subject} differ from these by up to {100 * worst:.2f}% "
                    f"(the limit is 0.1%); the coordinator measures {measured} itself, and neither result counts",
                )
            job.loss = loss = (float(np.mean(losses)) + float(np.mean(theirs))) / 2
        # The store is written outside the desk's lock: a grouped commit holds the store's write lock
        # while the engine asks this desk (wants_check, open_check), so the other order would deadlock.
        if job.kind == "evaluate":
            self.store.set_holdout_loss(job.campaign_id, job.version, loss)
        log.info(
            "campaign %d: %s %s, holdout loss %.4f settled by two volunteers (differing by %.1e at most)",
            job.campaign_id, job.kind, job.checked or f"version {job.version}", loss, worst,
        )  # fmt: skip
        self._credit(first, credit)
        self._credit(volunteer_id, credit)
        return Outcome(OutcomeStatus.ACCEPTED, None, "accepted: it agrees with another volunteer's", credit=credit)

    def _reject(self, code: ErrorCode, message: str) -> Outcome:
        return Outcome(OutcomeStatus.REJECTED, code.value, message)

    def _credit(self, volunteer_id: str, credit: float) -> None:
        volunteer = self.store.volunteer(volunteer_id)
        if volunteer is None:
            return
        trust = {"consecutive_valid": volunteer.consecutive_valid, "errors": volunteer.errors}  # evaluating earns none
        with self.store.transaction():
            self.store.record_outcome(volunteer_id, accepted=True, credit=credit, tokens=0, trust=trust)


class _Farm:
    """CheckFarm for one campaign: the engine asks through it, the desk does the work."""

    def __init__(self, desk: EvaluationDesk, runtime: CampaignRuntime) -> None:
        self.desk, self.runtime = desk, runtime

    def wants(self, campaign_id: int, volunteer_id: str) -> bool:
        return self.desk.wants_check(volunteer_id)

    def open(
        self, campaign_id: int, unit_id: str, version: int, checkpoint: tuple[str, int], volunteer_id: str
    ) -> None:
        self.desk.open_check(self.runtime, unit_id, version, checkpoint, volunteer_id)

    def result(self, campaign_id: int, unit_id: str) -> float | bool:
        return self.desk.check_result(campaign_id, unit_id)

    def close(self, campaign_id: int, unit_id: str) -> None:
        self.desk.close_check(campaign_id, unit_id)
