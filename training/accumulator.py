"""Streaming, token-weighted averaging of pseudo-gradients, and the staleness rule.

The coordinator adds each accepted update as it arrives and forgets it: memory is one fp32 sum and
one weight per parameter tensor, however many volunteers contribute.

    >>> acc = DeltaAccumulator({"w": (4, 4)})
    >>> acc.add({"w": delta}, weight=tokens * staleness_weight(staleness=1, bound=4))
    >>> mean = acc.mean()                 # {"w": Σ weight·Δ / Σ weight}

Weights are kept per tensor because a unit's update covers only its model shard: a tensor's mean
is over the updates that contained it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["DeltaAccumulator", "staleness_weight"]


class DeltaAccumulator:
    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.sums = {name: torch.zeros(shape, dtype=torch.float32) for name, shape in self.shapes.items()}
        self.weights = dict.fromkeys(self.shapes, 0.0)
        self.contributions = 0

    def add(self, delta: Mapping[str, torch.Tensor], weight: float) -> None:
        """Fold one update in; every tensor is checked before any is added, so a bad one adds nothing."""
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"an update's weight must be a positive number, got {weight}")
        for name, tensor in delta.items():
            if name not in self.shapes:
                raise ValueError(f"update has a tensor {name!r} that the model does not have")
            if tuple(tensor.shape) != self.shapes[name]:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not match {self.shapes[name]}")
        for name, tensor in delta.items():
            self.sums[name].add_(tensor.to(torch.float32), alpha=weight)
            self.weights[name] += weight
        self.contributions += 1

    def mean(self) -> dict[str, torch.Tensor]:
        """Σ weight·Δ / Σ weight for every tensor that received at least one update."""
        return {name: self.sums[name] / w for name, w in self.weights.items() if w > 0}

    def total_weight(self) -> float:
        return max(self.weights.values(), default=0.0)

    def reset(self) -> None:
        for tensor in self.sums.values():
            tensor.zero_()
        self.weights = dict.fromkeys(self.shapes, 0.0)
        self.contributions = 0


def staleness_weight(staleness: int, bound: int, *, decay: float = 0.5) -> float:
    """Down-weight for an update computed `staleness` versions behind (async DiLoCo).

    1.0 when current, 1/(1+s)^decay up to the bound (cf. Async Local-SGD, arXiv 2401.09135), and
    0.0 beyond it: such an update is rejected as stale.
    """
    if staleness < 0:
        raise ValueError(f"staleness can't be negative, got {staleness}")
    if staleness > bound:
        return 0.0
    return float((1.0 + staleness) ** -decay)
