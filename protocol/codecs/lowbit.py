"""Blockwise 4-bit, 2-bit and 1-bit (sign) codecs: the flattened tensor in blocks of ``block_size``,
one float32 scale per block, the values packed several to a byte.

    >>> import torch
    >>> from protocol.codecs import CodecConfig, TensorSpec, decode, encode
    >>> x = torch.linspace(-1, 1, 1024)
    >>> {name: round(4 * 1024 / len(encode({"x": x}, CodecConfig(name)))) for name in ("int4", "int2", "sign1")}
    {'int4': 7, 'int2': 13, 'sign1': 23}

Payload for ``n`` elements and ``nb = ceil(n / block_size)`` blocks: ``nb`` float32 scales, then the
codes of the ``n`` elements packed least-significant bits first (element ``j`` in bits
``b*(j % (8/b))`` of byte ``j // (8/b)``, ``b`` the bits per value), ``ceil(n*b / 8)`` bytes; the
unused high bits of the last byte are 0. With ``s`` the element's block scale:

- **int4**: code ``c`` in 1..15 decodes to ``(c - 8) * s``; ``s = max|x| / 7`` over the block, so
  ``c = round(x / s) + 8``. Code 0 is never written and is rejected. Error: half a step, ``s / 2``.
- **int2**: code ``c`` in 0..3 decodes to ``(2c - 3) * s``: the four levels ``-3s, -s, s, 3s``, with
  ``s = max|x| / 3``; ``x`` goes to the nearest level. Error: one step's half, ``s`` (at 0 too:
  there is no zero level, so use it with error feedback).
- **sign1**: bit 1 decodes to ``+s`` and bit 0 to ``-s``, with ``s = mean|x|`` over the block (the
  scale that makes the sign vector closest to ``x``; DeMo/signSGD style). ``x >= 0`` gets bit 1.
  Error: ``max(s, max|x| - s)`` per block, at most ``max|x|``.

Every stated bound adds float32 rounding slack as int8's does (:mod:`protocol.codecs.quantize`).
These codecs lose much of each update on their own: workers carry what they drop into the next
update (training.error_feedback), which keeps the errors from building into a bias.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from protocol.codecs.config import CodecConfig
from protocol.codecs.errors import CodecError
from protocol.codecs.quantize import float32_bytes, quantization_error, read_scales

__all__ = ["INT2", "INT4", "SIGN1", "LowBitCodec"]


class LowBitCodec:
    """One of the three, by ``bits``: 4 (int4), 2 (int2) or 1 (sign1)."""

    def __init__(self, name: str, codec_id: int, bits: int) -> None:
        self.name = name
        self.codec_id = codec_id
        self.bits = bits
        self.per_byte = 8 // bits

    def payload_size(self, numel: int, config: CodecConfig) -> int:
        return 4 * _blocks(numel, config.block_size) + -(-numel // self.per_byte)

    def encode(self, flat: torch.Tensor, config: CodecConfig) -> list[bytes | memoryview]:
        n, size = flat.numel(), config.block_size
        blocks = _blocks(n, size)
        rows = _padded(flat, blocks, size)
        if self.bits == 1:
            # The mean over the block's real elements only: padding is not part of the tensor.
            counts = torch.full((blocks,), float(size))
            if blocks:
                counts[-1] = n - (blocks - 1) * size
            scale = rows.abs().sum(dim=1) / counts.clamp(min=1)
            codes = (rows >= 0).to(torch.uint8)
        else:
            top = 7 if self.bits == 4 else 3
            scale = rows.abs().amax(dim=1) / top if size > 0 else rows.new_zeros(blocks)
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
            if self.bits == 4:
                codes = (torch.round(rows / safe).clamp_(-7, 7) + 8).to(torch.uint8)
            else:  # nearest of -3, -1, 1, 3 (in steps of s): c = clamp(floor(x/s/2 + 2), 0, 3)
                codes = torch.floor(rows / safe / 2 + 2).clamp_(0, 3).to(torch.uint8)
        return [float32_bytes(scale), _pack(codes.reshape(-1)[:n].numpy(), self.bits)]

    def decode(self, payload: memoryview, numel: int, config: CodecConfig, tensor: str) -> torch.Tensor:
        size = config.block_size
        blocks = _blocks(numel, size)
        scales = read_scales(payload, 0, blocks, tensor)
        packed: npt.NDArray[np.uint8] = np.frombuffer(payload, dtype=np.uint8, offset=4 * blocks)
        codes = _unpack(packed, self.bits, numel, tensor)
        if self.bits == 4:
            if numel and int(codes.min()) == 0:
                raise CodecError("value_out_of_range", f"Tensor {tensor!r} holds the int4 code 0; codes lie in 1..15.")
            levels = codes.astype(np.float32) - 8
        elif self.bits == 2:
            levels = codes.astype(np.float32) * 2 - 3
        else:
            levels = codes.astype(np.float32) * 2 - 1
        # Indexed, not repeated: block_size comes from the frame and may be far larger than the tensor.
        per_element = scales[np.arange(numel) // size] if blocks else np.zeros(0, np.float32)
        return torch.from_numpy((levels * per_element).astype(np.float32))

    def error_bound(self, flat: torch.Tensor, config: CodecConfig) -> float:
        n = flat.numel()
        if n == 0:
            return 0.0
        blocks = _blocks(n, config.block_size)
        rows = _padded(flat, blocks, config.block_size).abs()
        largest = rows.amax(dim=1)
        if self.bits == 1:
            counts = torch.full((blocks,), float(config.block_size))
            counts[-1] = n - (blocks - 1) * config.block_size
            scale = rows.sum(dim=1) / counts
            worst = float(torch.maximum(scale, largest - scale).max())
            return worst * (1 + 2.0**-10) + 2.0**-117
        top = 7 if self.bits == 4 else 3
        step = float(largest.max()) / top
        # int4: half a step; int2: a whole s (half the distance 2s between levels).
        return quantization_error(step) if self.bits == 4 else 2 * quantization_error(step)


def _blocks(numel: int, size: int) -> int:
    return -(-numel // size)


def _padded(flat: torch.Tensor, blocks: int, size: int) -> torch.Tensor:
    n = flat.numel()
    padded = flat if n == blocks * size else torch.nn.functional.pad(flat, (0, blocks * size - n))
    return padded.view(blocks, size)


def _pack(codes: npt.NDArray[np.uint8], bits: int) -> bytes:
    per_byte = 8 // bits
    pad = -len(codes) % per_byte
    grouped = np.concatenate([codes, np.zeros(pad, np.uint8)]).reshape(-1, per_byte).astype(np.uint8)
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    packed: npt.NDArray[np.uint8] = np.bitwise_or.reduce(grouped << shifts, axis=1).astype(np.uint8)
    return bytes(packed.tobytes())


def _unpack(packed: npt.NDArray[np.uint8], bits: int, numel: int, tensor: str) -> npt.NDArray[np.uint8]:
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    codes = ((packed[:, None] >> shifts) & np.uint8((1 << bits) - 1)).reshape(-1)
    if codes[numel:].any():
        raise CodecError("bad_payload", f"Tensor {tensor!r} has bits set past its last value; they must be 0.")
    return codes[:numel]


INT4 = LowBitCodec("int4", 7, 4)
INT2 = LowBitCodec("int2", 8, 2)
SIGN1 = LowBitCodec("sign1", 9, 1)
