"""A round's aggregate: what the outer optimizer steps with, by the campaign's rule.

    >>> rule = AggregationRule("trimmed_mean", trim=0.2)
    >>> result = aggregate_updates(zip(deltas, weights), shapes, rule, scratch_dir)
    >>> outer.step(params, result.delta)      # result.contributions: how many updates went in

`mean` is the weighted mean, streamed into a `DeltaAccumulator` (one fp32 sum per tensor).
`trimmed_mean` and `centered_clip` are training.robust's rules: each update is written to an
`UpdateStack` file in `scratch` as it arrives and forgotten, and the rule reads the stack back a
block of columns at a time, so memory stays bounded however many updates the round has. Updates
are (tensors, weight) pairs and are read once, in order: a caller decodes them one at a time.

An update covers one model shard's tensors; updates of different shards go to different stacks
and are aggregated apart (a tensor's aggregate is over the updates that contain it, as with the
mean). The coordinator's aggregator and the history replay both call `aggregate_updates`, so a
replay applies exactly the rule the coordinator did.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from training.accumulator import DeltaAccumulator
from training.robust import UpdateStack, centered_clip_chunked, trimmed_mean_chunked

__all__ = ["AGGREGATION_RULES", "Aggregate", "AggregationRule", "aggregate_updates"]

AGGREGATION_RULES = ("mean", "trimmed_mean", "centered_clip")


@dataclass(frozen=True)
class AggregationRule:
    """How a round's updates become one: `name` is one of AGGREGATION_RULES; `trim` is the trimmed
    mean's fraction cut from each end per coordinate; `clip_iterations` and `clip_tau` (None:
    automatic, the median distance to the start) are centered clipping's (see training.robust)."""

    name: str = "mean"
    trim: float = 0.2
    clip_iterations: int = 3
    clip_tau: float | None = None

    def __post_init__(self) -> None:
        if self.name not in AGGREGATION_RULES:
            raise ValueError(f"unknown aggregation rule {self.name!r}; known: {', '.join(AGGREGATION_RULES)}")

    @property
    def robust(self) -> bool:
        """Whether the rule needs the round's updates kept (in a stack), not only their running sum."""
        return self.name != "mean"


@dataclass(frozen=True)
class Aggregate:
    delta: dict[str, torch.Tensor]  # the tensors at least one update contained
    contributions: int  # the updates aggregated


def aggregate_updates(
    updates: Iterable[tuple[Mapping[str, torch.Tensor], float]],
    shapes: Mapping[str, Sequence[int]],
    rule: AggregationRule,
    scratch: str | os.PathLike[str],
) -> Aggregate:
    """The aggregate of `updates` ((tensors, weight > 0) pairs, each the tensors of one shard) by `rule`.

    A robust rule's stacks are files in `scratch`, removed before this returns (a process killed
    meanwhile leaves update-stack-*.f32 files for its next start to sweep)."""
    if not rule.robust:
        accumulator = DeltaAccumulator({name: tuple(shape) for name, shape in shapes.items()})
        for delta, weight in updates:
            accumulator.add(delta, weight=weight)
        return Aggregate(accumulator.mean(), accumulator.contributions)
    with contextlib.ExitStack() as cleanup:
        stacks: dict[tuple[str, ...], UpdateStack] = {}
        shard_of: dict[str, tuple[str, ...]] = {}
        count = 0
        for delta, weight in updates:
            unknown = sorted(set(delta) - set(shapes))
            if unknown:
                raise ValueError(f"an update has tensors the model does not have: {', '.join(unknown)}")
            shard = tuple(name for name in shapes if name in delta)
            for name in shard:
                if shard_of.setdefault(name, shard) != shard:
                    raise ValueError(f"{name} is in updates of two different shards; shards must not overlap")
            stack = stacks.get(shard)
            if stack is None:
                stack = stacks[shard] = cleanup.enter_context(UpdateStack({n: shapes[n] for n in shard}, scratch))
            stack.append(delta, weight=weight)
            count += 1
        out: dict[str, torch.Tensor] = {}
        for stack in stacks.values():
            out |= _robust(stack, rule)
        return Aggregate(out, count)


def _robust(stack: UpdateStack, rule: AggregationRule) -> dict[str, torch.Tensor]:
    if rule.name == "trimmed_mean":
        return trimmed_mean_chunked(stack, rule.trim)
    return centered_clip_chunked(stack, tau=rule.clip_tau, iterations=rule.clip_iterations)
