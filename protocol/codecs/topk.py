"""Top-k sparsification: per tensor keep the ``k`` largest-magnitude elements as int8.

    >>> import torch
    >>> from protocol.codecs import CodecConfig, TensorSpec, decode, encode
    >>> x = torch.zeros(1000)
    >>> x[7], x[500] = 3.0, -1.0
    >>> config = CodecConfig("topk", topk_fraction=0.002)
    >>> y = decode(encode({"g": x}, config), {"g": TensorSpec((1000,))})["g"]
    >>> y.nonzero().flatten().tolist(), y[7].item()
    ([7, 500], 3.0)

``k = min(n, max(1, ceil(topk_fraction * n)))`` for a tensor of ``n > 0`` elements (``k = 0`` when
``n = 0``), with the product computed in IEEE-754 double precision. Payload: ``k`` as uint32, one
float32 scale (``max|kept| / 127``), ``k`` uint32 indices into the flattened tensor in strictly
increasing order, then ``k`` int8 values. Error bound: the larger of the largest dropped magnitude
and the int8 quantization error of the kept values.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from protocol.codecs.config import CodecConfig
from protocol.codecs.errors import CodecError
from protocol.codecs.quantize import (
    QMAX,
    absmax_quantize,
    float32_bytes,
    int8_bytes,
    quantization_error,
    read_int8,
    read_scales,
)


def kept_count(numel: int, fraction: float) -> int:
    """How many elements topk keeps of a tensor with ``numel`` elements."""
    if numel == 0:
        return 0
    return min(numel, max(1, math.ceil(fraction * numel)))


def top_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest magnitudes along the last dimension, in increasing order.

    On CPU this uses numpy's introselect, several times faster than ``torch.topk`` for large inputs.
    """
    width = values.shape[-1]
    if values.device.type != "cpu":
        _, picked = values.abs().topk(k, dim=-1, sorted=False)
        return picked.sort(dim=-1).values
    magnitudes = np.abs(values.detach().numpy())
    if k == width:
        chosen = np.broadcast_to(np.arange(width), magnitudes.shape)
    else:
        chosen = np.argpartition(magnitudes, width - k, axis=-1)[..., width - k :]
    return torch.from_numpy(np.sort(chosen, axis=-1).astype(np.int64))


class TopKCodec:
    name = "topk"
    codec_id = 5

    def payload_size(self, numel: int, config: CodecConfig) -> int:
        return 8 + 5 * kept_count(numel, config.topk_fraction)

    def encode(self, flat: torch.Tensor, config: CodecConfig) -> list[bytes | memoryview]:
        k = kept_count(flat.numel(), config.topk_fraction)
        indices = top_indices(flat, k)
        q, scale = absmax_quantize(flat[indices][None, :])
        index_bytes = indices.cpu().numpy().astype("<u4").tobytes()
        return [struct.pack("<I", k), float32_bytes(scale), index_bytes, int8_bytes(q.view(-1))]

    def decode(self, payload: memoryview, numel: int, config: CodecConfig, tensor: str) -> torch.Tensor:
        k = kept_count(numel, config.topk_fraction)
        (declared,) = struct.unpack_from("<I", payload, 0)
        if declared != k:
            raise CodecError(
                "bad_payload",
                f"Tensor {tensor!r} declares {declared} kept elements, but topk_fraction "
                f"{config.topk_fraction} of {numel} elements keeps {k}.",
            )
        scale = read_scales(payload, 4, 1, tensor)[0]
        indices = np.frombuffer(payload, dtype="<u4", count=k, offset=8)
        if k and int(indices.max()) >= numel:
            raise CodecError(
                "index_out_of_range",
                f"Tensor {tensor!r} has an index {int(indices.max())} beyond its {numel} elements.",
            )
        if k > 1 and not bool((indices[1:] > indices[:-1]).all()):
            raise CodecError(
                "bad_index",
                f"Tensor {tensor!r} has indices that are not strictly increasing; each kept element "
                "must appear once, in order.",
            )
        values = read_int8(payload, 8 + 4 * k, k, tensor).astype(np.float32)
        out = np.zeros(numel, dtype=np.float32)
        out[indices] = values * scale
        return torch.from_numpy(out)

    def error_bound(self, flat: torch.Tensor, config: CodecConfig) -> float:
        n = flat.numel()
        if n == 0:
            return 0.0
        k = kept_count(n, config.topk_fraction)
        magnitudes = flat.abs()
        dropped = float(magnitudes.topk(k + 1).values.min()) if k < n else 0.0
        # The kept set holds the largest value, so its scale is that of the whole tensor.
        scale = float(magnitudes.max() / QMAX)
        return max(dropped, quantization_error(scale))


TOPK = TopKCodec()
