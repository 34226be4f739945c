"""Absmax int8 quantization shared by the int8, topk and dct codecs, and the checks on its bytes.

A group of values ``v`` is stored as one float32 ``scale = max|v| / 127`` and int8 ``q = round(v *
(1/scale))`` in ``[-127, 127]`` (``-128`` is never produced and is rejected on decode). Dequantized
values are ``q * scale`` computed in float32.

Error per value, for a group with a normal (not subnormal) scale: ``|v - q*scale| <= scale/2`` plus
float32 rounding of the reciprocal, the product ``v * (1/scale)`` (each at most ``127 * 2**-24`` of a
quotient at most 127) and the dequantizing product (``127 * 2**-24 * scale``): under ``381 * 2**-24 *
scale`` in all. When the scale is subnormal or zero, the group's values are below ``127 * 2**-126 <
2**-119``; an encoder may write them as 0, so the error is below that too. The stated bound is
therefore ``scale * (1/2 + 2**-12) + 2**-117`` (see :func:`quantization_error`). Decoders rely only on
the range of ``q``, never on how an encoder rounded.

On CPU the encoder works through the rows a cache-sized chunk at a time: every pass over a chunk
(absolute values, maxima, scaling, rounding, conversion) reads memory that the previous pass left in
the L2 cache, which makes it about ten times faster than whole-tensor passes over main memory.
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


# Float32 values per chunk of the CPU encoder: 1 MiB, so a chunk and its scratch copy fit in L2.
_CHUNK_VALUES = 1 << 18


def absmax_quantize(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row of a 2-D float32 tensor with its own scale: ``(q int8, scale float32)``."""
    count, width = rows.shape
    q = torch.empty((count, width), dtype=torch.int8, device=rows.device)
    scale = torch.zeros(count, dtype=torch.float32, device=rows.device)
    if count == 0 or width == 0:
        return q, scale
    step = count if rows.device.type != "cpu" else max(1, _CHUNK_VALUES // width)
    scratch = torch.empty((min(step, count), width), dtype=torch.float32, device=rows.device)
    inverse = torch.empty(min(step, count), dtype=torch.float32, device=rows.device)
    for start in range(0, count, step):
        chunk = rows[start : start + step]
        size = chunk.shape[0]
        work, chunk_scale, chunk_inverse = scratch[:size], scale[start : start + size], inverse[:size]
        torch.abs(chunk, out=work)
        torch.amax(work, dim=1, out=chunk_scale)
        chunk_scale.div_(QMAX)
        # 1/0 and 1/subnormal overflow to infinity; those rows are below 2**-119 and become 0.
        torch.reciprocal(chunk_scale, out=chunk_inverse)
        chunk_inverse.nan_to_num_(nan=0.0, posinf=0.0)
        torch.mul(chunk, chunk_inverse[:, None], out=work)
        work.round_().clamp_(-QMAX, QMAX)
        q[start : start + size].copy_(work)
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


def int8_bytes(q: torch.Tensor) -> memoryview:
    """The int8 values as bytes, without a copy when they are already in contiguous CPU memory."""
    values: npt.NDArray[Any] = q.detach().cpu().contiguous().numpy().reshape(-1)
    return values.data.cast("B")


def float32_bytes(x: torch.Tensor) -> bytes:
    return x.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4", copy=False).tobytes()
