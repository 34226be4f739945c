"""Hostile update frames for `commonweights bench fuzz`: valid updates of every codec, mutated field by field.

    >>> fuzzer = TensorFrameFuzzer(seed=0)
    >>> update = fuzzer.next()
    >>> update.config in TENSOR_CONFIGS and isinstance(update.data, bytes)
    True

The mutations follow the byte format of protocol/codecs/frame.py: header fields (magic, version,
codec id, flags, the codec's parameters, the tensor count), record fields (name length, name,
dtype, rank, dimensions, payload length), payload values a valid encoder never writes (NaN,
infinite or negative scales, -128, indices out of range or out of order, a wrong top-k count,
non-finite raw values), records swapped, repeated or dropped, byte damage, and valid frames of
another codec. Decoded against a shard's specs with the coordinator's max_bytes, each must give
finite tensors of the declared shapes or a `CodecError` with a documented code.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import torch

from benchmarks.fuzz_frames import BAD_UTF8
from protocol.codecs import CodecConfig, TensorSpec, encoded_size_bound
from protocol.codecs import encode as encode_tensors
from protocol.codecs.topk import kept_count

__all__ = ["SHARD", "TENSOR_CONFIGS", "TENSOR_KINDS", "FuzzedUpdate", "TensorFrameFuzzer", "tensor_max_bytes"]

SHARD: Final[dict[str, TensorSpec]] = {
    "wte.weight": TensorSpec((40, 16)),
    "blocks.0.attn.qkv.weight": TensorSpec((48, 16)),
    "blocks.0.ln.bias": TensorSpec((16,)),
    "blocks.1.mlp.w": TensorSpec((3, 5, 7)),
    "head.scale": TensorSpec((1,)),
}
"""The shard the tensor frames are decoded against: the shapes a work unit declares."""

TENSOR_CONFIGS: Final = (
    CodecConfig("fp32"),
    CodecConfig("fp16"),
    CodecConfig("bf16"),
    CodecConfig("int8"),
    CodecConfig("int8", block_size=7),
    CodecConfig("topk", topk_fraction=0.01),
    CodecConfig("topk", topk_fraction=0.3),
    CodecConfig("dct", dct_chunk=64, dct_topk=4),
    CodecConfig("dct", dct_chunk=16, dct_topk=16),
    CodecConfig("dct", dct_chunk=300, dct_topk=3),  # over 256: 16-bit indices
)

TENSOR_KINDS: Final = ("valid", "header", "record", "payload", "structure", "bytes", "foreign")
_TENSOR_WEIGHTS: Final = (4, 14, 22, 28, 12, 14, 6)
_F32_SPECIALS: Final = (math.nan, math.inf, -math.inf, -1.0, -0.0, 3.4028234663852886e38, 1e-45, 1e30)


@dataclass(frozen=True, slots=True)
class FuzzedUpdate:
    """One generated update, decoded with the unit's `config` (it must decode if its kind is valid)."""

    data: bytes
    config: CodecConfig
    kind: str


@dataclass(frozen=True, slots=True)
class _Record:
    name_len_at: int
    dtype_at: int
    ndim: int
    dims_at: int
    length_at: int
    payload_at: int
    numel: int


@dataclass(frozen=True, slots=True)
class _Layout:
    params_at: int
    count_at: int
    records: tuple[_Record, ...]


def _layout(frame: bytes, config: CodecConfig) -> _Layout:
    """Where each field of a valid frame sits (byte format in protocol/codecs/frame.py)."""
    params = {"int8": 4, "topk": 8, "dct": 4}.get(config.name, 0)
    pos = 8 + params
    (count,) = struct.unpack_from("<I", frame, pos)
    count_at, pos = pos, pos + 4
    records = []
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", frame, pos)
        name_len_at = pos
        pos += 2 + name_len
        dtype_at, ndim = pos, frame[pos + 1]
        dims = struct.unpack_from(f"<{ndim}I", frame, pos + 2)
        length_at = pos + 2 + 4 * ndim
        (length,) = struct.unpack_from("<Q", frame, length_at)
        payload_at = length_at + 8
        records.append(_Record(name_len_at, dtype_at, ndim, pos + 2, length_at, payload_at, math.prod(dims)))
        pos = payload_at + length
    return _Layout(8, count_at, tuple(records))


class TensorFrameFuzzer:
    """An endless, seeded stream of update frames for the tensors `specs` (a unit's shard), with each of
    `configs` in turn: a frame says which config it was made from (`FuzzedUpdate.config`)."""

    def __init__(
        self,
        seed: int,
        *,
        specs: Mapping[str, TensorSpec] = SHARD,
        configs: tuple[CodecConfig, ...] = TENSOR_CONFIGS,
    ) -> None:
        self.rng = random.Random(seed)
        self.specs = dict(specs)
        generator = torch.Generator().manual_seed(seed)
        self.valid: list[tuple[CodecConfig, bytes, _Layout]] = []
        for config in configs:
            for scale in (1.0, 1e-3, 300.0, 0.0):
                tensors = {name: torch.randn(spec.shape, generator=generator) * scale for name, spec in specs.items()}
                frame = encode_tensors(tensors, config)
                self.valid.append((config, frame, _layout(frame, config)))
        makers: tuple[Callable[[], FuzzedUpdate], ...] = (
            self._valid, self._header, self._record, self._payload, self._structure, self._bytes, self._foreign
        )  # fmt: skip
        self._makers = makers

    def next(self) -> FuzzedUpdate:
        return self.rng.choices(self._makers, weights=_TENSOR_WEIGHTS)[0]()

    def _pick(self) -> tuple[CodecConfig, bytearray, _Layout]:
        config, frame, layout = self.rng.choice(self.valid)
        return config, bytearray(frame), layout

    def _valid(self) -> FuzzedUpdate:
        config, frame, _ = self._pick()
        return FuzzedUpdate(bytes(frame), config, "valid")

    def _header(self) -> FuzzedUpdate:
        rng = self.rng
        config, frame, layout = self._pick()
        field = rng.randrange(6)
        if field == 0:
            frame[0:4] = rng.choice((b"CWTG", b"cwtf", b"\x00\x00\x00\x00", b"PK\x03\x04"))
        elif field == 1:
            struct.pack_into("<H", frame, 4, rng.choice((0, 2, 0xFFFF)))
        elif field == 2:
            frame[6] = rng.choice((0, 7, 255, *(i for i in range(1, 7) if i != frame[6])))
        elif field == 3:
            frame[7] = rng.choice((1, 0x80, 0xFF))
        elif field == 4 and layout.count_at > 8:  # the codec's parameters
            if config.name == "topk":
                struct.pack_into("<d", frame, 8, rng.choice((*_F32_SPECIALS, 0.0, 1.0, 1.5, 5e-324, 0.02, 0.3)))
            elif config.name == "int8":
                struct.pack_into("<I", frame, 8, rng.choice((0, 1, 255, 257, 1 << 31, (1 << 31) + 1, (1 << 32) - 1)))
            else:
                chunk, keep = rng.choice(
                    (
                        (0, 1),
                        (1, 1),
                        (64, 0),
                        (64, 65),
                        (1024, 4),
                        (1025, 1),
                        (65535, 65535),
                        (16, 4),
                        (64, 8),
                        (300, 4),
                    )
                )
                struct.pack_into("<HH", frame, 8, chunk, keep)
        else:
            count = len(layout.records)
            struct.pack_into("<I", frame, layout.count_at, rng.choice((0, count - 1, count + 1, (1 << 32) - 1)))
        return FuzzedUpdate(bytes(frame), config, "header")

    def _record(self) -> FuzzedUpdate:
        rng = self.rng
        config, frame, layout = self._pick()
        record = rng.choice(layout.records)
        field = rng.randrange(6)
        if field == 0:
            (name_len,) = struct.unpack_from("<H", frame, record.name_len_at)
            struct.pack_into("<H", frame, record.name_len_at, rng.choice((0, name_len - 1, name_len + 1, 1025, 65535)))
        elif field == 1:  # the name: not UTF-8, another of the shard's names (same length or not), unknown
            start = record.name_len_at + 2
            (name_len,) = struct.unpack_from("<H", frame, record.name_len_at)
            others = [n.encode() for n in self.specs]
            new = rng.choice((*BAD_UTF8, b"\x00" * name_len, *others, b"x" * name_len))
            frame[start : start + name_len] = new
            struct.pack_into("<H", frame, record.name_len_at, len(new))
        elif field == 2:
            frame[record.dtype_at] = rng.choice((0, 2, 3, 4, 255))
        elif field == 3:
            frame[record.dtype_at + 1] = rng.choice((0, record.ndim - 1, record.ndim + 1, 16, 17, 255))
        elif field == 4 and record.ndim:
            spot = record.dims_at + 4 * rng.randrange(record.ndim)
            (dim,) = struct.unpack_from("<I", frame, spot)
            struct.pack_into("<I", frame, spot, rng.choice((0, 1, dim - 1, dim + 1, (1 << 32) - 1)))
        else:
            (length,) = struct.unpack_from("<Q", frame, record.length_at)
            choice = rng.choice((0, 1, length - 1, length + 1, 1 << 63, (1 << 64) - 1, length * 2))
            struct.pack_into("<Q", frame, record.length_at, max(0, choice) % (1 << 64))
        return FuzzedUpdate(bytes(frame), config, "record")

    def _payload(self) -> FuzzedUpdate:
        """Values a valid encoder never writes, at the place each codec keeps them."""
        rng = self.rng
        config, frame, layout = self._pick()
        record = rng.choice(layout.records)
        at, n = record.payload_at, record.numel
        name = config.name
        for _ in range(rng.choice((1, 1, 2, 4))):
            if name == "fp32":
                struct.pack_into("<f", frame, at + 4 * rng.randrange(n), rng.choice(_F32_SPECIALS))
            elif name in ("fp16", "bf16"):
                specials = (0x7C00, 0xFC00, 0x7E00, 0x7BFF) if name == "fp16" else (0x7F80, 0xFF80, 0x7FC0, 0x7F7F)
                struct.pack_into("<H", frame, at + 2 * rng.randrange(n), rng.choice(specials))
            elif name == "int8":
                blocks = -(-n // config.block_size)
                self._quantized(frame, at, blocks, at + 4 * blocks, n)
            elif name == "topk":
                k = kept_count(n, config.topk_fraction)
                pick = rng.randrange(4)
                if pick == 0:
                    struct.pack_into("<I", frame, at, rng.choice((0, k - 1, k + 1, (1 << 32) - 1)) % (1 << 32))
                elif pick == 1 and k:
                    self._indices(frame, at + 8, k, 4, n)
                else:
                    self._quantized(frame, at + 4, 1, at + 8 + 4 * k, k)
            else:
                rows = -(-n // config.dct_chunk)
                width = 1 if config.dct_chunk <= 256 else 2
                count = rows * config.dct_topk
                if rng.random() < 0.4:
                    self._indices(frame, at + 4 * rows, count, width, config.dct_chunk)
                else:
                    self._quantized(frame, at, rows, at + 4 * rows + width * count, count)
        return FuzzedUpdate(bytes(frame), config, "payload")

    def _quantized(self, frame: bytearray, scales_at: int, scales: int, values_at: int, values: int) -> None:
        rng = self.rng
        if rng.random() < 0.6 and scales:
            struct.pack_into("<f", frame, scales_at + 4 * rng.randrange(scales), rng.choice(_F32_SPECIALS))
        elif values:
            frame[values_at + rng.randrange(values)] = rng.choice((0x80, 0x81, 0x7F))

    def _indices(self, frame: bytearray, at: int, count: int, width: int, bound: int) -> None:
        rng = self.rng
        fmt = "<I" if width == 4 else "<H" if width == 2 else "<B"
        spot = rng.randrange(count)
        choice = rng.randrange(4)
        if choice == 0:
            value = rng.choice((bound, bound + 1, (1 << (8 * width)) - 1))
        elif choice == 1 and spot:
            value = struct.unpack_from(fmt, frame, at + width * (spot - 1))[0]  # repeats the previous index
        else:
            value = rng.randrange(1 << (8 * width))
        struct.pack_into(fmt, frame, at + width * spot, min(value, (1 << (8 * width)) - 1))

    def _structure(self) -> FuzzedUpdate:
        """Records swapped, repeated, dropped or cut."""
        rng = self.rng
        config, frame, layout = self._pick()
        records = layout.records
        spans = [
            bytes(frame[r.name_len_at : (records[i + 1].name_len_at if i + 1 < len(records) else len(frame))])
            for i, r in enumerate(records)
        ]
        head = bytes(frame[: layout.count_at])
        pick = rng.randrange(4)
        if pick == 0:
            rng.shuffle(spans)
        elif pick == 1:
            spans.insert(rng.randrange(len(spans) + 1), rng.choice(spans))
        elif pick == 2:
            del spans[rng.randrange(len(spans))]
        else:
            spans[rng.randrange(len(spans))] = spans[rng.randrange(len(spans))]
        count = len(spans) if rng.random() < 0.7 else len(records)
        return FuzzedUpdate(head + struct.pack("<I", count) + b"".join(spans), config, "structure")

    def _bytes(self) -> FuzzedUpdate:
        rng = self.rng
        config, frame, _ = self._pick()
        for _ in range(rng.choice((1, 2, 4, 16))):
            op = rng.randrange(5)
            spot = rng.randrange(len(frame)) if frame else 0
            if op <= 1 and frame:
                frame[spot] ^= 1 << rng.randrange(8)
            elif op == 2:
                del frame[spot:]
            elif op == 3:
                frame += rng.randbytes(rng.randrange(1, 9))
            else:
                frame[spot:spot] = rng.randbytes(rng.randrange(1, 5))
        return FuzzedUpdate(bytes(frame), config, "bytes")

    def _foreign(self) -> FuzzedUpdate:
        """A valid frame of another codec or settings (config_mismatch, or too large)."""
        config, _, _ = self._pick()
        _, other, _ = self.rng.choice(self.valid)
        return FuzzedUpdate(other, config, "foreign")


def tensor_max_bytes(config: CodecConfig, specs: Mapping[str, TensorSpec] = SHARD) -> int:
    """The coordinator's limit for an update of `specs` (coordinator/engine/state.py: the exact size)."""
    return encoded_size_bound(specs, config)
