"""Blockwise int8: the flattened tensor in blocks of ``block_size``, one absmax scale per block.

    >>> import torch
    >>> from protocol.codecs import CodecConfig, TensorSpec, decode, encode
    >>> data = encode({"w": torch.linspace(-1, 1, 1000)}, CodecConfig("int8", block_size=256))
    >>> len(data) < 1000 * 4 / 3.5
    True

Payload for ``n`` elements and ``nb = ceil(n / block_size)`` blocks: ``nb`` float32 scales, then ``n``
int8 values; the last block may be short. Error bound: half the largest block scale, i.e. about
``max|x| / 254`` (see :mod:`protocol.codecs.quantize` for the exact stated form).
"""

from __future__ import annotations

import numpy as np
import torch

from protocol.codecs.config import CodecConfig
from protocol.codecs.finite import abs_max
from protocol.codecs.quantize import (
    QMAX,
    absmax_quantize,
    float32_bytes,
    int8_bytes,
    quantization_error,
    read_int8,
    read_scales,
)


class Int8BlockCodec:
    name = "int8"
    codec_id = 4

    def payload_size(self, numel: int, config: CodecConfig) -> int:
        return 4 * _blocks(numel, config.block_size) + numel

    def encode(self, flat: torch.Tensor, config: CodecConfig) -> list[bytes | memoryview]:
        n, size = flat.numel(), config.block_size
        full = n // size
        q, scale = absmax_quantize(flat[: full * size].view(full, size))
        if full * size == n:
            return [float32_bytes(scale), int8_bytes(q)]
        # The short last block on its own, so the full ones are quantized in place, not copied.
        tail_q, tail_scale = absmax_quantize(flat[full * size :].view(1, -1))
        return [float32_bytes(scale), float32_bytes(tail_scale), int8_bytes(q), int8_bytes(tail_q)]

    def decode(self, payload: memoryview, numel: int, config: CodecConfig, tensor: str) -> torch.Tensor:
        size = config.block_size
        blocks = _blocks(numel, size)
        scales = read_scales(payload, 0, blocks, tensor)
        out = read_int8(payload, 4 * blocks, numel, tensor).astype(np.float32)
        full = numel // size
        out[: full * size].reshape(full, size)[...] *= scales[:full, None]
        if full < blocks:
            out[full * size :] *= scales[full]
        return torch.from_numpy(out)

    def error_bound(self, flat: torch.Tensor, config: CodecConfig) -> float:
        if flat.numel() == 0:
            return 0.0
        # Division by 127 is monotonic, so the largest block scale is that of the largest value.
        largest_scale = float(np.float32(abs_max(flat)) / np.float32(QMAX))
        return quantization_error(largest_scale)


def _blocks(numel: int, size: int) -> int:
    return -(-numel // size)


INT8 = Int8BlockCodec()
