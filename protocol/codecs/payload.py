"""The interface each codec implements for one tensor's payload.

The frame (``frame.py``) owns names, shapes and lengths; a payload codec only turns the flat
float32 values of one tensor into bytes and back. Payload sizes depend only on the element count
and the config, so the frame checks a payload's length before the codec reads a byte of it.
"""

from __future__ import annotations

from typing import Protocol

import torch

from protocol.codecs.config import CodecConfig


class PayloadCodec(Protocol):
    @property
    def name(self) -> str:
        """The codec's name in ``CODEC_NAMES``."""
        ...

    @property
    def codec_id(self) -> int:
        """The codec's id byte in the frame header."""
        ...

    def payload_size(self, numel: int, config: CodecConfig) -> int:
        """Exact payload length in bytes for a tensor of ``numel`` elements."""
        ...

    def encode(self, flat: torch.Tensor, config: CodecConfig) -> list[bytes | memoryview]:
        """Encode a flat, finite float32 tensor; the parts concatenate to the payload."""
        ...

    def decode(self, payload: memoryview, numel: int, config: CodecConfig, tensor: str) -> torch.Tensor:
        """Decode a payload of exactly ``payload_size`` bytes to a flat float32 tensor.

        Raises CodecError for values a valid encoder never writes. ``tensor`` names it in errors.
        """
        ...

    def error_bound(self, flat: torch.Tensor, config: CodecConfig) -> float:
        """Stated worst-case max |flat - decode(encode(flat))| over the float32 values."""
        ...
