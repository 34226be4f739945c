"""Fast all-finite test for the tensors the codecs encode and decode.

``torch.isfinite(x).all()`` makes a full boolean tensor; on CPU float32 the extremes tell the same
thing in two reductions (NaN propagates through ``min``/``max``, and an infinity is an extreme).
"""

from __future__ import annotations

import numpy as np
import torch


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or infinite (an empty tensor is finite)."""
    if tensor.numel() == 0:
        return True
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):
        values = tensor.detach().numpy()
        return bool(np.isfinite(values.min()) and np.isfinite(values.max()))
    return bool(torch.isfinite(tensor).all())


def extremes(tensor: torch.Tensor) -> tuple[float, float]:
    """``(min, max)`` of a non-empty float tensor, as Python floats."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):
        values = tensor.detach().numpy()
        return float(values.min()), float(values.max())
    low, high = torch.aminmax(tensor.detach().float())
    return float(low), float(high)


def abs_max(tensor: torch.Tensor) -> float:
    """Largest magnitude of a float tensor; 0.0 when it is empty."""
    if tensor.numel() == 0:
        return 0.0
    low, high = extremes(tensor)
    return max(-low, high)
