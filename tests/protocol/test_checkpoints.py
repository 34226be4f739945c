"""Canonical checkpoint bytes and checkpoint deltas (protocol/checkpoints.py, protocol.md "Checkpoint deltas")."""

from __future__ import annotations

import doctest
import hashlib
import itertools
import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

import protocol.checkpoints
from protocol.checkpoints import CheckpointFormatError, apply_delta, checkpoint_bytes, make_delta, read_checkpoint
from protocol.codecs import CODEC_NAMES, CodecConfig, encode


def weights(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "wte.weight": torch.randn(37, 16, generator=gen),
        "blocks.0.norm.weight": torch.randn(16, generator=gen),
        "head.bias": torch.randn(3, generator=gen),
        "scale": torch.randn((), generator=gen),
    }


def test_canonical_bytes_are_what_safetensors_writes_and_read_back_exactly() -> None:
    tensors = weights()
    data = checkpoint_bytes(tensors)
    assert data == st_save({name: t.contiguous() for name, t in tensors.items()})
    (length,) = struct.unpack_from("<Q", data)
    assert length % 8 == 0
    header = json.loads(data[8 : 8 + length])
    assert list(header) == sorted(tensors)
    back = read_checkpoint(data)
    for name, tensor in tensors.items():
        assert np.array_equal(back[name], tensor.numpy())


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_a_delta_rebuilds_the_coordinators_bytes_with_every_codec(codec: str) -> None:
    base, target = weights(0), weights(1)
    published = {name: t.clone() for name, t in base.items()}
    frame, rebuilt = make_delta(target, published, CodecConfig.from_name(codec))
    expected = checkpoint_bytes(rebuilt)
    result = apply_delta(checkpoint_bytes(base), frame)
    assert result == expected
    assert hashlib.sha256(result).hexdigest() == hashlib.sha256(expected).hexdigest()


@pytest.mark.parametrize(("codec", "shrink"), [("int2", 1e-4), ("sign1", 0.15)])
def test_lossy_deltas_send_what_they_lose_again_so_clients_close_in_on_the_exact_weights(
    codec: str, shrink: float
) -> None:
    target, published = weights(1), weights(0)
    gaps = []
    for _ in range(30):
        _, published = make_delta(target, published, CodecConfig.from_name(codec))
        gaps.append(sum(float((target[n] - published[n]).square().sum()) for n in target) ** 0.5)
    assert gaps[-1] <= shrink * gaps[0]
    assert all(later <= earlier * 1.0001 for earlier, later in itertools.pairwise(gaps))


def test_applying_in_float32_matches_the_documented_arithmetic() -> None:
    base = {"w": torch.tensor([1.0, 1e8, -3.0, 2.0**-130])}
    change = {"w": torch.tensor([2.0**-30, 1.0, 3.0, 2.0**-130])}
    result = read_checkpoint(apply_delta(checkpoint_bytes(base), encode(change, CodecConfig("fp32"))))["w"]
    expected = (base["w"].numpy() + change["w"].numpy()).astype(np.float32)
    assert result.tobytes() == expected.tobytes()
    assert result[0] == 1.0 and result[1] == 1e8  # absorbed by rounding, as float32 does


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"wte.weight": torch.zeros(37, 16)}, "bad_delta:count_mismatch"),
        ({**{n: torch.zeros_like(t) for n, t in weights().items()}, "head.bias": torch.zeros(4)}, "bad_delta"),
        ({**{n: torch.zeros_like(t) for n, t in weights().items()}, "extra": torch.zeros(1)}, "bad_delta"),
    ],
)
def test_a_delta_that_does_not_fit_the_checkpoint_is_refused(change: dict[str, torch.Tensor], code: str) -> None:
    with pytest.raises(CheckpointFormatError) as caught:
        apply_delta(checkpoint_bytes(weights()), encode(change, CodecConfig("int8")))
    assert caught.value.code.startswith(code)


def _with_header(header: object, body: bytes = b"") -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x00\x00\x00\x00\x00\x00\x00{",
        struct.pack("<Q", 1 << 40) + b"{}      ",
        _with_header([1, 2]),
        _with_header({"w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}, b"\x00" * 4),
        _with_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\x00" * 12),
        _with_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 4),
        _with_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 9),
        _with_header({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\x00" * 8),
        _with_header({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\x00" * 8),
        struct.pack("<Q", 8) + b"\xff\xfe{}    ",
    ],
)
def test_anything_but_the_canonical_form_is_refused(data: bytes) -> None:
    with pytest.raises(CheckpointFormatError) as caught:
        read_checkpoint(data)
    assert caught.value.code == "bad_checkpoint"


def test_docstring_examples_run() -> None:
    globs = {"torch": torch, "CodecConfig": CodecConfig, "encode": encode}
    assert doctest.testmod(protocol.checkpoints, extraglobs=globs).failed == 0
