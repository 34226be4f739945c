"""Taking in volunteers' updates: decode → validate → store → accumulate, and replica pairing.

    >>> prepared = ingest.prepare(volunteer_id, unit_id, lease_id, payload)   # any thread, no lock
    >>> outcome = ingest.commit(volunteer_id, lease_id, prepared, report)     # the campaign's lane

`prepare` does the heavy, order-free half: the update's blob written durably, its tensors decoded
(sizes checked before allocation) and their norm computed. `commit` does the ordered half under the
campaign's lock: the idempotency and lease rules, staleness, the validation pipeline against the
cohort, BOINC-style comparison with a replica, the verdict and credit written in one transaction,
then streaming accumulation. The verdict is durable before the volunteer hears it; what follows the
write is derived state that `Aggregator.restore` rebuilds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

import torch

from coordinator.engine.models import Outcome, PreparedUpdate, RoundState, SubmissionReport
from coordinator.engine.scheduler import LEASE_EXPIRED_MESSAGE, Scheduler
from coordinator.engine.state import CampaignState
from coordinator.engine.states import CloseReason, OutcomeStatus, SubmissionStatus, UnitState
from coordinator.store import SubmissionRow, UnitRow
from coordinator.store.blobs import BlobNotFound, sha256_hex
from coordinator.validation import Candidate, Verdict, compare_replicas, global_norm
from coordinator.validation.direction import cosine_similarity
from coordinator.validation.evidence import DESCENT_STEP
from coordinator.validation.interface import fmt
from protocol.codecs import CodecError
from protocol.errors import ErrorCode
from protocol.moments import decode_moments, moment_bound
from training.accumulator import staleness_weight
from training.checkpoint import save_weights

__all__ = ["CODEC_REJECTIONS", "REJECTED_UPDATE_TTL_S", "Ingest"]

log = logging.getLogger(__name__)

# How long a rejected update's bytes are kept (for an admin to look at) before the space is freed.
REJECTED_UPDATE_TTL_S = 3600.0

# Decoding failures that are really validation verdicts: the frame was well formed but its tensors
# don't fit the unit, or hold values no honest training produces.
CODEC_REJECTIONS = {
    "shape_mismatch": "shape_mismatch",
    "name_mismatch": "shape_mismatch",
    "count_mismatch": "shape_mismatch",
    "dtype_mismatch": "shape_mismatch",
    "non_finite_value": "non_finite",
    "non_finite_scale": "non_finite",
    "oversized": "update_too_large",
}

# What the cohort heuristics reject an update nobody measured for — its first loss far from the
# version's, its direction against the running one. Honest units on unusual text do both (seen in a
# clean bench run: 3 of 85 honest updates, first losses 7.3 where the version's median was 5.5), so an
# update they flag is measured with the model before it is rejected, and the measurement decides.
SCREENED = frozenset({ErrorCode.IMPLAUSIBLE_LOSS, ErrorCode.DIRECTION_OUTLIER})

# Two disagreeing replicas this aligned (cosine) differ only in size: arbitration can't tell which is right.
SAME_DIRECTION = 0.9

ACCEPTED, REJECTED, DUPLICATE = OutcomeStatus.ACCEPTED, OutcomeStatus.REJECTED, OutcomeStatus.DUPLICATE


class Ingest:
    def __init__(self, state: CampaignState, scheduler: Scheduler) -> None:
        self.state = state
        self.scheduler = scheduler
        self._purged_until = 0.0  # rejected submissions recorded before this have had their blobs freed

    def purge_rejected(self) -> int:
        """Free the blobs of updates rejected more than REJECTED_UPDATE_TTL_S ago that nothing else
        points at (their rows stay, with the digest); the bytes freed. Random bytes sent as updates
        cost the coordinator space for an hour, not for ever."""
        s = self.state
        before = s.clock() - REJECTED_UPDATE_TTL_S
        if before <= self._purged_until:
            return 0
        freed = sum(
            s.blobs.delete_if_older(digest, before)
            for digest in s.store.rejected_updates(s.row.id, self._purged_until, before)
        )
        self._purged_until = before
        return freed

    def prepare(
        self,
        volunteer_id: str,
        unit_id: str,
        lease_id: str,
        payload: bytes,
        *,
        sha256: str | None = None,
        moments: bytes = b"",
    ) -> PreparedUpdate:
        """Store and decode an update without the campaign's lock, so several threads can do it at once.

        Only a submission that may still count gets this work: the unit's current lease, or a resend of
        an update this volunteer already submitted (its first verdict is answered again). `sha256` is
        the payload's digest when the caller already computed it (the gateway checks it first). Where
        the campaign shares second moments, `moments` (the submit's moments frame), if sent, must decode.
        """
        s = self.state
        sha = sha256 or sha256_hex(payload)
        unit, holds = self._holding(volunteer_id, unit_id, lease_id)
        if unit is None or not holds:
            return PreparedUpdate(unit, sha, len(payload))
        s.blobs.put(payload, digest=sha)  # durable before any row points at it
        return self._decoded(unit, sha, payload, moments, stored=False)

    def prepare_stored(
        self, volunteer_id: str, unit_id: str, lease_id: str, sha256: str, size: int, *, moments_sha: str | None = None
    ) -> PreparedUpdate:
        """As `prepare`, for an update another replica received and already made durable: the blob
        `sha256` (and the moments frame sent with it, `moments_sha`). The bytes are read back and checked
        against their digests here, so a replica's word is not taken for them."""
        s = self.state
        unit, holds = self._holding(volunteer_id, unit_id, lease_id)
        if unit is None or not holds:
            return PreparedUpdate(unit, sha256, size)
        payload = s.blobs.get(sha256)
        moments = s.blobs.get(moments_sha) if moments_sha else b""
        if sha256_hex(payload) != sha256 or (moments_sha and sha256_hex(moments) != moments_sha):
            raise BlobNotFound(f"blob {sha256} (or its moments frame) does not hold what its name promises")
        return self._decoded(unit, sha256, payload, moments, stored=True)

    def _holding(self, volunteer_id: str, unit_id: str, lease_id: str) -> tuple[UnitRow | None, bool]:
        """The campaign's unit (None if it has none so named), and whether this submission may still
        count: it comes under the unit's current lease, and this volunteer sent no update for it yet.
        Only such a submission's bytes are stored and decoded; the others are judged without them."""
        s = self.state
        unit = s.store.unit(unit_id)
        if unit is None or unit.campaign_id != s.row.id:
            return None, False
        holds = unit.state == UnitState.LEASED and unit.lease_id == lease_id and unit.volunteer_id == volunteer_id
        return unit, holds and s.store.submission(unit_id, volunteer_id) is None

    def _decoded(self, unit: UnitRow, sha: str, payload: bytes, moments: bytes, *, stored: bool) -> PreparedUpdate:
        s = self.state
        s.counters.bytes_in += len(payload)
        try:
            delta = s.decode(payload, unit.shard)
        except CodecError as error:
            return PreparedUpdate(unit, sha, len(payload), error=error)
        moments_sha = None
        if s.spec.inner.shared_moments and moments:  # none sent: the update counts, the median is the others'
            try:
                decode_moments(moments, {n: s.shapes[n] for n in unit.shard}, most=moment_bound(s.spec.inner.grad_clip))
            except CodecError as error:
                return PreparedUpdate(unit, sha, len(payload), error=error, error_in_moments=True)
            moments_sha = sha256_hex(moments) if stored else s.blobs.put(moments)
        return PreparedUpdate(unit, sha, len(payload), delta, global_norm(delta), moments_sha=moments_sha)

    def commit(self, volunteer_id: str, lease_id: str, prepared: PreparedUpdate, report: SubmissionReport) -> Outcome:
        """The ordered half of a submission, under the campaign's lock; a quorum it completes is noted
        in `state.close_due` for the aggregator."""
        with self.state.lock:
            return self._commit(volunteer_id, lease_id, prepared, report)

    def _commit(self, volunteer_id: str, lease_id: str, prepared: PreparedUpdate, report: SubmissionReport) -> Outcome:
        s = self.state
        if prepared.unit is None:
            return Outcome(REJECTED, "unknown_unit", f"no work unit in campaign {s.row.name} has this id")
        unit = s.store.unit(prepared.unit.id)
        assert unit is not None
        previous = s.store.submission(unit.id, volunteer_id)
        if previous is not None:
            # Idempotent: resending the same update (lost ack, reconnect) gets the first answer again
            # and changes nothing; a different update for the same unit is a duplicate and ignored.
            if previous.update_sha != prepared.sha256:
                return Outcome(
                    DUPLICATE,
                    "duplicate_submission",
                    f"a different update for this unit was already received: {previous.message}",
                )
            if previous.status == SubmissionStatus.REJECTED:
                return Outcome(REJECTED, previous.code, previous.message, previous.credit)
            return Outcome(ACCEPTED, None, previous.message, previous.credit)  # a held one carries its reason
        problem = self.scheduler.lease_problem(unit, volunteer_id, lease_id)
        if problem is not None:
            return Outcome(REJECTED, problem[0], problem[1])
        if not prepared.stored:  # the lease changed hands between prepare and commit
            return Outcome(REJECTED, "lease_expired", LEASE_EXPIRED_MESSAGE)
        staleness = s.row.current_version - unit.version
        weight = staleness_weight(staleness, s.spec.rounds.staleness_bound) * report.tokens
        if staleness > s.spec.rounds.staleness_bound:
            return self._reject(
                unit,
                volunteer_id,
                prepared,
                report,
                "stale_update",
                f"the update was computed against version {unit.version}, {staleness} versions behind "
                f"the current {s.row.current_version} (limit {s.spec.rounds.staleness_bound})",
            )
        if prepared.error is not None:
            error = prepared.error
            what = (
                "submit.moments (a bf16 moments frame of the unit's shard)"
                if prepared.error_in_moments
                else "the update"
            )
            if error.code in CODEC_REJECTIONS:
                message = f"{what}: {error}" if prepared.error_in_moments else str(error)
                return self._reject(unit, volunteer_id, prepared, report, CODEC_REJECTIONS[error.code], message)
            return self._reject(
                unit, volunteer_id, prepared, report, "bad_encoding", f"{what} could not be decoded: {error}"
            )
        delta = prepared.delta
        assert delta is not None
        evidence = s.evidence(unit) if s.wants_evidence(volunteer_id) else None
        candidate = s.candidate(unit, delta, report.losses, report.tokens, norm=prepared.norm, evidence=evidence)
        verdict = s.pipeline.validate(candidate, s.cohort)
        if not verdict.accepted and evidence is None and verdict.code in SCREENED and s.measures_updates:
            # A cohort heuristic flagged an update nobody measured: measure it, and let that decide.
            evidence = s.evidence(unit)
            if evidence is not None:
                candidate = replace(candidate, evidence=evidence)
                verdict = s.pipeline.validate(candidate, s.cohort)
        # An update whose only failing is a weak fit to its unit's data may be honest work on text so
        # uniform that training on it helps the text next to it as much (seen: a slice of ast.py's
        # unparser, −0.07 nats for every volunteer who trained it). Two unrelated volunteers who
        # computed the same update settle it: it waits for a replica instead of being rejected.
        weak_fit = verdict.code == ErrorCode.NOT_FROM_UNIT
        if not verdict.accepted and not weak_fit:
            return self._reject(unit, volunteer_id, prepared, report, str(verdict.code), verdict.message)
        twin_id = s.twin_id(unit)
        if twin_id is None and weak_fit and unit.replica_of is None:
            replica = self.scheduler.replicate(unit)
            twin_id = replica.id if replica is not None else None
        twin_sub = s.live_submission(twin_id) if twin_id is not None else None
        if twin_id is not None and twin_sub is None and not self._may_report(twin_id):
            # Its twin was trained and its result rejected (a mismatch neither side won releases only the
            # unit submitted last): nothing will come to compare with, and waiting would stall the round.
            twin_id = None
        settled = twin_sub is not None and twin_sub.status != SubmissionStatus.PENDING_REPLICA
        if weak_fit and (twin_id is None or settled):  # no replica can settle it
            return self._reject(unit, volunteer_id, prepared, report, str(verdict.code), verdict.message)
        if twin_id is not None:
            if twin_sub is None:
                held = (
                    ErrorCode.NOT_FROM_UNIT.value,
                    f"{verdict.message}. Held until a replica from an unrelated volunteer agrees; credit follows "
                    "only if it does",
                )
                return self._hold_for_replica(
                    unit,
                    volunteer_id,
                    prepared,
                    report,
                    candidate.norm,
                    staleness,
                    weight,
                    weak=held if weak_fit else None,
                )
            if not settled:
                twin_unit = s.store.unit(twin_id)
                assert twin_unit is not None
                twin_delta = s.decode(s.blobs.get(twin_sub.update_sha), twin_unit.shard)
                comparison = compare_replicas(delta, twin_delta, rtol=s.spec.validation.replication_rtol)
                if not comparison.accepted:
                    return self._settle_mismatch(
                        unit, volunteer_id, prepared, report, candidate, verdict, twin_sub, twin_delta, comparison
                    )
                if weak_fit and twin_sub.code == ErrorCode.NOT_FROM_UNIT:
                    return self._inconclusive(unit, volunteer_id, prepared, report, twin_sub)
                # Both agree: credit the twin now; the update enters the average once (this copy).
                with s.store.transaction():
                    self._credit_held(twin_sub, unit, "accepted: matched its replica", weight=0.0, round_id=None)
            else:
                weight = 0.0  # the twin was accepted unreplicated at a round close: don't count it twice
        elif candidate.evidence is None and s.wants_check(volunteer_id):
            return self._hold_for_check(unit, volunteer_id, prepared, report, candidate, staleness, weight)
        return self._accept(unit, volunteer_id, prepared, report, candidate, staleness, weight)

    def _may_report(self, unit_id: str) -> bool:
        """Whether a unit can still bring a result: it is waiting to be leased or being trained."""
        unit = self.state.store.unit(unit_id)
        return unit is not None and unit.state in (UnitState.PENDING, UnitState.LEASED)

    def _closed(self) -> Outcome:
        return Outcome(REJECTED, "campaign_closed", f"campaign {self.state.row.name} is no longer training")

    def _inconclusive(
        self, unit: UnitRow, volunteer_id: str, prepared: PreparedUpdate, report: SubmissionReport, twin: SubmissionRow
    ) -> Outcome:
        """Two updates that agree but both fit their data weakly: honest work on uniform text, or a pair
        of colluders on different networks sending the same forgery. Nothing tells them apart, so
        neither counts, and neither is held against its volunteer."""
        s = self.state
        code = ErrorCode.INCONCLUSIVE.value
        message = (
            "inconclusive: this update and its replica agree, but neither lowers the loss of the unit's own "
            "batches more than that of the text beside them, so nothing shows they were trained on this "
            "unit; no credit, and no mark against either volunteer"
        )
        with s.store.transaction():
            s.store.update_submission(twin.id, status=SubmissionStatus.REJECTED, code=code, message=message)
            s.judge(twin.volunteer_id, accepted=False, code=code)
            self._store_submission(
                unit, volunteer_id, prepared, report, status=SubmissionStatus.REJECTED, code=code, message=message
            )
            s.judge(volunteer_id, accepted=False, code=code)
        s.count_rejection(code)
        s.count_rejection(code)
        return Outcome(REJECTED, code, message)

    def _store_submission(
        self, unit: UnitRow, volunteer_id: str, prepared: PreparedUpdate, report: SubmissionReport, **values: Any
    ) -> None:
        # `prepare` wrote the blob durably before this row points at it.
        self.state.store.add_submission(
            {
                "unit_id": unit.id,
                "volunteer_id": volunteer_id,
                "update_sha": prepared.sha256,
                "update_size": prepared.size,
                "tokens": report.tokens,
                "seconds": report.seconds,
                "losses": report.losses,
                "round_id": None,
                "staleness": 0,
                "weight": 0.0,
                "norm": None,
                "credit": 0.0,
                "code": None,
                "moments_sha": prepared.moments_sha,
                **values,
            }
        )

    def _record_trained(
        self,
        unit: UnitRow,
        volunteer_id: str,
        prepared: PreparedUpdate,
        report: SubmissionReport,
        current: RoundState,
        status: SubmissionStatus,
        message: str,
        **values: Any,
    ) -> None:
        """Record a valid update (accepted, or held for a replica or a check) in the open round; its
        unit's slice is trained. Inside the caller's transaction."""
        self._store_submission(
            unit, volunteer_id, prepared, report, status=status, message=message, round_id=current.row.id, **values
        )
        self.state.store.set_unit_state(unit.id, UnitState.DONE)

    def _reject(
        self,
        unit: UnitRow,
        volunteer_id: str,
        prepared: PreparedUpdate,
        report: SubmissionReport,
        code: str,
        message: str,
    ) -> Outcome:
        s = self.state
        with s.store.transaction():
            self._store_submission(
                unit, volunteer_id, prepared, report, status=SubmissionStatus.REJECTED, code=code, message=message
            )
            s.judge(volunteer_id, accepted=False, code=code)
            s.store.release_unit(unit.id)  # the slice still needs training: issue it again
        s.count_rejection(code)
        return Outcome(REJECTED, code, message)

    def _hold_for_replica(
        self,
        unit: UnitRow,
        volunteer_id: str,
        prepared: PreparedUpdate,
        report: SubmissionReport,
        norm: float,
        staleness: int,
        weight: float,
        *,
        weak: tuple[str, str] | None = None,
    ) -> Outcome:
        """Keep a valid update out of the average until its replica is compared. `weak`: the (code,
        message) of an update held for a weak fit to its data, which the comparison alone settles."""
        s = self.state
        current = s.round or self.scheduler.ensure_round()
        if current is None:  # the campaign reached its budget while this unit was out
            return self._closed()
        code, message = weak or (None, "valid; waiting for its replica to be compared")
        with s.store.transaction():
            self._record_trained(
                unit, volunteer_id, prepared, report, current, SubmissionStatus.PENDING_REPLICA, message,
                norm=norm, staleness=staleness, weight=weight, code=code,
            )  # fmt: skip
        if weak is not None:
            return Outcome(ACCEPTED, None, message)
        return Outcome(ACCEPTED, None, "valid; credit follows once its replica agrees (or the round closes)")

    def _hold_for_check(
        self,
        unit: UnitRow,
        volunteer_id: str,
        prepared: PreparedUpdate,
        report: SubmissionReport,
        candidate: Candidate,
        staleness: int,
        weight: float,
    ) -> Outcome:
        """Keep an update nobody measured out of the average until forward-only volunteers have
        measured the holdout loss of θ_v − η·Δ (a `check` unit), the descent test EvidenceCheck makes
        on the coordinator. The stepped weights are made here, so a checker needs no codec."""
        s = self.state
        assert s.checks is not None
        current = s.round or self.scheduler.ensure_round()
        if current is None:
            return self._closed()
        theta = s.theta(unit.version)
        with torch.no_grad():
            stepped = {
                name: tensor - DESCENT_STEP * candidate.delta[name] if name in candidate.delta else tensor
                for name, tensor in theta.items()
            }
        checkpoint = save_weights(stepped)
        digest = s.blobs.put(checkpoint, durable=False)  # made again from the update if lost
        with s.store.transaction():
            self._record_trained(
                unit, volunteer_id, prepared, report, current, SubmissionStatus.PENDING_CHECK,
                "valid; waiting for its holdout check", norm=candidate.norm, staleness=staleness, weight=weight,
            )  # fmt: skip
        s.held_checks[unit.id] = digest
        s.checks.open(s.row.id, unit.id, unit.version, (digest, len(checkpoint)), volunteer_id)
        return Outcome(ACCEPTED, None, "valid; credit follows once volunteers' holdout check of it passes")

    def settle_checks(self) -> None:
        """Settle the updates held for a holdout check (under the campaign's lock): by the loss two
        volunteers agreed on, compared with the version's holdout loss on the same batches; or, when
        volunteers won't settle it (none took it in time, they disagreed, a restart forgot it), by the
        coordinator measuring the update itself, as EvidenceCheck does. An accepted one joins the open
        round; a quorum it completes is noted in `state.close_due`."""
        s = self.state
        with s.lock:
            for unit_id in list(s.held_checks):
                farmed = s.checks.result(s.row.id, unit_id) if s.checks is not None else False
                if farmed is True:
                    continue
                unit = s.store.unit(unit_id)
                assert unit is not None
                version = s.store.version(s.row.id, unit.version)
                base = version.holdout_loss if version is not None else None
                stale = s.row.current_version - unit.version > s.spec.rounds.staleness_bound
                if farmed is not False and base is None and not stale:
                    continue  # the version's own holdout loss is still being measured
                try:
                    self._settle_check(unit, None if farmed is False or base is None else (float(farmed), base))
                except Exception:  # e.g. a data slice a power cut lost: never stall the campaign's tick
                    log.exception("settling the held update of unit %s failed; it is dropped without blame", unit_id)
                    self._drop_held(unit, "internal_error", "the coordinator could not check this update")

    def _settle_check(self, unit: UnitRow, losses: tuple[float, float | None] | None) -> None:
        """`losses`: (holdout loss of θ_v − η·Δ from the checkers, that of θ_v), or None: measure here."""
        s = self.state
        digest = s.held_checks.pop(unit.id)
        if s.checks is not None:
            s.checks.close(s.row.id, unit.id)
        if digest is not None:
            s.blobs.delete_if_older(digest, math.inf)
        held = self._held(unit)
        if held is None:
            return
        staleness = s.row.current_version - unit.version
        bound = s.spec.rounds.staleness_bound
        current = s.round or self.scheduler.ensure_round()
        if staleness > bound or current is None:
            code = "stale_update" if current is not None else "campaign_closed"
            self._drop_held(unit, code, "the model moved on (or the campaign ended) before its holdout check")
            return
        delta = s.decode(s.blobs.get(held.update_sha), unit.shard)
        candidate = s.candidate(unit, delta, held.losses, held.tokens, norm=held.norm)
        if losses is not None:
            stepped, base = losses
            assert base is not None
            gain = base - stepped
            tolerance = s.pipeline.holdout_tolerance
            verdict = (
                Verdict.accept()
                if gain >= -tolerance
                else Verdict.reject(
                    ErrorCode.HOLDOUT_REGRESSION,
                    f"two volunteers measured that a small step along the update changes the holdout loss by "
                    f"{fmt(-gain)} (limit: +{fmt(tolerance)}); an update from training lowers it",
                )
            )
            how = "its holdout check by two volunteers passed"
        else:
            evidence = s.evidence(unit)
            if evidence is not None:
                candidate = replace(candidate, evidence=evidence)
            verdict = s.pipeline.validate(candidate, s.cohort)
            how = "measured by the coordinator (volunteers did not settle its holdout check)"
        if not verdict.accepted and verdict.code == ErrorCode.NOT_FROM_UNIT:
            # At commit this would wait for a replica (honest work on uniform text fails only this).
            self._drop_held(unit, ErrorCode.INCONCLUSIVE.value, f"{verdict.message}; nothing shows it either way")
            return
        if not verdict.accepted:
            self._reject_held(unit, held, str(verdict.code), verdict.message, blame=True)
            return
        weight = staleness_weight(staleness, bound) * held.tokens
        with s.store.transaction():
            self._credit_held(
                held, unit, f"accepted: {how}", round_id=current.row.id, staleness=staleness, weight=weight
            )
        self._count(current, candidate, weight)

    def _drop_held(self, unit: UnitRow, code: str, why: str) -> None:
        """Reject an update held for its check without blame (the model moved on, the campaign ended,
        nothing could tell), and send its slice out again; inside the campaign's lock."""
        self.state.held_checks.pop(unit.id, None)
        held = self._held(unit)
        if held is not None:
            self._reject_held(unit, held, code, f"{why}; no mark against you", blame=False)

    def _held(self, unit: UnitRow) -> SubmissionRow | None:
        """The unit's submission waiting for its check, if it still is."""
        subs = self.state.store.submissions_for_unit(unit.id)
        return next((sub for sub in subs if sub.status == SubmissionStatus.PENDING_CHECK), None)

    def _reject_held(self, unit: UnitRow, held: SubmissionRow, code: str, message: str, *, blame: bool) -> None:
        """Reject an update that waited for its check (held against its volunteer only with `blame`);
        its slice goes out again."""
        s = self.state
        with s.store.transaction():
            s.store.update_submission(held.id, status=SubmissionStatus.REJECTED, code=code, message=message)
            if blame:
                s.judge(held.volunteer_id, accepted=False, code=code)
            if unit.replica_of is None:
                s.store.set_unit_state(unit.id, UnitState.CANCELLED)
        s.count_rejection(code)

    def _accept(
        self,
        unit: UnitRow,
        volunteer_id: str,
        prepared: PreparedUpdate,
        report: SubmissionReport,
        candidate: Candidate,
        staleness: int,
        weight: float,
    ) -> Outcome:
        s = self.state
        current = s.round or self.scheduler.ensure_round()
        if current is None:
            return self._closed()
        credit = s.credit(unit)
        with s.store.transaction():
            self._record_trained(
                unit, volunteer_id, prepared, report, current, SubmissionStatus.ACCEPTED, "accepted",
                norm=candidate.norm, staleness=staleness, weight=weight, credit=credit,
            )  # fmt: skip
            s.judge(volunteer_id, accepted=True, credit=credit, tokens=report.tokens)
        # Durable from here: what follows is derived state that `restore` rebuilds.
        closes = self._count(current, candidate, weight)
        message = (
            "accepted"
            if staleness == 0
            else f"accepted, {staleness} version(s) late (weight ×{weight / report.tokens:.2f})"
        )
        return Outcome(ACCEPTED, None, message, credit, closed_round=closes)

    def _count(self, current: RoundState, candidate: Candidate, weight: float) -> bool:
        """An accepted update into the round's average and the cohort; whether it completes the quorum
        (the aggregator then closes the round)."""
        s = self.state
        if weight > 0:
            current.accumulator.add(candidate.delta, weight=weight)
            current.accepted += 1
            current.tokens += candidate.tokens
        s.cohort.record(candidate)
        s.counters.accepted += 1
        closes = current.accepted >= s.spec.rounds.min_accepted
        if closes:
            s.close_due = CloseReason.QUORUM  # closed by the aggregator, outside the commit's transaction
        return closes

    def _settle_mismatch(
        self,
        unit: UnitRow,
        volunteer_id: str,
        prepared: PreparedUpdate,
        report: SubmissionReport,
        candidate: Candidate,
        verdict: Verdict,
        twin_sub: SubmissionRow,
        twin_delta: dict[str, torch.Tensor],
        comparison: Verdict,
    ) -> Outcome:
        """Two replicas disagree, so at least one is wrong. Both are measured with the model against
        the unit's own data (a trusted volunteer's update may not have been): when exactly one passes,
        it counts and the other is rejected for what it failed — a trusted attacker's sign flip no
        longer costs its honest twin its credit. When both pass, a step along one lowering the holdout
        loss while a step along the other raises it decides (at θ_0, with tied embeddings, −Δ lowers
        the unit's own loss too, so a sign flip passes the other checks there). Otherwise neither
        counts."""
        s = self.state
        twin_unit = s.store.unit(twin_sub.unit_id)
        assert twin_unit is not None
        evidence = s.evidence(unit)
        mine, measured = verdict, candidate
        if candidate.evidence is None and evidence is not None and verdict.accepted:
            measured = replace(candidate, evidence=evidence)
            mine = s.pipeline.validate(measured, s.cohort)
        twin = s.candidate(
            twin_unit, twin_delta, twin_sub.losses, twin_sub.tokens, norm=twin_sub.norm, evidence=evidence
        )
        theirs = s.pipeline.validate(twin, s.cohort)
        if mine.accepted and theirs.accepted:
            mine, theirs = _tie_break(measured, mine, twin, theirs)
        elif (
            mine.accepted != theirs.accepted
            and (cosine_similarity(candidate.delta, twin_delta) or 0.0) > SAME_DIRECTION
        ):
            # One is a rescaled copy of the other (an update ×2 beside its honest replica): the checks
            # don't fix an update's size, so the one that failed may be the honest one. Neither counts.
            mine = theirs = comparison
        if mine.accepted and not theirs.accepted:
            self._overrule(
                twin_sub, str(theirs.code), f"{theirs.message}; its replica, which passed every check, disagrees"
            )
            staleness = s.row.current_version - unit.version
            weight = staleness_weight(staleness, s.spec.rounds.staleness_bound) * report.tokens
            return self._accept(unit, volunteer_id, prepared, report, candidate, staleness, weight)
        if theirs.accepted and not mine.accepted:
            current = s.round or self.scheduler.ensure_round()
            if current is None:
                return self._closed()
            code, message = str(mine.code), f"{mine.message}; its replica, which passed every check, disagrees"
            with s.store.transaction():
                self._credit_held(
                    twin_sub,
                    twin_unit,
                    "accepted: its replica disagreed and failed the checks",
                    round_id=current.row.id,
                )
                self._store_submission(
                    unit, volunteer_id, prepared, report, status=SubmissionStatus.REJECTED, code=code, message=message
                )
                s.judge(volunteer_id, accepted=False, code=code)
                s.store.set_unit_state(unit.id, UnitState.DONE)  # its twin trained the slice
            s.count_rejection(code)
            closes = self._count(current, twin, twin_sub.weight)
            return Outcome(REJECTED, code, message, closed_round=closes)
        self._overrule(twin_sub, str(comparison.code), comparison.message)
        return self._reject(unit, volunteer_id, prepared, report, str(comparison.code), comparison.message)

    def _credit_held(self, held: SubmissionRow, unit: UnitRow, message: str, **values: Any) -> None:
        """Accept an update that waited for its replica and credit its volunteer, inside the caller's
        transaction; `values`: what else the submission's row changes (its weight, its round)."""
        s = self.state
        credit = s.credit(unit)
        s.store.update_submission(
            held.id, status=SubmissionStatus.ACCEPTED, code=None, message=message, credit=credit, **values
        )
        s.judge(held.volunteer_id, accepted=True, credit=credit, tokens=held.tokens)

    def _overrule(self, held: SubmissionRow, code: str, message: str) -> None:
        """Reject an update that was waiting for its replica, and hold it against its volunteer."""
        s = self.state
        with s.store.transaction():
            s.store.update_submission(held.id, status=SubmissionStatus.REJECTED, code=code, message=message)
            s.judge(held.volunteer_id, accepted=False, code=code)
        s.count_rejection(code)


def _tie_break(a: Candidate, a_verdict: Verdict, b: Candidate, b_verdict: Verdict) -> tuple[Verdict, Verdict]:
    """Two replicas that disagree and both pass: when a small step along one lowers the holdout loss
    and along the other raises it, the other fails as holdout_regression. Otherwise both stand."""
    gain_a = a.measurements.holdout_gain if a.measurements is not None else None
    gain_b = b.measurements.holdout_gain if b.measurements is not None else None
    if gain_a is None or gain_b is None:
        return a_verdict, b_verdict
    if gain_a > 0 > gain_b:
        return a_verdict, _uphill(gain_b)
    if gain_b > 0 > gain_a:
        return _uphill(gain_a), b_verdict
    return a_verdict, b_verdict


def _uphill(gain: float) -> Verdict:
    return Verdict.reject(
        ErrorCode.HOLDOUT_REGRESSION,
        f"a small step along the update raises the holdout loss by {fmt(-gain)}, where a step along its replica "
        "lowers it; it does not point downhill",
    )
