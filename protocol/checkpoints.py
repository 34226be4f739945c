"""Checkpoint bytes on the wire, and the deltas that turn one version's checkpoint into the next.

    >>> data = checkpoint_bytes({"w": torch.ones(2, 2)})
    >>> delta = encode({"w": torch.full((2, 2), 0.5)}, CodecConfig("int8"))
    >>> apply_delta(data, delta) == checkpoint_bytes({"w": torch.full((2, 2), 1.5)})
    True

A checkpoint is a safetensors file in one canonical form, so that any client that rebuilds the
weights bit for bit also rebuilds the file byte for byte, and checks it against the SHA-256 the
coordinator published: an 8-byte little-endian header length ``n``; ``n`` bytes of JSON, an object
whose keys are the tensor names in ascending byte order, each ``{"dtype":"F32","shape":[…],
"data_offsets":[begin,end]}`` with no whitespace, the whole padded with spaces to a multiple of 8;
then each tensor's float32 values, little-endian, row-major, in the same order with no gaps. There is
no ``__metadata__`` entry. This is what the ``safetensors`` library (0.3.1 and later) writes for float32
tensors.

A delta is a tensor frame (:mod:`protocol.codecs`) holding one tensor per checkpoint tensor, of the
same shape. Applying it: ``new[p] = base[p] + decoded[p]`` element by element in IEEE float32 with
round-to-nearest-even, ``decoded`` being the frame's dequantized float32 values. The coordinator
publishes each version as exactly this sum, so every client that applies the delta holds the same
bits as the coordinator.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np
import torch

from protocol.codecs import CodecConfig, CodecError, TensorSpec, decode, encode

__all__ = ["CheckpointFormatError", "apply_delta", "checkpoint_bytes", "make_delta", "read_checkpoint"]

_LENGTH = struct.Struct("<Q")


class CheckpointFormatError(ValueError):
    """A checkpoint or delta that is not in the protocol's form; ``code`` is stable, the text says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def checkpoint_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """The canonical checkpoint of float32 tensors (others are converted to float32 first)."""
    names = sorted(tensors, key=lambda name: name.encode("utf-8"))
    header: dict[str, object] = {}
    arrays = []
    offset = 0
    for name in names:
        values = tensors[name].detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
        header[name] = {"dtype": "F32", "shape": list(values.shape), "data_offsets": [offset, offset + values.nbytes]}
        offset += values.nbytes
        arrays.append(values)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return b"".join([_LENGTH.pack(len(text)), text, *(a.tobytes() for a in arrays)])


def read_checkpoint(data: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """The float32 tensors of a canonical checkpoint, as read-only arrays over ``data``.

    Raises CheckpointFormatError when ``data`` is not exactly in the canonical form: a client that
    rebuilt different bytes would fail the SHA-256 check anyway, so nothing else is accepted here.
    """
    view = memoryview(data).cast("B")
    if len(view) < 8:
        raise CheckpointFormatError("bad_checkpoint", "a checkpoint starts with an 8-byte header length")
    (length,) = _LENGTH.unpack_from(view, 0)
    if length % 8 or 8 + length > len(view):
        raise CheckpointFormatError(
            "bad_checkpoint", f"the header length {length} is not a multiple of 8 within the {len(view)}-byte file"
        )
    try:
        header = json.loads(bytes(view[8 : 8 + length]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointFormatError("bad_checkpoint", f"the header is not JSON: {error}") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError("bad_checkpoint", "the header is not a JSON object")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    body = view[8 + length :]
    for name, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (
            not isinstance(entry, dict)
            or entry.get("dtype") != "F32"
            or not isinstance(shape, list)
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            raise CheckpointFormatError("bad_checkpoint", f"tensor {name!r} is not a float32 entry")
        size = 4 * int(np.prod(shape, dtype=np.int64))
        if entry.get("data_offsets") != [offset, offset + size] or offset + size > len(body):
            raise CheckpointFormatError("bad_checkpoint", f"tensor {name!r} is not where the canonical form puts it")
        tensors[name] = np.frombuffer(body, dtype="<f4", count=size // 4, offset=offset).reshape(shape)
        offset += size
    if offset != len(body):
        raise CheckpointFormatError("bad_checkpoint", f"{len(body) - offset} bytes follow the last tensor")
    return tensors


def apply_delta(base: bytes | bytearray | memoryview, delta: bytes | bytearray | memoryview) -> bytes:
    """The checkpoint that ``delta`` (a tensor frame) makes of ``base`` (a canonical checkpoint).

    The frame must hold exactly the checkpoint's tensors with their shapes; the frame's own limits
    (``protocol.codecs.decode``) apply, so a hostile delta can't allocate more than the checkpoint.
    """
    weights = read_checkpoint(base)
    specs = {name: TensorSpec(tuple(values.shape)) for name, values in weights.items()}
    try:
        changes = decode(delta, specs, max_bytes=max(len(memoryview(delta)), 1))
    except CodecError as error:
        raise CheckpointFormatError(f"bad_delta:{error.code}", f"the delta is unusable: {error}") from None
    result = {}
    for name, values in weights.items():
        # float32 + float32 in numpy is IEEE float32 addition, rounded to nearest even.
        result[name] = torch.from_numpy(np.asarray(np.add(values, changes[name].numpy(), dtype=np.float32)))
    return checkpoint_bytes(result)


def make_delta(
    target: Mapping[str, torch.Tensor], published: Mapping[str, torch.Tensor], codec: CodecConfig
) -> tuple[bytes, dict[str, torch.Tensor]]:
    """``(delta frame, what a client rebuilds)`` for moving clients from ``published`` towards ``target``.

    What the codec loses stays in ``target − rebuilt`` and goes out with the next delta.
    """
    frame = encode({name: target[name].detach().float() - published[name].float() for name in published}, codec)
    specs = {name: TensorSpec(tuple(t.shape)) for name, t in published.items()}
    decoded = decode(frame, specs, max_bytes=len(frame))
    rebuilt = {
        name: torch.from_numpy(
            np.asarray(np.add(published[name].detach().float().cpu().numpy(), decoded[name].numpy(), dtype=np.float32))
        )
        for name in published
    }
    return frame, rebuilt
