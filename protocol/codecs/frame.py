"""The tensor frame: a self-describing, versioned container of named, encoded tensors.

    >>> import torch
    >>> from protocol.codecs import CodecConfig, TensorSpec, decode, encode, encoded_size_bound
    >>> update = {"wte": torch.randn(50, 8), "ln.bias": torch.zeros(8)}
    >>> specs = {"wte": TensorSpec((50, 8)), "ln.bias": TensorSpec((8,))}
    >>> data = encode(update, CodecConfig("int8"))
    >>> len(data) == encoded_size_bound(specs, CodecConfig("int8"))
    True
    >>> sorted(decode(data, specs, max_bytes=len(data)))
    ['ln.bias', 'wte']

Byte format, version 1
======================

All integers and floats are little-endian; there is no padding or alignment anywhere.
``u8/u16/u32/u64`` are unsigned integers, ``f32/f64`` IEEE-754 floats, ``i8`` a signed byte.

Frame header::

    offset  size  field
    0       4     magic             the ASCII bytes "CWTF"
    4       2     u16 version       1
    6       1     u8 codec id       1 fp32, 2 fp16, 3 bf16, 4 int8, 5 topk, 6 dct, 7 int4, 8 int2, 9 sign1
    7       1     u8 flags          0 (reserved; any other value is rejected)
    8       P     codec params      by codec id, P bytes:
                                      fp32, fp16, bf16: none (P = 0)
                                      int8, int4, int2, sign1: u32 block_size (P = 4)
                                      topk: f64 topk_fraction                (P = 8)
                                      dct:  u16 dct_chunk, u16 dct_topk      (P = 4)
    8+P     4     u32 tensor count

then ``tensor count`` tensor records, back to back::

    size    field
    2       u16 name length L   1..1024
    L       name                UTF-8, no terminator; unique within the frame
    1       u8 dtype            dtype of the decoded tensor: 1 float32, 2 float16, 3 bfloat16
    1       u8 ndim             0..16
    4*ndim  u32 dims            the shape, outermost first (ndim 0 is a scalar of one element)
    8       u64 payload length  must equal the codec's payload size for numel = prod(dims)
    ...     payload             codec-specific, below

and nothing after the last record. With ``n = prod(dims)`` elements, flattened in row-major (C) order,
the payloads are (their lengths are exact; see each codec's module for its error bound):

- **fp32** ``n`` f32. **fp16** ``n`` IEEE binary16. **bf16** ``n`` u16, each the top 16 bits of an f32.
- **int8** with ``B = block_size``, ``nb = ceil(n / B)`` blocks: ``nb`` f32 scales, then ``n`` i8
  values; element ``j`` decodes to ``value[j] * scale[j // B]``.
- **topk** with ``k = min(n, max(1, ceil(topk_fraction * n)))`` (``k = 0`` if ``n = 0``; the product
  in f64): u32 ``k``, f32 scale, ``k`` u32 indices (strictly increasing, each ``< n``), ``k`` i8
  values; element ``index[i]`` decodes to ``value[i] * scale``, every other element to 0.
- **dct** with ``C = dct_chunk``, ``K = dct_topk``, ``m = ceil(n / C)``: ``m`` f32 scales, ``m*K``
  indices (u8 if ``C <= 256`` else u16; strictly increasing within each chunk, each ``< C``),
  ``m*K`` i8 values. Chunk ``r`` has coefficients ``c[index[r*K+i]] = value[r*K+i] * scale[r]``
  (others 0); its values are ``x = D^T c`` with ``D`` the orthonormal DCT-II matrix
  ``D[k][i] = s_k cos(pi (2i+1) k / (2C))``, ``s_0 = sqrt(1/C)``, ``s_k = sqrt(2/C)``; the
  concatenated chunks are cropped to ``n`` elements.
- **int4**, **int2**, **sign1** with ``B = block_size``, ``nb = ceil(n / B)`` blocks and ``b`` = 4, 2, 1
  bits per value: ``nb`` f32 scales, then ``ceil(n*b / 8)`` bytes of codes packed least-significant
  bits first (element ``j`` in bits ``b*(j % (8/b))`` of byte ``j // (8/b)``; unused bits 0).
  Element ``j`` with code ``c`` and ``s = scale[j // B]`` decodes to ``(c - 8) * s`` (int4, ``c`` in
  1..15), ``(2c - 3) * s`` (int2) or ``(2c - 1) * s`` (sign1). See ``lowbit.py``.

Every scale is finite and >= 0; every i8 value is in [-127, 127]; no int4 code is 0; unused bits of
the last packed byte are 0; every decoded value is finite
after conversion to the record's dtype. A decoder rejects any frame that breaks one of these rules.

Decoding against a declaration
==============================

:func:`decode` takes the shapes the receiver expects (``{name: TensorSpec}``) and checks every
field against them before it allocates anything the declaration does not imply: the frame length
against ``max_bytes`` first, then the header, the tensor count, and each record's name, dtype,
shape and payload length (first pass, no payload is read); then trailing bytes; only then are the
payloads decoded. Each failure raises :class:`CodecError` with one of the codes ``oversized``,
``truncated``, ``bad_magic``, ``unsupported_version``, ``unknown_codec``, ``bad_header``,
``config_mismatch``, ``count_mismatch``, ``bad_name``, ``name_mismatch``, ``duplicate_name``,
``dtype_mismatch``, ``shape_mismatch``, ``payload_size``, ``trailing_bytes``, ``bad_payload``,
``non_finite_scale``, ``negative_scale``, ``value_out_of_range``, ``index_out_of_range``,
``bad_index``, ``non_finite_value``. Encoding raises ``bad_input``, ``bad_name``, ``non_finite_input``
or ``out_of_range``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from protocol.codecs.config import CODEC_PARAMS, CodecConfig
from protocol.codecs.dct import DCT
from protocol.codecs.errors import CodecError
from protocol.codecs.finite import all_finite
from protocol.codecs.int8_block import INT8
from protocol.codecs.lowbit import INT2, INT4, SIGN1
from protocol.codecs.payload import PayloadCodec
from protocol.codecs.raw import BF16, FP16, FP32
from protocol.codecs.topk import TOPK
from protocol.tensors import DTYPES, TensorSpec, dtype_name

MAGIC = b"CWTF"
FORMAT_VERSION = 1
MAX_NAME_BYTES = 1024
MAX_NDIM = 16

CODECS: dict[str, PayloadCodec] = {c.name: c for c in (FP32, FP16, BF16, INT8, TOPK, DCT, INT4, INT2, SIGN1)}
_CODECS_BY_ID: dict[int, PayloadCodec] = {c.codec_id: c for c in CODECS.values()}
BLOCK_CODECS = frozenset({"int8", "int4", "int2", "sign1"})  # one u32 parameter: block_size
_DTYPE_IDS: dict[str, int] = {name: i for i, name in enumerate(DTYPES, start=1)}
_DTYPES_BY_ID: dict[int, str] = {i: name for name, i in _DTYPE_IDS.items()}

_HEADER = struct.Struct("<4sHBB")
_VERSION_CODEC_FLAGS = struct.Struct("<HBB")
_COUNT = _U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")
_DTYPE_NDIM = struct.Struct("<BB")
_DCT_PARAMS = struct.Struct("<HH")


def encode(tensors: Mapping[str, torch.Tensor], config: CodecConfig) -> bytes:
    """Encode named float tensors into one frame with ``config``'s codec.

    Any float dtype is accepted; the codec works on the float32 values, and each record's dtype is
    the tensor's own (float16 and bfloat16 stay themselves, every other float becomes float32).
    """
    if not isinstance(config, CodecConfig):
        raise CodecError("bad_input", f"encode() needs a CodecConfig, not {type(config).__name__}.")
    codec = CODECS[config.name]
    parts: list[bytes | memoryview] = [_HEADER.pack(MAGIC, FORMAT_VERSION, codec.codec_id, 0), _pack_params(config)]
    parts.append(_COUNT.pack(len(tensors)))
    for name, tensor in tensors.items():
        name_bytes = _name_bytes(name)
        flat = _float32_values(name, tensor)
        shape = tuple(tensor.shape)
        if len(shape) > MAX_NDIM:
            raise CodecError("bad_input", f"Tensor {name!r} has {len(shape)} dimensions; at most {MAX_NDIM}.")
        payload = codec.encode(flat, config)
        size = sum(len(p) for p in payload)
        if size != codec.payload_size(flat.numel(), config):
            raise RuntimeError(f"{config.name} wrote {size} bytes for {name!r}, not its payload size")
        dtype_id = _DTYPE_IDS[dtype_name(tensor.dtype)]
        parts += [
            _U16.pack(len(name_bytes)),
            name_bytes,
            struct.pack(f"<BB{len(shape)}IQ", dtype_id, len(shape), *shape, size),
        ]
        parts.extend(payload)
    return b"".join(parts)


def encoded_size_bound(expected: Mapping[str, TensorSpec], config: CodecConfig) -> int:
    """The most bytes a valid frame for ``expected`` can take with ``config`` (all sizes are exact)."""
    codec = CODECS[config.name]
    size = _HEADER.size + _params_size(config.name) + _COUNT.size
    for name, spec in expected.items():
        size += 2 + len(_name_bytes(name)) + 2 + 4 * len(spec.shape) + 8
        size += codec.payload_size(spec.numel, config)
    return size


def frame_config(data: bytes | bytearray | memoryview) -> CodecConfig:
    """The codec config a frame was encoded with, read from its header alone."""
    config, _ = _read_header(_Reader(_byte_view(data)))
    return config


@dataclass(frozen=True)
class _Record:
    name: str
    spec: TensorSpec
    offset: int
    size: int


def decode(
    data: bytes | bytearray | memoryview,
    expected: Mapping[str, TensorSpec],
    *,
    max_bytes: int | None = None,
    config: CodecConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Decode a frame that must hold exactly the tensors in ``expected``.

    Returns contiguous tensors with the expected shapes and dtypes, in ``expected``'s order. With
    ``config`` the frame must also use that codec and those parameters (``config_mismatch``).
    Hostile input gets a :class:`CodecError`; see the module docstring for the checks and codes.
    """
    view = _byte_view(data)
    if max_bytes is not None and view.nbytes > max_bytes:
        raise CodecError(
            "oversized",
            f"The update is {view.nbytes} bytes, over this unit's limit of {max_bytes}; "
            "use the codec the unit asks for.",
        )
    reader = _Reader(view)
    frame_cfg, codec = _read_header(reader)
    if config is not None and frame_cfg != config.canonical():
        raise CodecError(
            "config_mismatch",
            f"The update was encoded with {frame_cfg.to_dict()}, but this unit requires "
            f"{config.canonical().to_dict()}.",
        )
    (count,) = reader.ints(_COUNT, "the tensor count")
    if count != len(expected):
        raise CodecError(
            "count_mismatch",
            f"The update holds {count} tensors, but this unit expects {len(expected)}: {_some(expected)}.",
        )
    records: dict[str, _Record] = {}
    for _ in range(count):
        record = _read_record(reader, expected, codec, frame_cfg)
        if record.name in records:
            raise CodecError("duplicate_name", f"Tensor {record.name!r} appears twice in the update.")
        records[record.name] = record
    if reader.remaining:
        raise CodecError(
            "trailing_bytes",
            f"The update has {reader.remaining} bytes after its last tensor; it is corrupt or "
            "was not produced by this protocol version.",
        )
    out: dict[str, torch.Tensor] = {}
    for name, spec in expected.items():
        record = records[name]
        payload = view[record.offset : record.offset + record.size]
        # Overflow from a hostile scale is caught as non_finite_value below, not warned about.
        with np.errstate(over="ignore", invalid="ignore"):
            flat = codec.decode(payload, spec.numel, frame_cfg, name)
        out[name] = _finish(flat, spec, name)
    return out


def _finish(flat: torch.Tensor, spec: TensorSpec, name: str) -> torch.Tensor:
    tensor = flat.to(spec.torch_dtype).reshape(spec.shape).contiguous()
    if not all_finite(tensor):
        raise CodecError(
            "non_finite_value",
            f"Tensor {name!r} decodes to NaN or infinite values (or values beyond {spec.dtype}); "
            "the update is corrupt.",
        )
    return tensor


class _Reader:
    """Bounds-checked sequential reads from a byte view; running out raises ``truncated``."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0

    @property
    def remaining(self) -> int:
        return self.view.nbytes - self.pos

    def need(self, size: int, what: str) -> None:
        if size > self.remaining:
            raise CodecError(
                "truncated",
                f"The update ends at byte {self.view.nbytes} in the middle of {what} "
                f"({size} bytes needed at byte {self.pos}); it was cut short, resend it.",
            )

    def ints(self, layout: struct.Struct, what: str) -> tuple[int, ...]:
        self.need(layout.size, what)
        values = layout.unpack_from(self.view, self.pos)
        self.pos += layout.size
        return tuple(int(v) for v in values)

    def float64(self, what: str) -> float:
        self.need(8, what)
        (value,) = _F64.unpack_from(self.view, self.pos)
        self.pos += 8
        return float(value)

    def take(self, size: int, what: str) -> memoryview:
        self.need(size, what)
        chunk = self.view[self.pos : self.pos + size]
        self.pos += size
        return chunk


def _read_header(reader: _Reader) -> tuple[CodecConfig, PayloadCodec]:
    magic = bytes(reader.take(len(MAGIC), "the frame header"))
    if magic != MAGIC:
        raise CodecError("bad_magic", "This is not a Commonweights tensor frame (its first bytes are not 'CWTF').")
    version, codec_id, flags = reader.ints(_VERSION_CODEC_FLAGS, "the frame header")
    if version != FORMAT_VERSION:
        raise CodecError(
            "unsupported_version",
            f"Tensor frame version {version} is not supported (this build reads version "
            f"{FORMAT_VERSION}); update the volunteer app.",
        )
    codec = _CODECS_BY_ID.get(codec_id)
    if codec is None:
        known = ", ".join(f"{c.codec_id} ({c.name})" for c in CODECS.values())
        raise CodecError("unknown_codec", f"Codec id {codec_id} is not known; known ids are {known}.")
    if flags != 0:
        raise CodecError("bad_header", f"The frame's reserved flags byte is {flags}, not 0.")
    what = f"the {codec.name} parameters"
    params: dict[str, int | float] = {}
    if codec.name in BLOCK_CODECS:
        (params["block_size"],) = reader.ints(_U32, what)
    elif codec.name == "topk":
        params["topk_fraction"] = reader.float64(what)
    elif codec.name == "dct":
        params["dct_chunk"], params["dct_topk"] = reader.ints(_DCT_PARAMS, what)
    try:
        config = CodecConfig(codec.name, **params)  # type: ignore[arg-type]
    except CodecError as err:
        raise CodecError("bad_header", f"The frame's {codec.name} parameters are invalid: {err}") from err
    return config, codec


def _read_record(
    reader: _Reader, expected: Mapping[str, TensorSpec], codec: PayloadCodec, config: CodecConfig
) -> _Record:
    (name_len,) = reader.ints(_U16, "a tensor name length")
    if not 1 <= name_len <= MAX_NAME_BYTES:
        raise CodecError("bad_name", f"A tensor name is {name_len} bytes long; names take 1 to {MAX_NAME_BYTES} bytes.")
    try:
        name = bytes(reader.take(name_len, "a tensor name")).decode("utf-8")
    except UnicodeDecodeError as err:
        raise CodecError("bad_name", "A tensor name is not valid UTF-8.") from err
    spec = expected.get(name)
    if spec is None:
        raise CodecError(
            "name_mismatch",
            f"The update holds a tensor {name!r} that this unit does not train; it expects {_some(expected)}.",
        )
    dtype_id, ndim = reader.ints(_DTYPE_NDIM, f"the dtype and rank of {name!r}")
    dtype = _DTYPES_BY_ID.get(dtype_id)
    if dtype is None:
        raise CodecError("bad_header", f"Tensor {name!r} has unknown dtype id {dtype_id}.")
    if dtype != spec.dtype:
        raise CodecError(
            "dtype_mismatch",
            f"Tensor {name!r} is {dtype}, but this unit expects {spec.dtype}; cast it before encoding.",
        )
    if ndim != len(spec.shape):
        raise CodecError(
            "shape_mismatch",
            f"Tensor {name!r} has {ndim} dimensions, but this unit expects shape {list(spec.shape)}.",
        )
    shape = reader.ints(struct.Struct(f"<{ndim}I"), f"the shape of {name!r}")
    if shape != spec.shape:
        raise CodecError(
            "shape_mismatch",
            f"Tensor {name!r} has shape {list(shape)}, but this unit expects {list(spec.shape)}.",
        )
    (size,) = reader.ints(_U64, f"the payload length of {name!r}")
    want = codec.payload_size(spec.numel, config)
    if size != want:
        raise CodecError(
            "payload_size",
            f"Tensor {name!r} declares a {size}-byte payload; {config.name} with these settings "
            f"writes exactly {want} bytes for shape {list(spec.shape)}.",
        )
    offset = reader.pos
    reader.take(want, f"the payload of {name!r}")
    return _Record(name, spec, offset, want)


def _some(names: Mapping[str, object], shown: int = 5) -> str:
    """A few of the expected names, for error messages that must stay short."""
    listed = ", ".join(repr(n) for n in list(names)[:shown])
    more = len(names) - shown
    return (listed or "no tensors") + (f" and {more} more" if more > 0 else "")


def _params_layout(codec_name: str) -> struct.Struct | None:
    return {"topk": _F64, "dct": _DCT_PARAMS}.get(codec_name, _U32 if codec_name in BLOCK_CODECS else None)


def _params_size(codec_name: str) -> int:
    layout = _params_layout(codec_name)
    return 0 if layout is None else layout.size


def _pack_params(config: CodecConfig) -> bytes:
    layout = _params_layout(config.name)
    if layout is None:
        return b""
    return layout.pack(*(getattr(config, p) for p in CODEC_PARAMS[config.name]))


def _name_bytes(name: object) -> bytes:
    if not isinstance(name, str):
        raise CodecError("bad_name", f"Tensor names must be strings, not {type(name).__name__}.")
    encoded = name.encode("utf-8")
    if not 1 <= len(encoded) <= MAX_NAME_BYTES:
        raise CodecError(
            "bad_name",
            f"Tensor name {name[:40]!r} is {len(encoded)} UTF-8 bytes; names take 1 to {MAX_NAME_BYTES}.",
        )
    return encoded


def _float32_values(name: str, tensor: object) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        kind = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise CodecError("bad_input", f"Tensor {name!r} must be a floating-point torch.Tensor, not {kind}.")
    tensor = tensor.detach()
    if not all_finite(tensor):
        raise CodecError(
            "non_finite_input",
            f"Tensor {name!r} contains NaN or infinite values; training diverged, so it is not sent.",
        )
    flat = tensor.to(torch.float32).reshape(-1).contiguous()
    # Only float64 can overflow float32; half types convert exactly.
    if tensor.dtype == torch.float64 and not all_finite(flat):
        raise CodecError("out_of_range", f"Tensor {name!r} has values beyond the float32 range.")
    return flat


def _byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode() needs bytes, not {type(data).__name__}")
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")
