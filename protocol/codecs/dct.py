"""DeMo-style DCT top-k: per chunk of the flattened tensor keep the largest DCT coefficients.

    >>> import torch
    >>> from protocol.codecs import CodecConfig, TensorSpec, decode, encode
    >>> x = torch.cos(torch.arange(128) * 0.1)
    >>> config = CodecConfig("dct", dct_chunk=64, dct_topk=8)
    >>> y = decode(encode({"w": x}, config), {"w": TensorSpec((128,))})["w"]
    >>> float((x - y).abs().max()) < 0.1
    True

The tensor is flattened, zero-padded to ``m = ceil(n / dct_chunk)`` chunks of ``C = dct_chunk`` and
each chunk is transformed with the orthonormal DCT-II ``c_k = s_k * sum_i x_i cos(pi (2i+1) k / 2C)``,
``s_0 = sqrt(1/C)``, ``s_k = sqrt(2/C)``. The ``K = dct_topk`` largest-magnitude coefficients of each
chunk are kept and quantized to int8 with one scale per chunk. Decode scatters them into a zero
coefficient matrix, applies the inverse (transposed) transform and crops the padding.

Payload: ``m`` float32 scales, then ``m * K`` in-chunk indices (uint8 when ``C <= 256``, else
little-endian uint16; strictly increasing within each chunk), then ``m * K`` int8 values, both
chunk-major.

Error bound. Let ``e`` be the coefficient-domain error of a chunk (dropped coefficients plus the
quantization error of the kept ones). The transform is orthonormal, so the value-domain error is
``D^T e`` and ``|D^T e|_inf <= min(|e|_2, sqrt(2/C) |e|_1)`` (every entry of ``D`` is at most
``sqrt(2/C)`` in magnitude and its columns have unit norm). Float32 rounding of the two matrix
products adds at most ``(C + 2) sqrt(C) 2**-24 (|x|_2 + |c_hat|_2)`` per chunk; the stated bound
doubles that term.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from protocol.codecs.config import CodecConfig
from protocol.codecs.errors import CodecError
from protocol.codecs.quantize import (
    absmax_quantize,
    dequantize,
    float32_bytes,
    int8_bytes,
    read_int8,
    read_scales,
)
from protocol.codecs.topk import top_indices

_UNIT_ROUNDOFF = 2.0**-24


@functools.lru_cache(maxsize=8)
def dct_matrix(size: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (float32, rows are basis vectors): ``c = D @ x``, ``x = D.T @ c``."""
    i = torch.arange(size, dtype=torch.float64)
    basis = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * size)) * math.sqrt(2.0 / size)
    basis[0] /= math.sqrt(2.0)
    return basis.to(torch.float32)


def _index_dtype(chunk: int) -> str:
    return "u1" if chunk <= 256 else "<u2"


class DctCodec:
    name = "dct"
    codec_id = 6

    def payload_size(self, numel: int, config: CodecConfig) -> int:
        chunks = -(-numel // config.dct_chunk)
        index_bytes = 1 if config.dct_chunk <= 256 else 2
        return chunks * (4 + config.dct_topk * (index_bytes + 1))

    def _forward(
        self, flat: torch.Tensor, config: CodecConfig
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(chunks, coefficients, sorted kept indices, int8 values, scales)."""
        size = config.dct_chunk
        n = flat.numel()
        rows = -(-n // size)
        padded = flat if n == rows * size else torch.nn.functional.pad(flat, (0, rows * size - n))
        chunks = padded.view(rows, size)
        coefficients = chunks @ dct_matrix(size).to(flat.device).T
        indices = top_indices(coefficients, config.dct_topk)
        q, scale = absmax_quantize(coefficients.gather(1, indices))
        return chunks, coefficients, indices, q, scale

    def encode(self, flat: torch.Tensor, config: CodecConfig) -> list[bytes | memoryview]:
        _, _, indices, q, scale = self._forward(flat, config)
        index_bytes = indices.cpu().numpy().astype(_index_dtype(config.dct_chunk)).tobytes()
        return [float32_bytes(scale), index_bytes, int8_bytes(q)]

    def decode(self, payload: memoryview, numel: int, config: CodecConfig, tensor: str) -> torch.Tensor:
        size, keep = config.dct_chunk, config.dct_topk
        rows = -(-numel // size)
        count = rows * keep
        scales = read_scales(payload, 0, rows, tensor)
        index_dtype = _index_dtype(size)
        indices = np.frombuffer(payload, dtype=index_dtype, count=count, offset=4 * rows).reshape(rows, keep)
        if count and int(indices.max()) >= size:
            raise CodecError(
                "index_out_of_range",
                f"Tensor {tensor!r} has a DCT coefficient index {int(indices.max())} beyond its chunk of {size}.",
            )
        if keep > 1 and count and not bool((indices[:, 1:] > indices[:, :-1]).all()):
            raise CodecError(
                "bad_index",
                f"Tensor {tensor!r} has DCT coefficient indices that are not strictly increasing "
                "within a chunk; each kept coefficient must appear once, in order.",
            )
        values_at = 4 * rows + count * np.dtype(index_dtype).itemsize
        values = read_int8(payload, values_at, count, tensor).astype(np.float32).reshape(rows, keep)
        values *= scales[:, None]
        coefficients = np.zeros((rows, size), dtype=np.float32)
        np.put_along_axis(coefficients, indices.astype(np.intp), values, axis=1)
        chunks = coefficients @ dct_matrix(size).numpy()
        return torch.from_numpy(chunks.reshape(-1)[:numel])

    def error_bound(self, flat: torch.Tensor, config: CodecConfig) -> float:
        if flat.numel() == 0:
            return 0.0
        size = config.dct_chunk
        chunks, coefficients, indices, q, scale = self._forward(flat, config)
        kept = torch.zeros_like(coefficients).scatter_(1, indices, dequantize(q, scale))
        error = coefficients.double() - kept.double()
        spread = torch.minimum(error.norm(dim=1), error.abs().sum(dim=1) * math.sqrt(2.0 / size))
        rounding = (
            2
            * (size + 2)
            * math.sqrt(size)
            * _UNIT_ROUNDOFF
            * (chunks.double().norm(dim=1) + kept.double().norm(dim=1))
        )
        return float((spread + rounding).max()) * (1 + 1e-9) + 2.0**-100


DCT = DctCodec()
