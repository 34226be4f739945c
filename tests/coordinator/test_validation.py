from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.validation import (
    Candidate,
    CohortStats,
    LossCheck,
    NormCheck,
    TrustState,
    TrustTracker,
    ValidationPipeline,
    ValidationSettings,
    Validator,
    Verdict,
    compare_replicas,
)
from protocol.errors import ErrorCode
from training.inner import InnerConfig, InnerLoop, InnerResult, learning_rate
from training.model import GPT, build_model, preset

SHAPES: dict[str, tuple[int, ...]] = {"w": (64, 32), "b": (32,)}
UNIT = InnerConfig(steps=3, batch_size=2, seq_len=32)
VOCAB = 64


def candidate(
    delta: Mapping[str, torch.Tensor],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    losses: Sequence[float] = (4.2, 3.9, 3.7),
    steps: int = 3,
    tokens: int = 192,
    expected_tokens: int = 192,
    reference_loss: float | None = 4.2,
    version: int | None = 0,
    staleness: int = 0,
    norm_scale: float = 1.0,
) -> Candidate:
    return Candidate(
        delta=delta,
        expected_shapes=dict(SHAPES) if shapes is None else dict(shapes),
        losses=list(losses),
        steps=steps,
        tokens=tokens,
        expected_tokens=expected_tokens,
        reference_loss=reference_loss,
        version=version,
        staleness=staleness,
        norm_scale=norm_scale,
    )


def norm_of(delta: Mapping[str, torch.Tensor]) -> float:
    return float(torch.cat([t.flatten() for t in delta.values()]).norm())


def scaled(delta: Mapping[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    return {n: t * factor for n, t in delta.items()}


class HonestGaussian:
    """Updates that share a common direction plus per-volunteer noise, with norms jittering ±15%."""

    def __init__(self, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.common = {n: torch.randn(s, generator=self.gen) for n, s in SHAPES.items()}

    def __call__(self) -> dict[str, torch.Tensor]:
        raw = {n: c + 2.0 * torch.randn(c.shape, generator=self.gen) for n, c in self.common.items()}
        norm = norm_of(raw)
        target = 1.0 + 0.15 * (2 * float(torch.rand((), generator=self.gen)) - 1)
        return scaled(raw, target / norm)


def cohort_of(deltas: Sequence[Mapping[str, torch.Tensor]], **kwargs: Any) -> CohortStats:
    stats = CohortStats()
    for delta in deltas:
        stats.record(candidate(delta, **kwargs))
    return stats


def norm_cohort(norms: Sequence[float]) -> tuple[CohortStats, dict[str, torch.Tensor]]:
    """A cohort with exactly these norms, all pointing one way; returns it and that unit direction."""
    direction = HonestGaussian(seed=1)()
    unit = scaled(direction, 1.0 / norm_of(direction))
    return cohort_of([scaled(unit, x) for x in norms]), unit


def reject_code(verdict: Verdict) -> ErrorCode | None:
    assert verdict.accepted is (verdict.code is None)
    return verdict.code


# -- realistic updates: real training units on a tiny model -------------------------------------------


def text_like_tokens(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(16), n // 16 + 1)[:n]
    return np.where(rng.random(n) < 0.1, rng.integers(0, VOCAB, n), base).astype(np.int64)


def tiny_model() -> GPT:
    return build_model(preset("tiny", vocab_size=VOCAB, max_seq_len=32), seed=0)


class RealUnits:
    def __init__(self, count: int) -> None:
        tokens = text_like_tokens(count * UNIT.tokens_needed + 257)
        model = tiny_model()
        holdout = torch.as_tensor(tokens[-257:])
        with torch.no_grad():
            self.reference_loss = float(model.loss(holdout[:-1].view(8, 32), holdout[1:].view(8, 32)))
        self.shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        self.results: list[InnerResult] = []
        for i in range(count):
            piece = tokens[i * UNIT.tokens_needed : (i + 1) * UNIT.tokens_needed]
            self.results.append(InnerLoop(tiny_model(), UNIT, global_step=0).run(piece))

    def candidate(self, result: InnerResult, **overrides: Any) -> Candidate:
        fields: dict[str, Any] = {
            "losses": result.losses,
            "steps": UNIT.steps,
            "tokens": result.tokens,
            "expected_tokens": UNIT.steps * UNIT.tokens_per_step,
            "reference_loss": self.reference_loss,
            "shapes": self.shapes,
        }
        fields.update(overrides)
        return candidate(result.delta, **fields)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # The tiny model trains fastest on one thread, and far faster than on two contended cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def real() -> RealUnits:
    return RealUnits(count=5)


# -- honest updates pass ------------------------------------------------------------------------------


def test_honest_gaussian_updates_of_similar_norms_are_all_accepted() -> None:
    pipeline, stats, honest = ValidationPipeline.default(), CohortStats(), HonestGaussian()
    for _ in range(40):
        c = candidate(honest())
        verdict = pipeline.validate(c, stats)
        assert verdict == Verdict(True, None, "accepted")
        stats.record(c)
    assert stats.count == 40


def test_real_training_units_from_the_same_version_are_all_accepted(real: RealUnits) -> None:
    pipeline, stats = ValidationPipeline.default(), CohortStats()
    for result in real.results:
        c = real.candidate(result)
        assert pipeline.validate(c, stats).accepted
        stats.record(c)


def test_first_updates_of_a_campaign_pass_the_cohort_checks() -> None:
    pipeline, stats = ValidationPipeline.default(), CohortStats()
    honest = HonestGaussian()
    for c in (candidate(scaled(honest(), 1000.0)), candidate(scaled(honest(), -0.001))):
        assert pipeline.validate(c, stats).accepted
        stats.record(c)


def test_a_very_uniform_cohort_still_accepts_ordinary_jitter() -> None:
    stats, unit = norm_cohort([1.0] * 10)
    pipeline = ValidationPipeline.default()
    for factor in (0.5, 0.8, 1.3, 1.5):
        assert pipeline.validate(candidate(scaled(unit, factor)), stats).accepted, factor


# -- tensors: shape and finiteness ----------------------------------------------------------------------


def test_nan_is_rejected_as_non_finite_with_the_counts() -> None:
    delta = HonestGaussian()()
    delta["w"][0, :3] = float("nan")
    verdict = ValidationPipeline.default().validate(candidate(delta), CohortStats())
    assert reject_code(verdict) is ErrorCode.NON_FINITE
    assert "'w' has 3 NaN and 0 infinite of 2048 values" in verdict.message


def test_inf_is_rejected_as_non_finite() -> None:
    delta = HonestGaussian()()
    delta["b"][5] = float("-inf")
    verdict = ValidationPipeline.default().validate(candidate(delta), CohortStats())
    assert reject_code(verdict) is ErrorCode.NON_FINITE
    assert "'b' has 0 NaN and 1 infinite of 32 values" in verdict.message


def test_a_tensor_of_the_wrong_shape_is_rejected_naming_both_shapes() -> None:
    delta = HonestGaussian()()
    delta["w"] = torch.randn(32, 64)
    verdict = ValidationPipeline.default().validate(candidate(delta), CohortStats())
    assert reject_code(verdict) is ErrorCode.SHAPE_MISMATCH
    assert "'w' is (32, 64), the unit declares (64, 32)" in verdict.message


def test_a_missing_tensor_is_rejected_as_shape_mismatch() -> None:
    delta = HonestGaussian()()
    del delta["b"]
    verdict = ValidationPipeline.default().validate(candidate(delta), CohortStats())
    assert reject_code(verdict) is ErrorCode.SHAPE_MISMATCH
    assert "misses 1 tensor(s) of the unit's shard ('b')" in verdict.message
    assert "2 tensors" in verdict.message


def test_an_extra_tensor_is_rejected_as_shape_mismatch() -> None:
    delta = HonestGaussian()()
    delta["head.weight"] = torch.zeros(3)
    verdict = ValidationPipeline.default().validate(candidate(delta), CohortStats())
    assert reject_code(verdict) is ErrorCode.SHAPE_MISMATCH
    assert "holds 1 tensor(s) outside it ('head.weight')" in verdict.message


def test_a_tensor_that_did_not_decode_to_fp32_is_rejected() -> None:
    delta = HonestGaussian()()
    delta["b"] = delta["b"].half()
    verdict = ValidationPipeline.default().validate(candidate(delta), CohortStats())
    assert reject_code(verdict) is ErrorCode.SHAPE_MISMATCH
    assert "torch.float16" in verdict.message


# -- norm ------------------------------------------------------------------------------------------------


def test_a_hundredfold_norm_is_rejected_once_a_cohort_exists() -> None:
    stats, unit = norm_cohort([2.0, 2.0, 2.0])
    verdict = ValidationPipeline.default().validate(candidate(scaled(unit, 200.0)), stats)
    assert reject_code(verdict) is ErrorCode.NORM_OUTLIER
    assert re.search(r"update norm 200(\.0*)? is 100× the cohort median 2 of 3 accepted updates", verdict.message)
    assert "median + 6·MAD = 5" in verdict.message  # the MAD floor (25% of the median) sets it


@settings(max_examples=60, deadline=None)
@given(norms=st.lists(st.floats(1e-3, 1e3), min_size=3, max_size=12))
def test_a_hundredfold_norm_is_rejected_whatever_the_cohort(norms: list[float]) -> None:
    stats, unit = norm_cohort(norms)
    spread = stats.norm_spread(SHAPES)
    assert spread is not None
    check = NormCheck()
    assert check.check(candidate(scaled(unit, 100 * spread.median)), stats) is not None
    assert check.check(candidate(scaled(unit, spread.median)), stats) is None


def test_an_all_zero_update_is_rejected_even_without_a_cohort() -> None:
    zeros = {n: torch.zeros(s) for n, s in SHAPES.items()}
    verdict = ValidationPipeline.default().validate(candidate(zeros), CohortStats())
    assert reject_code(verdict) is ErrorCode.NORM_OUTLIER
    assert "all zeros (norm 0)" in verdict.message and "3 steps" in verdict.message


def test_an_update_that_barely_moved_the_model_is_rejected() -> None:
    stats, unit = norm_cohort([4.0, 4.0, 4.2, 3.8])
    verdict = ValidationPipeline.default().validate(candidate(scaled(unit, 0.02)), stats)
    assert reject_code(verdict) is ErrorCode.NORM_OUTLIER
    assert "update norm 0.02 is 0.005× the cohort median 4" in verdict.message
    assert "0.01·median = 0.04" in verdict.message


def test_the_hard_norm_cap_applies_from_the_first_update() -> None:
    unit = norm_cohort([1.0])[1]
    verdict = ValidationPipeline.default(max_norm=10.0).validate(candidate(scaled(unit, 12.5)), CohortStats())
    assert reject_code(verdict) is ErrorCode.NORM_OUTLIER
    assert "update norm 12.5 exceeds the campaign's cap of 10" in verdict.message


def test_norms_are_compared_per_unit_of_learning_rate_so_warmup_is_no_outlier(real: RealUnits) -> None:
    warmup = InnerConfig(steps=3, batch_size=2, seq_len=32, warmup_steps=30)

    def unit(global_step: int, seed: int) -> Candidate:
        result = InnerLoop(tiny_model(), warmup, global_step=global_step).run(
            text_like_tokens(warmup.tokens_needed, seed=seed)
        )
        lr_sum = sum(learning_rate(warmup, global_step + i) for i in range(warmup.steps))
        return real.candidate(result, norm_scale=lr_sum)

    early = [unit(0, seed) for seed in range(3)]
    late = unit(27, seed=3)  # 14.5× the learning rate of the early units
    pipeline, scaled_stats, raw_stats = ValidationPipeline.default(), CohortStats(), CohortStats()
    for c in early:
        scaled_stats.record(c)
        raw_stats.record(dataclasses.replace(c, norm_scale=1.0))
    assert pipeline.validate(late, scaled_stats).accepted
    verdict = pipeline.validate(dataclasses.replace(late, norm_scale=1.0), raw_stats)
    assert reject_code(verdict) is ErrorCode.NORM_OUTLIER


# -- direction -------------------------------------------------------------------------------------------


def test_a_sign_flipped_update_is_rejected_as_a_direction_outlier() -> None:
    honest = HonestGaussian()
    stats = cohort_of([honest() for _ in range(5)])
    pipeline = ValidationPipeline.default()
    update = honest()
    assert pipeline.validate(candidate(update), stats).accepted
    verdict = pipeline.validate(candidate(scaled(update, -1.0)), stats)
    assert reject_code(verdict) is ErrorCode.DIRECTION_OUTLIER
    match = re.search(
        r"running direction of 5 accepted updates is (-0\.\d+) \(limit: at least -0\.20\)", verdict.message
    )
    assert match and float(match.group(1)) < -0.2


def test_a_sign_flipped_real_training_unit_is_rejected(real: RealUnits) -> None:
    pipeline, stats = ValidationPipeline.default(), CohortStats()
    for result in real.results[:3]:
        stats.record(real.candidate(result))
    honest = real.results[3]
    flipped = InnerResult(scaled(honest.delta, -1.0), honest.losses, honest.tokens, honest.seconds)
    assert pipeline.validate(real.candidate(honest), stats).accepted
    assert reject_code(pipeline.validate(real.candidate(flipped), stats)) is ErrorCode.DIRECTION_OUTLIER


def test_direction_is_not_judged_before_the_cohort_has_min_cohort_updates() -> None:
    honest = HonestGaussian()
    stats = cohort_of([honest() for _ in range(2)])
    assert ValidationPipeline.default().validate(candidate(scaled(honest(), -1.0)), stats).accepted


# -- losses and tokens -----------------------------------------------------------------------------------


def test_the_wrong_number_of_losses_is_rejected() -> None:
    verdict = ValidationPipeline.default().validate(candidate(HonestGaussian()(), losses=[4.2, 4.0]), CohortStats())
    assert reject_code(verdict) is ErrorCode.IMPLAUSIBLE_LOSS
    assert "2 losses for a unit of 3 inner steps" in verdict.message


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5, 0.0])
def test_a_loss_that_no_cross_entropy_can_take_is_rejected(bad: float) -> None:
    verdict = ValidationPipeline.default().validate(
        candidate(HonestGaussian()(), losses=[4.2, bad, 3.9]), CohortStats()
    )
    assert reject_code(verdict) is ErrorCode.IMPLAUSIBLE_LOSS
    assert f"step 2 reports {bad}" in verdict.message


def test_a_first_loss_inconsistent_with_the_reference_is_rejected() -> None:
    verdict = ValidationPipeline.default().validate(
        candidate(HonestGaussian()(), losses=[2.1, 2.0, 1.9]), CohortStats()
    )
    assert reject_code(verdict) is ErrorCode.IMPLAUSIBLE_LOSS
    assert "first reported loss 2.1 is 2.1 away from the known loss of model version 0 (4.2; limit: ±1.05)" in (
        verdict.message
    )


def test_a_unit_trained_from_an_already_trained_model_is_caught_by_its_losses(real: RealUnits) -> None:
    model = tiny_model()
    warm = InnerConfig(steps=20, batch_size=2, seq_len=32, lr=1e-2)
    InnerLoop(model, warm, global_step=0).run(text_like_tokens(warm.tokens_needed, seed=7))
    cheat = InnerLoop(model, UNIT, global_step=0).run(text_like_tokens(UNIT.tokens_needed, seed=8))
    verdict = LossCheck().check(real.candidate(cheat), CohortStats())
    assert verdict is not None and verdict.code is ErrorCode.IMPLAUSIBLE_LOSS
    assert f"({real.reference_loss:.4g}; limit: ±{0.25 * real.reference_loss:.4g})" in verdict.message


def test_without_a_reference_the_first_losses_of_accepted_peers_stand_in() -> None:
    honest = HonestGaussian()
    stats = cohort_of([honest() for _ in range(3)], losses=(4.2, 3.9, 3.7), version=5)
    pipeline = ValidationPipeline.default()
    ok = candidate(honest(), losses=(4.4, 4.0, 3.8), reference_loss=None, version=5)
    assert pipeline.validate(ok, stats).accepted
    made_up = candidate(honest(), losses=(1.0, 0.9, 0.8), reference_loss=None, version=5)
    verdict = pipeline.validate(made_up, stats)
    assert reject_code(verdict) is ErrorCode.IMPLAUSIBLE_LOSS
    assert "the median first loss of 3 accepted units from version 5 (4.2; limit: ±1.05)" in verdict.message
    # Peers of another version say nothing about this one.
    assert pipeline.validate(
        candidate(honest(), losses=(1.0, 0.9, 0.8), reference_loss=None, version=6), stats
    ).accepted


def test_without_a_version_no_peers_stand_in_for_an_unknown_reference() -> None:
    honest = HonestGaussian()
    stats = cohort_of([honest() for _ in range(3)], version=None)
    assert stats.first_losses(0) == ()
    made_up = candidate(honest(), losses=(1.0, 0.9, 0.8), reference_loss=None, version=None)
    assert ValidationPipeline.default().validate(made_up, stats).accepted


def test_the_wrong_token_count_is_rejected() -> None:
    verdict = ValidationPipeline.default().validate(candidate(HonestGaussian()(), tokens=96), CohortStats())
    assert reject_code(verdict) is ErrorCode.IMPLAUSIBLE_LOSS
    assert "reports 96 trained tokens; the unit is 192 tokens" in verdict.message


# -- staleness and the pipeline --------------------------------------------------------------------------


def test_an_update_beyond_the_staleness_bound_is_rejected_and_within_it_accepted() -> None:
    pipeline, update = ValidationPipeline.default(), HonestGaussian()()
    assert pipeline.validate(candidate(update, version=3, staleness=4), CohortStats()).accepted
    verdict = pipeline.validate(candidate(update, version=3, staleness=5), CohortStats())
    assert reject_code(verdict) is ErrorCode.STALE_UPDATE
    assert "from model version 3, is 5 versions behind the current model (limit: 4)" in verdict.message


def test_the_cheapest_failing_check_wins() -> None:
    pipeline = ValidationPipeline.default()
    assert pipeline.names == ("staleness", "shape", "finite", "noise", "norm", "direction", "loss", "evidence")
    delta = HonestGaussian()()
    delta["w"][0, 0] = float("nan")
    both = candidate(delta, losses=[1.0])
    assert reject_code(pipeline.validate(both, CohortStats())) is ErrorCode.NON_FINITE
    del delta["b"]
    assert reject_code(pipeline.validate(candidate(delta, losses=[1.0]), CohortStats())) is ErrorCode.SHAPE_MISMATCH


def test_validation_never_changes_the_cohort() -> None:
    stats = cohort_of([HonestGaussian()() for _ in range(3)])
    before = stats.state_dict()
    ValidationPipeline.default().validate(candidate(HonestGaussian(seed=3)()), stats)
    after = stats.state_dict()
    assert before["shards"] == after["shards"] and before["count"] == after["count"]


def test_a_campaign_can_plug_in_its_own_validator() -> None:
    class NoBias:
        name = "no_bias"

        def check(self, candidate: Candidate, stats: CohortStats) -> Verdict | None:
            if float(candidate.delta["b"].abs().max()) > 0:
                return Verdict.reject(ErrorCode.SHAPE_MISMATCH, "this campaign freezes the bias")
            return None

    plugged: Validator = NoBias()
    pipeline = ValidationPipeline([*ValidationPipeline.default().validators, plugged])
    verdict = pipeline.validate(candidate(HonestGaussian()()), CohortStats())
    assert verdict.message == "this campaign freezes the bias"


def test_settings_are_checked_at_the_edge() -> None:
    with pytest.raises(ValueError, match=r"unknown validation setting.*norm_kk"):
        ValidationPipeline.default(norm_kk=3.0)
    with pytest.raises(ValueError, match="min_cosine must be within"):
        ValidationSettings(min_cosine=-2.0)
    with pytest.raises(ValueError, match="repeated: norm"):
        ValidationPipeline([NormCheck(), NormCheck()])


def test_norms_are_judged_against_the_same_shard_and_directions_per_tensor() -> None:
    honest, pipeline = HonestGaussian(), ValidationPipeline.default()
    stats = cohort_of([honest() for _ in range(5)])
    bias_only = {"b": (32,)}

    def bias_update(factor: float) -> Candidate:
        return candidate({"b": honest()["b"] * factor}, shapes=bias_only)

    # A bias-only update is far smaller than a whole-model one, and that's no reason to reject it.
    first = bias_update(1.0)
    assert first.norm < 0.3 * stats.norms(SHAPES)[0]
    assert pipeline.validate(first, stats).accepted
    # Its direction is still judged, against what accepted whole-model updates did to the bias.
    assert reject_code(pipeline.validate(bias_update(-1.0), stats)) is ErrorCode.DIRECTION_OUTLIER
    for _ in range(3):
        stats.record(bias_update(1.0))
    assert stats.norm_spread(["b"]) is not None and stats.norm_spread(SHAPES) is not None
    assert reject_code(pipeline.validate(bias_update(100.0), stats)) is ErrorCode.NORM_OUTLIER


# -- cohort statistics -----------------------------------------------------------------------------------


def test_the_cohort_keeps_only_the_most_recent_window_of_norms() -> None:
    stats = CohortStats(window=4)
    _, unit = norm_cohort([1.0])
    for x in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        stats.record(candidate(scaled(unit, x)))
    assert stats.norms(SHAPES) == pytest.approx((3.0, 4.0, 5.0, 6.0))
    assert stats.count == 6
    spread = stats.norm_spread(SHAPES)
    assert spread is not None and spread.median == pytest.approx(4.5) and spread.mad == pytest.approx(1.0)


def test_cohort_state_round_trips_through_plain_values() -> None:
    honest = HonestGaussian()
    stats = cohort_of([honest() for _ in range(6)], version=2)
    state = stats.state_dict()
    plain = {k: v for k, v in state.items() if k != "direction"}
    assert json.loads(json.dumps(plain)) == plain
    assert all(t.dtype == torch.float32 for t in state["direction"].values())

    restored = CohortStats()
    restored.load_state_dict(json.loads(json.dumps(plain)) | {"direction": state["direction"]})
    assert restored.count == stats.count and restored.norms(SHAPES) == stats.norms(SHAPES)
    assert restored.first_losses(2) == stats.first_losses(2) and len(stats.first_losses(2)) == 6
    restored_direction, direction = restored.direction(), stats.direction()
    assert restored_direction is not None and direction is not None
    assert all(torch.equal(restored_direction[n], direction[n]) for n in direction)

    probe = candidate(scaled(honest(), -1.0))
    pipeline = ValidationPipeline.default()
    assert pipeline.validate(probe, restored) == pipeline.validate(probe, stats)
    stats.record(candidate(honest()))  # the restored cohort shares no tensors with the original
    assert all(torch.equal(restored_direction[n], state["direction"][n]) for n in direction)


def test_a_malformed_cohort_state_is_refused() -> None:
    with pytest.raises(ValueError, match="not a CohortStats state"):
        CohortStats().load_state_dict({"count": 1, "norms": [1.0]})


# -- replication -----------------------------------------------------------------------------------------


def test_identical_replicas_agree() -> None:
    update = HonestGaussian()()
    assert compare_replicas(update, {n: t.clone() for n, t in update.items()}) == Verdict.accept()


def test_replicas_that_differ_like_different_hardware_agree() -> None:
    update = HonestGaussian()()
    other = {n: t * (1 + 1e-2 * torch.randn(t.shape)) for n, t in update.items()}
    assert compare_replicas(update, other).accepted


def test_replicas_twenty_percent_apart_are_a_mismatch() -> None:
    gen = torch.Generator().manual_seed(3)
    update = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    noise = {n: torch.randn(s, generator=gen) for n, s in SHAPES.items()}
    ratio = 0.2 * norm_of(update) / norm_of(noise)
    verdict = compare_replicas(update, {n: t + ratio * noise[n] for n, t in update.items()})
    assert reject_code(verdict) is ErrorCode.REPLICATION_MISMATCH
    assert re.search(r"by (19|20)\.\d% \(relative L2 distance .* limit: 5\.0%\), most in", verdict.message)


def test_replicas_with_different_tensors_or_non_finite_values_are_a_mismatch() -> None:
    update = HonestGaussian()()
    assert compare_replicas(update, {"w": update["w"]}).code is ErrorCode.REPLICATION_MISMATCH
    broken = {n: t.clone() for n, t in update.items()}
    broken["b"][0] = float("nan")
    assert compare_replicas(update, broken).code is ErrorCode.REPLICATION_MISMATCH


# -- trust -----------------------------------------------------------------------------------------------


def test_a_new_volunteer_is_always_replicated() -> None:
    assert TrustTracker().replication_probability(TrustState(), base_rate=0.05) == 1.0


def test_consecutive_valid_results_lower_replication_towards_the_base_rate() -> None:
    tracker, state = TrustTracker(), TrustState()
    probabilities = []
    for _ in range(60):
        probabilities.append(tracker.replication_probability(state, base_rate=0.1))
        state = tracker.update(state, valid=True)
    assert all(a > b for a, b in itertools.pairwise(probabilities))
    assert probabilities[5] == pytest.approx(0.1 + 0.9 / 2)
    assert probabilities[-1] < 0.11


@settings(max_examples=100, deadline=None)
@given(
    consecutive=st.integers(0, 10_000),
    errors=st.integers(0, 1_000),
    base_rate=st.floats(0.0, 1.0),
)
def test_replication_probability_never_leaves_base_rate_to_one(consecutive: int, errors: int, base_rate: float) -> None:
    p = TrustTracker().replication_probability(TrustState(consecutive, errors), base_rate)
    assert base_rate <= p <= 1.0


def test_a_rejection_resets_trust_and_a_replication_mismatch_costs_more() -> None:
    tracker = TrustTracker()
    trusted = TrustState(consecutive_valid=30)
    after_norm = tracker.update(trusted, valid=False, code=ErrorCode.NORM_OUTLIER)
    after_mismatch = tracker.update(trusted, valid=False, code="replication_mismatch")
    assert after_norm == TrustState(0, 1) and after_mismatch == TrustState(0, 3)
    assert tracker.replication_probability(after_norm, 0.05) == 1.0
    # The same streak afterwards earns less trust back after a mismatch than after a plain error.
    later_norm, later_mismatch = TrustState(20, after_norm.errors), TrustState(20, after_mismatch.errors)
    assert tracker.replication_probability(later_mismatch, 0.05) > tracker.replication_probability(later_norm, 0.05)


def test_a_stale_update_does_not_cost_trust() -> None:
    tracker, state = TrustTracker(), TrustState(12, 1)
    assert tracker.update(state, valid=False, code=ErrorCode.STALE_UPDATE) == state
    assert tracker.update(state, valid=False, code=ErrorCode.LEASE_EXPIRED) == state


def test_trust_state_round_trips_and_drives_a_seeded_decision() -> None:
    state = TrustState(7, 2)
    assert TrustState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    with pytest.raises(ValueError, match="not a trust state"):
        TrustState.from_dict({"consecutive_valid": 1})
    rng = random.Random(0)
    decisions = [TrustTracker().should_replicate(TrustState(), 0.05, rng) for _ in range(20)]
    assert all(decisions)
