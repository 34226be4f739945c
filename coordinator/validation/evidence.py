"""EvidenceCheck: the update is measured with the model itself, on data the coordinator holds.

Norms, directions and reported numbers can be imitated; what an update *does* to the model can't.
With the model at θ_v (the version the unit trained from) the coordinator measures three things:

1. **The first step's loss**, recomputed on the unit's first micro-batches. A volunteer who trained
   reports exactly this number (up to its device's arithmetic: bf16 autocast moves it by about a
   percent), so losses copied from public figures — the holdout losses on the versions page — fail.
2. **Descent on holdout**: a small step along the update, θ_v − η·Δ, does not raise the holdout loss
   by more than `holdout_tolerance` (and, when `min_gain_ratio` is set, lowers it by that fraction of
   the median of the version's measured updates: off by default, because honest units' gains vary
   too much — 15 % of one bench's honest updates fell below 0.25× the median). The step is small because a single
   volunteer's θ_end overfits its slice (its full step often *raises* holdout loss, while the average
   of many lowers it); to first order the small step measures whether Δ points downhill. The
   tolerance is there because a campaign on a plateau has honest updates that don't help (measured:
   2 % of them worse by 0.018 nats or more).
3. **Dependence on the unit's own data**: θ_v − Δ lowers the loss of the unit's own micro-batches
   (a sample spread over its steps, each trained on once) more than the loss of the tokens right
   next to its slice (or at all, when the neighbours' loss rises) — by at least `min_fit` nats and
   `min_fit_ratio` of what accepted updates of the version showed. The neighbours come from the same
   documents, so they control for what any training on nearby text gains (the holdout does not: a
   copy of the next unit's update gains as much on this slice as an honest one, measured against
   holdout). An update trained on other data — a replay, a copy of another unit's update, the
   published difference between two versions, made-up numbers — lowers both alike. At θ_0 a flipped
   update can pass this (from a random model, both directions lower the loss a little); the descent
   and direction checks catch it once a few honest updates of the version are in.
4. **The reported losses are those of this update**: each loss a volunteer reports was measured on
   a batch *before* the step that trained on it, so the trained model θ_v − Δ does better on those
   batches than the report says (by 0.27–1.3 nats in 60 honest `tiny` units of 20 steps); an update
   scaled down after training, or one that is not the trained one, leaves them where they were. The
   loss of θ_v − Δ on the sampled own batches must not exceed the mean reported loss of their steps
   by more than `own_tolerance` (measured: ×0.05 of an honest update +0.17 to +1.5, ×−0.5 +0.6 to +3).
   Skipped for sparse codecs (topk, dct), whose decoded update is far from θ_end − θ_v.

    >>> probe = LossProbe(model_config)                           # one per campaign, used under its lock
    >>> evidence = UnitEvidence(probe, v, theta_v, first=first_batches, own=sampled_batches,
    ...                         near=neighbour_batches, holdout=holdout_batches,
    ...                         holdout_loss=probe.loss(theta_v, holdout_batches, key=v))
    >>> candidate = Candidate(..., evidence=evidence)
    >>> EvidenceCheck().check(candidate, stats)                   # None, or a rejecting Verdict

Costs a few forward passes per checked update (the caller decides which updates to check: every
update of a volunteer not yet trusted, a sample of the others).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from coordinator.validation.cohort import CohortStats
from coordinator.validation.interface import Candidate, Verdict, fmt
from protocol.errors import ErrorCode
from training.model import ModelConfig, build_model

__all__ = ["Batch", "EvidenceCheck", "LossProbe", "Measurements", "UnitEvidence"]

Batch = tuple[torch.Tensor, torch.Tensor]  # (inputs, targets), each (batch_size, seq_len) token ids

# Descent on holdout is measured with this fraction of the update: small enough to measure the
# direction (first order), large enough to stay above fp32 noise in the loss.
DESCENT_STEP = 0.05


class LossProbe:
    """Mean next-token loss of the campaign's model at given weights, on the CPU.

    One model is built once and reused: loading weights is a copy, not an allocation. Not
    thread-safe; the campaign's lock serialises its users.
    """

    def __init__(self, config: ModelConfig) -> None:
        self.model = build_model(config, device="cpu")
        self.model.eval()
        self._params = dict(self.model.named_parameters())
        self._loaded: object = None  # the key of the weights the model holds

    def loss(
        self,
        base: Mapping[str, torch.Tensor],
        batches: Sequence[Batch],
        *,
        key: object,
        delta: Mapping[str, torch.Tensor] | None = None,
        scale: float = 1.0,
    ) -> float:
        """Loss at `base` − `scale`·`delta` (`delta` may cover a shard of the parameters).

        `key` names `base` (its model version): the weights are copied in only when it changes, so
        a caller must never pass other weights under a key it used before.
        """
        if not batches:
            raise ValueError("no batches to measure a loss on")
        with torch.no_grad():
            if self._loaded != key:
                self._loaded = None  # a copy that fails halfway leaves weights that are nobody's
                for name, param in self._params.items():
                    param.copy_(base[name])
                self._loaded = key
            try:
                if delta is not None:
                    for name, tensor in delta.items():
                        self._params[name].sub_(tensor, alpha=scale)
                total = sum(float(self.model.loss(x, y)) for x, y in batches)
            finally:
                if delta is not None:
                    for name in delta:
                        self._params[name].copy_(base[name])
        return total / len(batches)


@dataclass(frozen=True)
class Measurements:
    first_loss: float  # loss of θ_v on the unit's first step's micro-batches
    holdout_gain: float  # L_holdout(θ_v) − L_holdout(θ_v − η·Δ)
    fit: float  # how much more θ_v − Δ lowers the loss of the unit's own batches than of its neighbours'
    # (the neighbours' gain taken as 0 when negative)
    own_after: float = math.nan  # loss of θ_v − Δ on the unit's sampled own batches
    noise_rise: float = 0.0  # a noised update: L_holdout(θ_v − η·noise) − L_holdout(θ_v), noise of its scale


@dataclass(frozen=True, eq=False)
class UnitEvidence:
    """What the coordinator measures an update with: θ_v, the unit's own batches and holdout batches."""

    probe: LossProbe
    version: int  # of θ_v: the probe's key for it
    theta: Mapping[str, torch.Tensor]
    first: Sequence[Batch]  # the micro-batches of the unit's first inner step
    own: Sequence[Batch]  # a sample of the unit's micro-batches, spread over its steps
    own_steps: Sequence[int]  # the inner step (0-based) of each `own` batch; empty: don't compare losses
    near: Sequence[Batch]  # batches of the training tokens just before and after the unit's slice
    holdout: Sequence[Batch]
    holdout_loss: float  # L_holdout(θ_v), measured once per version by the caller
    # A unit on a volunteer's own data (no `first`, `own` or `near` batches): the standard deviation of the
    # noise its update carries. A step along noise alone raises the holdout loss too (by 0.98 nats at z = 2
    # on `tiny`), so the descent is measured against a step along fresh noise of that scale, not against θ_v.
    noise_std: float = 0.0

    def measure(self, delta: Mapping[str, torch.Tensor]) -> Measurements:
        theta, key = self.theta, self.version

        def loss(batches: Sequence[Batch], scale: float | None = None) -> float:
            moved = None if scale is None else delta
            return self.probe.loss(theta, batches, key=key, delta=moved, scale=scale or 0.0)

        stepped = loss(self.holdout, DESCENT_STEP)
        if not self.first:  # a unit on a volunteer's own data: no batches of it to measure
            baseline = self.holdout_loss
            if self.noise_std > 0:
                generator = torch.Generator().manual_seed(self.version)
                noise = {
                    name: torch.randn(tensor.shape, generator=generator) * self.noise_std
                    for name, tensor in delta.items()
                }
                baseline = self.probe.loss(theta, self.holdout, key=key, delta=noise, scale=DESCENT_STEP)
            return Measurements(
                first_loss=math.nan,
                holdout_gain=baseline - stepped,
                fit=math.nan,
                noise_rise=baseline - self.holdout_loss,
            )
        first = loss(self.first)
        # The neighbours' gain counts only when positive: an update that makes its own batches worse
        # (a sign flip) must not pass because it makes the neighbours even worse. With no tokens
        # beside the slice (a tiny dataset) the own batches' gain is all there is.
        near = max(0.0, loss(self.near) - loss(self.near, 1.0)) if self.near else 0.0
        after = loss(self.own, 1.0)
        fit = loss(self.own) - after - near
        return Measurements(first_loss=first, holdout_gain=self.holdout_loss - stepped, fit=fit, own_after=after)


@dataclass(frozen=True)
class EvidenceCheck:
    loss_abs_tol: float = 0.05  # reported vs. measured first loss: within max(abs, rel · loss)
    loss_rel_tol: float = 0.015
    holdout_tolerance: float = 0.02  # nats the small step may raise the holdout loss by
    min_gain_ratio: float = 0.0  # of the median holdout gain of the version's measured updates (0: off)
    min_fit: float = 0.03  # nats (measured: noise at an honest norm ≤ 0.017, honest updates ≥ 0.06)
    min_fit_ratio: float = 0.15  # of the median fit of accepted updates of the version
    own_tolerance: float = 0.05  # nats θ_v − Δ may exceed the reported losses on the sampled own batches
    min_cohort: int = 3
    name = "evidence"

    def check(self, candidate: Candidate, stats: CohortStats) -> Verdict | None:
        measured = candidate.measurements
        if measured is None:
            return None  # not sampled for this check
        if candidate.privacy is not None:
            return self._descent(candidate, measured, stats)  # nothing of the volunteer's data to measure on
        reported = candidate.losses[0] if candidate.losses else math.nan
        tolerance = max(self.loss_abs_tol, self.loss_rel_tol * abs(measured.first_loss))
        if not abs(reported - measured.first_loss) <= tolerance:
            return Verdict.reject(
                ErrorCode.IMPLAUSIBLE_LOSS,
                f"the first reported loss {fmt(reported)} is not the loss of the unit's first step: the "
                f"coordinator measured {fmt(measured.first_loss)} on the same batches at version "
                f"{candidate.version} (limit: ±{fmt(tolerance)}); report the losses the training measured",
            )
        steps = candidate.evidence.own_steps if candidate.evidence is not None else ()
        if steps and max(steps) < len(candidate.losses) and math.isfinite(measured.own_after):
            claimed = statistics.fmean(candidate.losses[i] for i in steps)
            if not measured.own_after <= claimed + self.own_tolerance:
                return Verdict.reject(
                    ErrorCode.IMPLAUSIBLE_LOSS,
                    f"the reported losses are not those of training this update: the model with it applied has "
                    f"loss {fmt(measured.own_after)} on {len(steps)} of the unit's own batches, where training "
                    f"reported {fmt(claimed)} for them before stepping on them (limit: +{fmt(self.own_tolerance)}); "
                    "an update scaled or altered after training does this",
                )
        verdict = self._descent(candidate, measured, stats)
        if verdict is not None:
            return verdict
        _, fits = stats.evidence(candidate.version) if candidate.version is not None else ((), ())
        floor, source = self._floor(fits, self.min_fit_ratio, self.min_fit)
        if not measured.fit >= floor:
            return Verdict.reject(
                ErrorCode.NOT_FROM_UNIT,
                f"the update lowers the loss of the unit's own batches {fmt(measured.fit)} nats more than that of "
                f"the tokens next to its slice (needed: {source}); it was not trained on this unit's data (a "
                "replayed or copied update, or one not trained at all)",
            )
        return None

    def _descent(self, candidate: Candidate, measured: Measurements, stats: CohortStats) -> Verdict | None:
        """A small step along the update must not raise the holdout loss (beyond the tolerance), or, for a
        noised update, must not raise it more than a step along noise of its scale alone does."""
        gains, _ = stats.evidence(candidate.version) if candidate.version is not None else ((), ())
        floor, source = self._floor(gains, self.min_gain_ratio, -self.holdout_tolerance)
        if candidate.privacy is not None and candidate.privacy[1] > 0:
            # Two draws of noise at this scale differ in what they do by more than the tolerance (on `tiny` at
            # z = 2 a step along one raised the loss 0.98 nats, and the test's draw failed a 0.02 margin against
            # the coordinator's): the update may do worse than the coordinator's draw by what that draw did.
            floor = min(floor, -self.holdout_tolerance - max(0.0, measured.noise_rise))
            if measured.holdout_gain >= floor:
                return None
            return Verdict.reject(
                ErrorCode.HOLDOUT_REGRESSION,
                f"a small step along the update raises the holdout loss {fmt(-measured.holdout_gain)} more than a "
                f"step along Gaussian noise of its standard deviation {fmt(candidate.privacy[1])} alone (needed: "
                f"at most {fmt(-floor)} more) — it does not point downhill",
            )
        if not measured.holdout_gain >= floor:
            return Verdict.reject(
                ErrorCode.HOLDOUT_REGRESSION,
                f"a small step along the update changes the holdout loss by {fmt(-measured.holdout_gain)}; an "
                f"update from training lowers it (needed: a change of at least {source}) — it does not point downhill",
            )
        return None

    def _floor(self, peers: Sequence[float], ratio: float, least: float) -> tuple[float, str]:
        """The bar a measurement must clear: `least`, raised to `ratio` × the peers' median once there
        are enough of them; and how to say it."""
        if ratio > 0 and len(peers) >= self.min_cohort:
            median = statistics.median(peers)
            if ratio * median > least:
                return ratio * median, f"{ratio:g}× the median {fmt(median)} of {len(peers)} accepted updates"
        return least, fmt(least)
