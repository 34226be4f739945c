"""Absmax int8 quantization shared by the int8, topk and dct codecs, and the checks on its bytes.

A group of values ``v`` is stored as one float32 ``scale = max|v| / 127`` and int8 ``q = round(v /
scale)`` in ``[-127, 127]`` (``-128`` is never produced and is rejected on decode). Dequantized values
are ``q * scale`` computed in float32.

Error per value, for a group with a normal (not subnormal) scale: ``|v - q*scale| <= scale/2`` plus
float32 rounding of the division and the product, at most ``254 * 2**-24 * scale``. When the scale is
subnormal or zero, the group's values are below ``127 * 2**-126 < 2**-119`` and so is the error. The
stated bound is therefore ``scale * (1/2 + 2**-12) + 2**-117`` (see :func:`quantization_error`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from protocol.codecs.errors import CodecError

QMAX = 127
# Slack terms of the stated bound; the module docstring derives them.
_REL_SLACK = 2.0**-12
_ABS_SLACK = 2.0**-117


def absmax_quantize(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row of a 2-D float32 tensor with its own scale: ``(q int8, scale float32)``."""
    scale = rows.abs().amax(dim=1) / QMAX if rows.shape[1] > 0 else rows.new_zeros(rows.shape[0])
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(rows / safe[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` per row in float32; ``q`` is ``(rows, width)``, ``scale`` is ``(rows,)``."""
    return q.to(torch.float32) * scale[:, None]


def quantization_error(max_scale: float) -> float:
    """Stated worst-case |error| of one dequantized value from groups whose largest scale is this."""
    return max_scale * (0.5 + _REL_SLACK) + _ABS_SLACK


def read_scales(buf: memoryview, offset: int, count: int, tensor: str) -> npt.NDArray[np.float32]:
    """Read ``count`` little-endian float32 scales; each must be finite and non-negative."""
    scales: npt.NDArray[Any] = np.frombuffer(buf, dtype="<f4", count=count, offset=offset)
    if count and not np.isfinite(scales).all():
        raise CodecError(
            "non_finite_scale",
            f"Tensor {tensor!r} has a NaN or infinite quantization scale; the update is corrupt, "
            "re-encode it from finite values.",
        )
    if count and (scales < 0).any():
        raise CodecError(
            "negative_scale",
            f"Tensor {tensor!r} has a negative quantization scale; a valid encoder writes max|x|/127.",
        )
    return scales.astype(np.float32)


def read_int8(buf: memoryview, offset: int, count: int, tensor: str) -> npt.NDArray[np.int8]:
    """Read ``count`` int8 values; each must be in [-127, 127]."""
    q: npt.NDArray[Any] = np.frombuffer(buf, dtype=np.int8, count=count, offset=offset)
    if count and int(q.min()) < -QMAX:
        raise CodecError(
            "value_out_of_range",
            f"Tensor {tensor!r} holds the int8 value -128; quantized values must lie in [-127, 127].",
        )
    return q


def int8_bytes(q: torch.Tensor) -> bytes:
    return q.detach().cpu().contiguous().numpy().tobytes()


def float32_bytes(x: torch.Tensor) -> bytes:
    return x.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
