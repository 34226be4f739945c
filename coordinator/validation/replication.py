"""Comparing two volunteers' results for the same unit (BOINC-style replication).

Same seed and data on the same hardware give bitwise-identical updates; on different hardware
(another GPU, CPU vs. GPU, bf16 vs. fp32 autocast) they differ slightly, so the comparison is a
relative L2 distance within a tolerance rather than equality:

    >>> compare_replicas(update_a, update_b, rtol=0.05)
    Verdict(accepted=True, code=None, message='accepted')
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from coordinator.validation.interface import Verdict, fmt, global_norm, listing
from protocol.errors import ErrorCode

__all__ = ["compare_replicas"]


def compare_replicas(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], *, rtol: float = 0.05) -> Verdict:
    """Accept when ‖a − b‖ / max(‖a‖, ‖b‖) ≤ rtol over the whole update, else replication_mismatch."""
    if not rtol >= 0:
        raise ValueError(f"rtol must not be negative, got {rtol}")
    if set(a) != set(b):
        differing = sorted(set(a) ^ set(b))
        return _mismatch(f"the two replicas cover different tensors ({listing(differing)} in only one of them)")
    wrong = [n for n in a if a[n].shape != b[n].shape]
    if wrong:
        first = wrong[0]
        return _mismatch(
            f"the two replicas disagree on shapes: {first!r} is {tuple(a[first].shape)} in one and "
            f"{tuple(b[first].shape)} in the other"
        )
    for label, replica in (("this", a), ("the other", b)):
        broken = [n for n, t in replica.items() if not bool(torch.isfinite(t).all())]
        if broken:
            return _mismatch(f"{label} replica holds NaN or infinite values ({listing(broken)})")
    scale = max(global_norm(a), global_norm(b))
    squared = 0.0
    worst_name, worst = "", 0.0
    for name in a:
        x, y = a[name].to(torch.float64), b[name].to(torch.float64)
        diff = float(torch.linalg.vector_norm(x - y))
        squared += diff**2
        size = max(float(torch.linalg.vector_norm(x)), float(torch.linalg.vector_norm(y)))
        relative = diff / size if size > 0 else (0.0 if diff == 0 else math.inf)
        if relative > worst:
            worst_name, worst = name, relative
    distance = math.sqrt(squared)
    relative = distance / scale if scale > 0 else (0.0 if distance == 0 else math.inf)
    if relative <= rtol:
        return Verdict.accept()
    return _mismatch(
        f"the update differs from another volunteer's result for the same unit by {100 * relative:.1f}% "
        f"(relative L2 distance {fmt(distance)} over norm {fmt(scale)}; limit: {100 * rtol:.1f}%), most in "
        f"{worst_name!r} ({100 * worst:.1f}%) — unstable hardware (overclocking, overheating) or a modified "
        "client does this"
    )


def _mismatch(message: str) -> Verdict:
    return Verdict.reject(ErrorCode.REPLICATION_MISMATCH, message)
