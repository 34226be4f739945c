"""Moments frames: AdamW second moments in their compact (factored) form, on the wire.

    >>> specs = moment_specs({"w": (4, 3), "b": (3,)})
    >>> {name: spec.shape for name, spec in specs.items()}
    {'w:rows': (4,), 'w:cols': (3,), 'b': (3,)}
    >>> frame = encode_moments({"w:rows": torch.ones(4), "w:cols": torch.ones(3), "b": torch.ones(3)})
    >>> sorted(decode_moments(frame, {"w": (4, 3), "b": (3,)}))
    ['b', 'w:cols', 'w:rows']

A campaign that shares moments (`recipe.shared_moments`) has every unit return its AdamW second moment
v at the end of the unit, and starts the next round's units from the round's median. A matrix's v
travels as its row means and its column means (Adafactor's factors): parameter `p` of shape
[n, ...] gives the records `p:rows` ([n], the mean over everything but the first dimension) and
`p:cols` ([m], m the product of the other dimensions: the mean over the first). A parameter of rank
0 or 1 travels whole, as the record `p` of its own shape flattened. The frame is a tensor frame
(`protocol.codecs`) with the `bf16` codec (8 significant bits are plenty for a step size's scale, and
half the bytes of fp32); every value must be finite and non-negative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from protocol.codecs import CodecConfig, CodecError, TensorSpec, decode, encode, encoded_size_bound

__all__ = ["MOMENTS_CODEC", "decode_moments", "encode_moments", "moment_bound", "moment_specs", "moments_size"]

MOMENTS_CODEC = CodecConfig("bf16")


def moment_specs(shapes: Mapping[str, Sequence[int]]) -> dict[str, TensorSpec]:
    """The records of a moments frame for parameters of `shapes`, in their order."""
    out: dict[str, TensorSpec] = {}
    for name, shape in shapes.items():
        if len(shape) < 2:
            out[name] = TensorSpec((math.prod(shape),))
        else:
            out[f"{name}:rows"] = TensorSpec((int(shape[0]),))
            out[f"{name}:cols"] = TensorSpec((math.prod(shape[1:]),))
    return out


def moments_size(shapes: Mapping[str, Sequence[int]]) -> int:
    """The exact size of a moments frame for parameters of `shapes`."""
    return encoded_size_bound(moment_specs(shapes), MOMENTS_CODEC)


def encode_moments(records: Mapping[str, torch.Tensor]) -> bytes:
    """A moments frame of `records` (named as `moment_specs` names them)."""
    return encode(records, MOMENTS_CODEC)


def decode_moments(
    data: bytes | bytearray | memoryview, shapes: Mapping[str, Sequence[int]], *, most: float = math.inf
) -> dict[str, torch.Tensor]:
    """The records of a moments frame for parameters of `shapes`; hostile input raises `CodecError`.

    `most` bounds every value: with gradients clipped to norm c before AdamW, no element of an honest v
    exceeds c² (`moment_bound`)."""
    specs = moment_specs(shapes)
    records = decode(data, specs, max_bytes=moments_size(shapes), config=MOMENTS_CODEC)
    for name, values in records.items():
        if bool((values < 0).any()):
            raise CodecError("negative_moment", f"Moment {name!r} holds negative values; a second moment can't.")
        if bool((values > most).any()):
            raise CodecError(
                "implausible_moment",
                f"Moment {name!r} holds values above {most:.6g}, which clipped gradients can't produce.",
            )
    return records


def moment_bound(grad_clip: float) -> float:
    """The largest value an honest moments frame holds for a unit whose gradients are clipped to norm
    `grad_clip` (every squared element ≤ grad_clip², and v averages them), with room for bf16's rounding
    up; no bound when clipping is off."""
    return grad_clip * grad_clip * (1 + 2.0**-7) if grad_clip > 0 else math.inf
