"""ShapeCheck: the update names exactly the unit's shard, with the declared shapes, in fp32."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coordinator.validation.cohort import CohortStats
from coordinator.validation.interface import Candidate, Verdict, listing
from protocol.errors import ErrorCode

__all__ = ["ShapeCheck"]


@dataclass(frozen=True)
class ShapeCheck:
    name = "shape"

    def check(self, candidate: Candidate, stats: CohortStats) -> Verdict | None:
        expected = candidate.expected_shapes
        missing = [n for n in expected if n not in candidate.delta]
        extra = [n for n in candidate.delta if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"misses {len(missing)} tensor(s) of the unit's shard ({listing(missing)})")
            if extra:
                parts.append(f"holds {len(extra)} tensor(s) outside it ({listing(extra)})")
            return Verdict.reject(
                ErrorCode.SHAPE_MISMATCH,
                f"the update {' and '.join(parts)}; the unit's shard has {len(expected)} tensors — "
                "train exactly the unit's shard of the unit's model version",
            )
        wrong = [n for n in expected if tuple(candidate.delta[n].shape) != tuple(expected[n])]
        if wrong:
            first = wrong[0]
            return Verdict.reject(
                ErrorCode.SHAPE_MISMATCH,
                f"{len(wrong)} tensor(s) have the wrong shape ({listing(wrong)}): {first!r} is "
                f"{tuple(candidate.delta[first].shape)}, the unit declares {tuple(expected[first])} — "
                "was the update computed for a different model?",
            )
        not_fp32 = [n for n in expected if candidate.delta[n].dtype != torch.float32]
        if not_fp32:
            first = not_fp32[0]
            return Verdict.reject(
                ErrorCode.SHAPE_MISMATCH,
                f"{len(not_fp32)} tensor(s) decoded as {candidate.delta[first].dtype} instead of "
                f"torch.float32 ({listing(not_fp32)})",
            )
        return None
