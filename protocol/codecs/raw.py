"""Raw codecs: every element as float32, float16 or bfloat16, little-endian.

    >>> import torch
    >>> from protocol.codecs import CodecConfig, TensorSpec, decode, encode
    >>> x = {"w": torch.tensor([1.0, -2.5, 3.0e-3])}
    >>> data = encode(x, CodecConfig("fp16"))
    >>> decode(data, {"w": TensorSpec((3,))})["w"]
    tensor([ 1.0000, -2.5000,  0.0030])

Error bounds (round to nearest even): fp32 is exact. fp16 keeps 11 significant bits, so each value is
off by at most ``|x| * 2**-11`` when normal and ``2**-25`` when subnormal; values beyond fp16's range
(``|x| > 65504`` after rounding) are refused with ``out_of_range`` rather than clamped, because a clamped
pseudo-gradient is silently wrong: use bf16 or int8 for such tensors. bf16 keeps 8 significant bits:
at most ``|x| * 2**-8`` (``2**-134`` for subnormals); only values within half a bf16 ulp of float32's
maximum can overflow, and those are refused the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from protocol.codecs.config import CodecConfig
from protocol.codecs.errors import CodecError
from protocol.codecs.finite import abs_max, extremes


@dataclass(frozen=True)
class RawCodec:
    name: str
    codec_id: int
    wire_dtype: torch.dtype
    bytes_per_element: int
    relative_error: float
    subnormal_error: float

    def payload_size(self, numel: int, config: CodecConfig) -> int:
        return numel * self.bytes_per_element

    def encode(self, flat: torch.Tensor, config: CodecConfig) -> list[bytes | memoryview]:
        wire = flat.to(self.wire_dtype)
        # Rounding is monotonic: if the extremes fit the wire dtype, every value does.
        if self.wire_dtype != torch.float32 and flat.numel() and not _fits(extremes(flat), self.wire_dtype):
            largest = abs_max(flat)
            raise CodecError(
                "out_of_range",
                f"A value of magnitude {largest:.6g} does not fit in {self.name}; "
                "encode this tensor with bf16, int8 or fp32 instead.",
            )
        if self.wire_dtype == torch.float32:
            return [_to_numpy(wire).astype("<f4", copy=False).tobytes()]
        if self.wire_dtype == torch.float16:
            return [_to_numpy(wire).astype("<f2", copy=False).tobytes()]
        bits = _to_numpy(wire.view(torch.int16))
        return [bits.astype("<i2", copy=False).tobytes()]

    def decode(self, payload: memoryview, numel: int, config: CodecConfig, tensor: str) -> torch.Tensor:
        values: npt.NDArray[Any]
        if self.wire_dtype == torch.float32:
            values = np.frombuffer(payload, dtype="<f4", count=numel).astype(np.float32)
        elif self.wire_dtype == torch.float16:
            values = np.frombuffer(payload, dtype="<f2", count=numel).astype(np.float32)
        else:
            # bfloat16 is the top half of a float32.
            bits = np.frombuffer(payload, dtype="<u2", count=numel).astype(np.uint32) << 16
            values = bits.view(np.float32)
        return torch.from_numpy(values)

    def error_bound(self, flat: torch.Tensor, config: CodecConfig) -> float:
        if flat.numel() == 0:
            return 0.0
        if self.wire_dtype == torch.float32 or bool((flat.to(self.wire_dtype).float() == flat).all()):
            return 0.0
        return abs_max(flat) * self.relative_error + self.subnormal_error


def _fits(values: tuple[float, float], dtype: torch.dtype) -> bool:
    return bool(torch.isfinite(torch.tensor(values, dtype=torch.float32).to(dtype)).all())


def _to_numpy(t: torch.Tensor) -> npt.NDArray[Any]:
    return t.detach().cpu().contiguous().numpy()


FP32 = RawCodec("fp32", 1, torch.float32, 4, 0.0, 0.0)
FP16 = RawCodec("fp16", 2, torch.float16, 2, 2.0**-11, 2.0**-25)
BF16 = RawCodec("bf16", 3, torch.bfloat16, 2, 2.0**-8, 2.0**-134)
