"""Codec settings: which codec, with which parameters, validated where they enter.

>>> CodecConfig.from_name("int8").block_size
256
>>> CodecConfig.from_dict({"name": "topk", "topk_fraction": 0.05}).topk_fraction
0.05
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from protocol.codecs.errors import CodecError

CODEC_NAMES: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "topk", "dct", "int4", "int2", "sign1")

# Upper limits on parameters. The DCT chunk is small because decode builds a chunk x chunk matrix
# from the (untrusted) frame header; 1024 keeps that at 4 MiB.
MAX_BLOCK_SIZE = 2**31
MAX_DCT_CHUNK = 1024

# The parameters each codec reads; the others keep their defaults and do not travel on the wire.
CODEC_PARAMS: dict[str, tuple[str, ...]] = {
    "fp32": (),
    "fp16": (),
    "bf16": (),
    "int8": ("block_size",),
    "topk": ("topk_fraction",),
    "dct": ("dct_chunk", "dct_topk"),
    "int4": ("block_size",),
    "int2": ("block_size",),
    "sign1": ("block_size",),
}


@dataclass(frozen=True)
class CodecConfig:
    """One codec and its parameters.

    ``block_size``: int8, int4, int2 and sign1, elements per block (one scale each).
    ``topk_fraction``: topk, share of each tensor's elements kept (at least one).
    ``dct_chunk`` / ``dct_topk``: dct, chunk length of the 1-D DCT over the flattened tensor and
    coefficients kept per chunk.
    """

    name: str = "fp32"
    block_size: int = 256
    topk_fraction: float = 0.01
    dct_chunk: int = 64
    dct_topk: int = 4

    def __post_init__(self) -> None:
        if self.name not in CODEC_NAMES:
            raise CodecError("unknown_codec", f"Codec {self.name!r} is not known; use one of {', '.join(CODEC_NAMES)}.")
        _check_int("block_size", self.block_size, 1, MAX_BLOCK_SIZE)
        _check_int("dct_chunk", self.dct_chunk, 1, MAX_DCT_CHUNK)
        _check_int("dct_topk", self.dct_topk, 1, self.dct_chunk)
        fraction = self.topk_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise CodecError("bad_config", f"topk_fraction must be a number, not {fraction!r}.")
        if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
            raise CodecError(
                "bad_config", f"topk_fraction must be in (0, 1], got {fraction!r}; 0.01 keeps 1% per tensor."
            )
        object.__setattr__(self, "topk_fraction", float(fraction))

    @classmethod
    def from_name(cls, name: str) -> CodecConfig:
        """The default settings of codec ``name``."""
        return cls(name=name)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CodecConfig:
        """Build from a JSON-style mapping; unknown keys and wrong types are a ``bad_config`` error."""
        if not isinstance(data, Mapping):
            raise CodecError("bad_config", f"A codec config must be a mapping, not {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise CodecError("bad_config", f"Unknown codec config keys {unknown}; allowed keys are {sorted(known)}.")
        name = data.get("name", "fp32")
        if not isinstance(name, str):
            raise CodecError("bad_config", f"Codec name must be a string, not {name!r}.")
        kwargs: dict[str, object] = dict(data)
        kwargs["name"] = name
        return cls(**kwargs)  # type: ignore[arg-type]  # field types are checked in __post_init__

    def canonical(self) -> CodecConfig:
        """The same codec with the parameters it does not use reset to their defaults.

        Two configs encode identically exactly when their canonical forms are equal.
        """
        used = CODEC_PARAMS[self.name]
        return CodecConfig(self.name, **{p: getattr(self, p) for p in used})


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError("bad_config", f"{field} must be an integer, not {value!r}.")
    if not low <= value <= high:
        raise CodecError("bad_config", f"{field} must be between {low} and {high}, got {value}.")
