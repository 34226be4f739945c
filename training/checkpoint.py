"""Weights and optimizer state as safetensors bytes: what travels and what is stored.

    >>> blob = save_weights(dict(model.named_parameters()))
    >>> model.load_state_dict(load_weights(blob), strict=False)
    >>> state = load_state(save_state({"lr": 0.7, "buffers": {"w": tensor}}))

Never pickle: a checkpoint that came over the network is parsed by safetensors, which reads a
JSON header and raw tensor bytes and can't run code. `save_state` keeps nested dicts of tensors
and plain JSON values by flattening them: tensors go in the tensor table under their path, the
rest in the header's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

__all__ = ["CheckpointError", "load_state", "load_weights", "save_state", "save_weights"]

STATE_KEY = "commonweights.state"


class CheckpointError(ValueError):
    code = "bad_checkpoint"


def save_weights(tensors: Mapping[str, torch.Tensor]) -> bytes:
    data: bytes = st_save({name: t.detach().to("cpu").contiguous() for name, t in tensors.items()})
    return data


def load_weights(data: bytes, expected: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """Parse weights; with `expected`, names and shapes must match exactly."""
    try:
        tensors: dict[str, torch.Tensor] = st_load(data)
    except Exception as error:  # safetensors raises its own error types for any malformed input
        raise CheckpointError(f"not a valid safetensors checkpoint: {error}") from None
    if expected is not None:
        if set(tensors) != set(expected):
            missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
            raise CheckpointError(
                f"checkpoint tensors differ: missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}"
            )
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != tuple(shape):
                raise CheckpointError(f"{name}: shape {tuple(tensors[name].shape)}, expected {tuple(shape)}")
    return tensors


def save_state(state: Mapping[str, Any]) -> bytes:
    tensors: dict[str, torch.Tensor] = {}

    def strip(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().to("cpu").contiguous()
            return {"__tensor__": path}
        if isinstance(value, Mapping):
            if all(isinstance(k, str) for k in value):
                return {k: strip(v, f"{path}/{k}") for k, v in value.items()}
            # JSON keys are strings; keep other keys (AdamW indexes its state by int) as pairs.
            return {"__pairs__": [[k, strip(v, f"{path}/{k}")] for k, v in value.items()]}
        if isinstance(value, list | tuple):
            return [strip(v, f"{path}/{i}") for i, v in enumerate(value)]
        return value

    skeleton = strip(state, "")
    data: bytes = st_save(tensors, metadata={STATE_KEY: json.dumps(skeleton)})
    return data


def load_state(data: bytes) -> dict[str, Any]:
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        skeleton = json.loads(header["__metadata__"][STATE_KEY])
    except Exception as error:
        raise CheckpointError(f"not a valid state blob: {error}") from None

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__tensor__"}:
                return tensors[value["__tensor__"]]
            if set(value) == {"__pairs__"}:
                return {k: fill(v) for k, v in value["__pairs__"]}
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    result: dict[str, Any] = fill(skeleton)
    return result
