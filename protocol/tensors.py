"""Tensor specifications: the shape and dtype a decoded tensor must have.

A work unit declares the tensors an update must contain as ``{name: TensorSpec}``; the codecs in
:mod:`protocol.codecs` decode against that declaration and never trust the sender's own shapes.

    >>> spec = TensorSpec((768, 3072), "bfloat16")
    >>> spec.numel
    2359296
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The dtypes a decoded tensor may have, by wire name. Order matters: frame.py numbers them from 1.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}

# Largest value one dimension may take: dimensions travel as uint32.
MAX_DIM = 2**32 - 1


@dataclass(frozen=True)
class TensorSpec:
    """The shape and dtype one decoded tensor must have.

    ``shape`` is normalised to a tuple of non-negative ints; ``dtype`` is one of ``DTYPES``.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        for dim in shape:
            if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim <= MAX_DIM:
                raise ValueError(
                    f"TensorSpec shape {shape!r} is invalid: every dimension must be an int in 0..{MAX_DIM}."
                )
        if self.dtype not in DTYPES:
            raise ValueError(f"TensorSpec dtype {self.dtype!r} is not supported; use one of {', '.join(DTYPES)}.")
        object.__setattr__(self, "shape", shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorSpec:
        """The spec a tensor satisfies; float dtypes other than fp16/bf16 map to float32."""
        return cls(tuple(tensor.shape), dtype_name(tensor.dtype))


def dtype_name(dtype: torch.dtype) -> str:
    """Wire dtype name for a torch dtype: fp16 and bf16 keep theirs, every other float is float32."""
    if dtype == torch.float16:
        return "float16"
    if dtype == torch.bfloat16:
        return "bfloat16"
    return "float32"
