"""Stated worst-case error of an encode -> decode round trip, per tensor.

    >>> import torch
    >>> from protocol.codecs import CodecConfig, TensorSpec, decode, encode, error_bound
    >>> x = torch.randn(1000)
    >>> y = decode(encode({"x": x}, CodecConfig("int8")), {"x": TensorSpec((1000,))})["x"]
    >>> float((x - y).abs().max()) <= error_bound(x, CodecConfig("int8"))
    True

The bound is on ``max |x - decode(encode(x))|`` with ``x`` the tensor as given. It adds three terms:
rounding a non-fp16/bf16/fp32 input (float64) to float32; the codec's own error on the float32 values
(see each codec module); and, for float16 and bfloat16 tensors, which decode to their own dtype,
rounding the decoded float32 value back to that dtype (relative ``2**-11`` / ``2**-8``, plus half the
smallest subnormal). The last term is dropped when the codec is exact.
"""

from __future__ import annotations

import torch

from protocol.codecs.config import CodecConfig
from protocol.codecs.errors import CodecError
from protocol.codecs.finite import abs_max, all_finite
from protocol.codecs.frame import CODECS

_OUTPUT_ROUNDING: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (2.0**-11, 2.0**-25),
    torch.bfloat16: (2.0**-8, 2.0**-134),
}


def error_bound(tensor: torch.Tensor, config: CodecConfig) -> float:
    """Stated worst-case max-abs (L_inf) error of ``encode`` -> ``decode`` for this tensor."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise CodecError("bad_input", "error_bound() needs a floating-point torch.Tensor.")
    x = tensor.detach().reshape(-1)
    if x.numel() == 0:
        return 0.0
    if not all_finite(x):
        raise CodecError("non_finite_input", "The tensor contains NaN or infinite values; it has no bound.")
    flat = x.to(torch.float32).contiguous()
    conversion = 0.0
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        conversion = float((x.double() - flat.double()).abs().max())
    codec_error = CODECS[config.name].error_bound(flat, config)
    rounding = 0.0
    if codec_error > 0 and x.dtype in _OUTPUT_ROUNDING:
        relative, subnormal = _OUTPUT_ROUNDING[x.dtype]
        rounding = (abs_max(flat) + codec_error) * relative + subnormal
    return conversion + codec_error + rounding
