"""A round's aggregate by rule: the weighted mean streamed, robust rules over one stack per shard."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.accumulator import DeltaAccumulator
from training.aggregation import AggregationRule, aggregate_updates
from training.robust import centered_clip, trimmed_mean

SHAPES = {"a.w": (3, 2), "a.b": (2,), "b.w": (4,)}
SHARD_A, SHARD_B = ("a.w", "a.b"), ("b.w",)


def _update(shard: tuple[str, ...], seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(SHAPES[n], generator=g) * scale for n in shard}


def _flat(update: dict[str, torch.Tensor], shard: tuple[str, ...]) -> torch.Tensor:
    return torch.cat([update[n].reshape(-1) for n in shard])


def test_the_mean_rule_is_the_weighted_mean(tmp_path: Path) -> None:
    updates = [(_update(SHARD_A, i), float(i + 1)) for i in range(4)]
    result = aggregate_updates(iter(updates), SHAPES, AggregationRule("mean"), tmp_path)
    accumulator = DeltaAccumulator(SHAPES)
    for delta, weight in updates:
        accumulator.add(delta, weight=weight)
    assert result.contributions == 4
    assert set(result.delta) == set(SHARD_A)  # b's tensors had no update: left out, not zero
    for name, tensor in accumulator.mean().items():
        assert torch.equal(result.delta[name], tensor)


@pytest.mark.parametrize("rule", ["trimmed_mean", "centered_clip"])
def test_each_shards_updates_are_aggregated_apart(tmp_path: Path, rule: str) -> None:
    a = [_update(SHARD_A, i) for i in range(5)] + [_update(SHARD_A, 99, scale=1e4)]
    b = [_update(SHARD_B, 10 + i) for i in range(3)]
    interleaved = [(u, 1.0) for u in a[:3]] + [(u, 1.0) for u in b] + [(u, 1.0) for u in a[3:]]
    settings = AggregationRule(rule, trim=0.2, clip_iterations=3)
    result = aggregate_updates(iter(interleaved), SHAPES, settings, tmp_path)
    assert result.contributions == 9
    for shard, updates in ((SHARD_A, a), (SHARD_B, b)):
        matrix = torch.stack([_flat(u, shard) for u in updates])
        expected = trimmed_mean(matrix, 0.2) if rule == "trimmed_mean" else centered_clip(matrix, iterations=3)
        torch.testing.assert_close(_flat(result.delta, shard), expected)
    assert list(tmp_path.iterdir()) == [], "the stack files are removed"


def test_weights_reach_the_robust_rule(tmp_path: Path) -> None:
    updates = [({"b.w": torch.full((4,), float(v))}, w) for v, w in ((0, 1.0), (1, 1.0), (2, 8.0), (3, 1.0), (9, 1.0))]
    result = aggregate_updates(iter(updates), SHAPES, AggregationRule("trimmed_mean", trim=0.2), tmp_path)
    # 0 and 9 are cut; the rest weighted (1·1 + 8·2 + 1·3) / 10.
    torch.testing.assert_close(result.delta["b.w"], torch.full((4,), 2.0))


def test_an_explicit_clipping_radius_bounds_a_liars_pull(tmp_path: Path) -> None:
    honest = [{"b.w": torch.zeros(4)} for _ in range(4)]
    liar = {"b.w": torch.full((4,), 1e6)}
    updates = [(u, 1.0) for u in [*honest, liar]]
    result = aggregate_updates(iter(updates), SHAPES, AggregationRule("centered_clip", clip_tau=0.5), tmp_path)
    # From the median (0), each iteration moves by at most τ·(1/5): three iterations, 0.3 at most.
    assert float(result.delta["b.w"].norm()) <= 0.3 + 1e-6


def test_no_updates_aggregate_to_nothing(tmp_path: Path) -> None:
    for rule in ("mean", "trimmed_mean", "centered_clip"):
        result = aggregate_updates(iter([]), SHAPES, AggregationRule(rule), tmp_path)
        assert (result.delta, result.contributions) == ({}, 0)


def test_updates_of_overlapping_shards_are_refused(tmp_path: Path) -> None:
    updates = [(_update(SHARD_A, 0), 1.0), (_update(("a.w",), 1), 1.0)]
    with pytest.raises(ValueError, match="two different shards"):
        aggregate_updates(iter(updates), SHAPES, AggregationRule("trimmed_mean"), tmp_path)
    assert list(tmp_path.iterdir()) == [], "a refused round leaves no stack file"


def test_an_update_with_a_tensor_the_model_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"does not have: c\.w"):
        aggregate_updates(iter([({"c.w": torch.zeros(2)}, 1.0)]), SHAPES, AggregationRule("centered_clip"), tmp_path)


def test_an_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown aggregation rule 'median'"):
        AggregationRule("median")
