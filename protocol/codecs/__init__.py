"""Tensor codecs: how pseudo-gradients and weights travel as bytes.

    >>> import torch
    >>> from protocol.codecs import CodecConfig, TensorSpec, decode, encode, error_bound
    >>> delta = {"w": torch.randn(64, 64)}
    >>> data = encode(delta, CodecConfig.from_name("int8"))
    >>> out = decode(data, {"w": TensorSpec((64, 64))}, max_bytes=len(data))
    >>> bool((out["w"] - delta["w"]).abs().max() <= error_bound(delta["w"], CodecConfig("int8")))
    True

The byte format is documented in :mod:`protocol.codecs.frame`; each codec's payload and error bound
in its own module (``raw``, ``int8_block``, ``topk``, ``dct``).
"""

from __future__ import annotations

from protocol.codecs.bounds import error_bound
from protocol.codecs.config import CODEC_NAMES, CodecConfig
from protocol.codecs.errors import CodecError
from protocol.codecs.frame import FORMAT_VERSION, decode, encode, encoded_size_bound, frame_config
from protocol.tensors import TensorSpec

__all__ = [
    "CODEC_NAMES",
    "FORMAT_VERSION",
    "CodecConfig",
    "CodecError",
    "TensorSpec",
    "decode",
    "encode",
    "encoded_size_bound",
    "error_bound",
    "frame_config",
]
