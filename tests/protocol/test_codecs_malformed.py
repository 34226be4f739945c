"""Decoding hostile frames: every malformed input is a CodecError with a specific code.

Frames here are built by hand from the byte format in ``protocol/codecs/frame.py``'s docstring, so
these tests also check that the documented layout is the real one.
"""

from __future__ import annotations

import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codecs import CODEC_NAMES, CodecConfig, CodecError, TensorSpec, decode, encode

FP32, FP16, BF16, INT8, TOPK, DCT, INT4, INT2, SIGN1 = 1, 2, 3, 4, 5, 6, 7, 8, 9
F32, F16 = 1, 2


def header(
    codec: int = FP32,
    params: bytes = b"",
    count: int = 1,
    *,
    magic: bytes = b"CWTF",
    version: int = 1,
    flags: int = 0,
) -> bytes:
    return magic + struct.pack("<HBB", version, codec, flags) + params + struct.pack("<I", count)


def record(
    name: bytes = b"w",
    shape: tuple[int, ...] = (2,),
    payload: bytes = b"",
    *,
    dtype: int = F32,
    ndim: int | None = None,
    length: int | None = None,
) -> bytes:
    ndim = len(shape) if ndim is None else ndim
    length = len(payload) if length is None else length
    return (
        struct.pack("<H", len(name)) + name + struct.pack(f"<BB{len(shape)}IQ", dtype, ndim, *shape, length) + payload
    )


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


W2 = {"w": TensorSpec((2,))}


def rejects(data: bytes, expected: dict[str, TensorSpec] = W2, **kwargs: int) -> str:
    with pytest.raises(CodecError) as err:
        decode(data, expected, **kwargs)  # type: ignore[arg-type]
    assert str(err.value)  # a sentence for the volunteer
    return err.value.code


def test_a_hand_built_frame_decodes_as_documented() -> None:
    fp32 = header() + record(payload=f32(1.5, -2.0))
    assert decode(fp32, W2)["w"].tolist() == [1.5, -2.0]
    int8 = header(INT8, struct.pack("<I", 1)) + record(payload=f32(0.5, 2.0) + bytes([2, 0xFF]))
    assert decode(int8, W2)["w"].tolist() == [1.0, -2.0]
    topk = header(TOPK, struct.pack("<d", 0.5)) + record(payload=struct.pack("<IfIb", 1, 0.25, 1, -4))
    assert decode(topk, W2)["w"].tolist() == [0.0, -1.0]
    dct = header(DCT, struct.pack("<HH", 2, 1)) + record(payload=f32(1.0) + bytes([0, 127]))
    assert decode(dct, W2)["w"] == pytest.approx([127 / math.sqrt(2)] * 2)
    bf16 = header(BF16) + record(payload=struct.pack("<2H", 0x3FC0, 0xC000))
    assert decode(bf16, W2)["w"].tolist() == [1.5, -2.0]


# --- length ------------------------------------------------------------------------------------


def _small_frame(name: str) -> tuple[bytes, dict[str, TensorSpec]]:
    config = CodecConfig(name, block_size=4, topk_fraction=0.3, dct_chunk=4, dct_topk=2)
    tensors = {"weight": torch.linspace(-1, 1, 10).reshape(2, 5), "bias": torch.tensor([0.5, -0.25, 2.0])}
    return encode(tensors, config), {k: TensorSpec.of(v) for k, v in tensors.items()}


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_every_truncation_of_a_frame_is_rejected_as_truncated(name: str) -> None:
    data, specs = _small_frame(name)
    for cut in range(len(data)):
        assert rejects(data[:cut], specs) == "truncated"


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_trailing_bytes_are_rejected(name: str) -> None:
    data, specs = _small_frame(name)
    assert rejects(data + b"\x00", specs) == "trailing_bytes"


def test_a_frame_over_max_bytes_is_rejected_before_it_is_parsed() -> None:
    assert rejects(b"garbage" * 100, max_bytes=100) == "oversized"
    data = header() + record(payload=f32(1, 2))
    assert rejects(data, max_bytes=len(data) - 1) == "oversized"
    assert decode(data, W2, max_bytes=len(data))["w"].tolist() == [1.0, 2.0]


# --- header ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (header(magic=b"CWTX") + record(payload=f32(1, 2)), "bad_magic"),
        (b"PK\x03\x04" + bytes(40), "bad_magic"),
        (header(version=2) + record(payload=f32(1, 2)), "unsupported_version"),
        (header(codec=0) + record(payload=f32(1, 2)), "unknown_codec"),
        (header(codec=10) + record(payload=f32(1, 2)), "unknown_codec"),
        (header(flags=1) + record(payload=f32(1, 2)), "bad_header"),
        (header(INT8, struct.pack("<I", 0)) + record(payload=bytes(10)), "bad_header"),
        (header(TOPK, struct.pack("<d", math.nan)) + record(payload=bytes(13)), "bad_header"),
        (header(TOPK, struct.pack("<d", 2.0)) + record(payload=bytes(13)), "bad_header"),
        (header(DCT, struct.pack("<HH", 2048, 4)) + record(payload=bytes(14)), "bad_header"),
        (header(DCT, struct.pack("<HH", 4, 5)) + record(payload=bytes(14)), "bad_header"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_header_fields_are_rejected(data: bytes, code: str) -> None:
    assert rejects(data) == code


def test_a_frame_with_other_codec_parameters_fails_on_its_payload_size() -> None:
    data = encode({"w": torch.ones(1000)}, CodecConfig("int8", block_size=128))
    assert decode(data, {"w": TensorSpec((1000,))})["w"].shape == (1000,)
    patched = data[:8] + struct.pack("<I", 256) + data[12:]
    assert rejects(patched, {"w": TensorSpec((1000,))}) == "payload_size"


# --- names, count, dtype, shape ----------------------------------------------------------------

TWO = {"w": TensorSpec((2,)), "b": TensorSpec((1,))}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (header(count=2) + record(payload=f32(1, 2)) + record(b"x", (1,), f32(3)), "name_mismatch"),
        (header(count=2) + record(payload=f32(1, 2)) + record(b"w", (2,), f32(3, 4)), "duplicate_name"),
        (header(count=1) + record(payload=f32(1, 2)), "count_mismatch"),
        (header(count=3) + record(payload=f32(1, 2)) + record(b"b", (1,), f32(3)), "count_mismatch"),
        (header(count=2) + record(b"", (2,), f32(1, 2)) + record(b"b", (1,), f32(3)), "bad_name"),
        (header(count=2) + record(b"\xff\xfe", (2,), f32(1, 2)) + record(b"b", (1,), f32(3)), "bad_name"),
        (header(count=2) + record(b"w" * 2000, (2,), f32(1, 2)) + record(b"b", (1,), f32(3)), "bad_name"),
        (header(count=2) + record(payload=f32(1, 2), dtype=9) + record(b"b", (1,), f32(3)), "bad_header"),
        (
            header(count=2) + record(payload=f32(1, 2), dtype=F16) + record(b"b", (1,), f32(3)),
            "dtype_mismatch",
        ),
        (header(count=2) + record(b"w", (1, 2), f32(1, 2)) + record(b"b", (1,), f32(3)), "shape_mismatch"),
        (header(count=2) + record(b"w", (3,), f32(1, 2, 3)) + record(b"b", (1,), f32(3)), "shape_mismatch"),
        (header(count=2) + record(payload=f32(1, 2), length=9) + record(b"b", (1,), f32(3)), "payload_size"),
        (
            header(count=2) + record(payload=f32(1, 2), length=2**64 - 1) + record(b"b", (1,), f32(3)),
            "payload_size",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_records_that_do_not_match_the_declaration_are_rejected(data: bytes, code: str) -> None:
    assert rejects(data, TWO) == code


def test_a_record_for_the_wrong_shape_is_rejected_whatever_the_sender_claims() -> None:
    data = encode({"w": torch.ones(5, 4)}, CodecConfig("int8"))
    assert rejects(data, {"w": TensorSpec((4, 5))}) == "shape_mismatch"
    assert rejects(data, {"w": TensorSpec((5, 4), "bfloat16")}) == "dtype_mismatch"


def test_a_huge_declared_shape_is_rejected_before_any_payload_is_read() -> None:
    # 2**64 elements and no payload at all: the shape check fires first, so nothing is allocated.
    huge = header() + record(b"w", (2**32 - 1, 2**32 - 1), b"", length=2**64 - 1)
    assert rejects(huge) == "shape_mismatch"


def test_a_huge_expected_shape_with_a_short_frame_is_truncated_not_allocated() -> None:
    spec = {"w": TensorSpec((100_000, 100_000))}  # 40 GB as float32
    data = header(INT8, struct.pack("<I", 256)) + record(b"w", (100_000, 100_000), b"", length=10**10 + 4 * 39062500)
    assert rejects(data, spec) == "truncated"


# --- payload values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (header(INT8, struct.pack("<I", 2)) + record(payload=f32(math.nan) + bytes(2)), "non_finite_scale"),
        (header(INT8, struct.pack("<I", 2)) + record(payload=f32(math.inf) + bytes(2)), "non_finite_scale"),
        (header(INT8, struct.pack("<I", 2)) + record(payload=f32(-1.0) + bytes(2)), "negative_scale"),
        (
            header(INT8, struct.pack("<I", 2)) + record(payload=f32(1.0) + bytes([0x80, 0])),
            "value_out_of_range",
        ),
        (
            header(INT8, struct.pack("<I", 2)) + record(payload=f32(3e38) + bytes([127, 0])),
            "non_finite_value",
        ),
        (
            header(TOPK, struct.pack("<d", 0.5)) + record(payload=struct.pack("<IfIb", 1, math.nan, 0, 1)),
            "non_finite_scale",
        ),
        (
            header(TOPK, struct.pack("<d", 0.5)) + record(payload=struct.pack("<IfIb", 1, 1.0, 2, 1)),
            "index_out_of_range",
        ),
        (
            header(TOPK, struct.pack("<d", 0.5)) + record(payload=struct.pack("<IfIb", 2, 1.0, 0, 1)),
            "bad_payload",
        ),
        (
            header(TOPK, struct.pack("<d", 1.0)) + record(payload=struct.pack("<If2I2b", 2, 1.0, 1, 1, 1, 1)),
            "bad_index",
        ),
        (
            header(TOPK, struct.pack("<d", 1.0)) + record(payload=struct.pack("<If2I2b", 2, 1.0, 1, 0, 1, 1)),
            "bad_index",
        ),
        (
            header(DCT, struct.pack("<HH", 2, 1)) + record(payload=f32(math.nan) + bytes([0, 1])),
            "non_finite_scale",
        ),
        (
            header(DCT, struct.pack("<HH", 2, 1)) + record(payload=f32(1.0) + bytes([2, 1])),
            "index_out_of_range",
        ),
        (header(DCT, struct.pack("<HH", 2, 2)) + record(payload=f32(1.0) + bytes([1, 0, 1, 1])), "bad_index"),
        (
            header(DCT, struct.pack("<HH", 2, 1)) + record(payload=f32(3e38) + bytes([0, 127])),
            "non_finite_value",
        ),
        (header(INT4, struct.pack("<I", 2)) + record(payload=f32(1.0) + bytes([0x08])), "value_out_of_range"),
        (header(INT4, struct.pack("<I", 2)) + record(payload=f32(-1.0) + bytes([0x88])), "negative_scale"),
        (header(INT2, struct.pack("<I", 2)) + record(payload=f32(math.nan) + bytes([0x0F])), "non_finite_scale"),
        (header(INT2, struct.pack("<I", 2)) + record(payload=f32(1.0) + bytes([0x4F])), "bad_payload"),
        (header(SIGN1, struct.pack("<I", 2)) + record(payload=f32(1.0) + bytes([0x07])), "bad_payload"),
        (header(INT4, struct.pack("<I", 2)) + record(payload=f32(3e38) + bytes([0xFF])), "non_finite_value"),
        (header() + record(payload=f32(1.0, math.nan)), "non_finite_value"),
        (header(FP16) + record(payload=struct.pack("<2H", 0x3C00, 0x7C00)), "non_finite_value"),
        (header(BF16) + record(payload=struct.pack("<2H", 0x3F80, 0x7FC0)), "non_finite_value"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_payload_values_a_valid_encoder_never_writes_are_rejected(data: bytes, code: str) -> None:
    assert rejects(data) == code


def test_dct_indices_above_256_use_uint16_and_are_range_checked() -> None:
    spec = {"w": TensorSpec((300,))}
    good = header(DCT, struct.pack("<HH", 300, 1)) + record(b"w", (300,), f32(1.0) + struct.pack("<Hb", 299, 1))
    assert decode(good, spec)["w"].abs().max() > 0
    bad = header(DCT, struct.pack("<HH", 300, 1)) + record(b"w", (300,), f32(1.0) + struct.pack("<Hb", 300, 1))
    assert rejects(bad, spec) == "index_out_of_range"


def test_values_beyond_float16_are_rejected_when_the_unit_expects_float16() -> None:
    data = header(FP32) + record(payload=f32(1.0, 70000.0), dtype=F16)
    assert rejects(data, {"w": TensorSpec((2,), "float16")}) == "non_finite_value"


# --- fuzzing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CODEC_NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_frames_raise_codec_error_or_decode_to_finite_expected_shapes(name: str, data: st.DataObject) -> None:
    frame, specs = _small_frame(name)
    corrupted = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(frame) - 1))
        corrupted[at] = data.draw(st.integers(0, 255))
    try:
        out = decode(bytes(corrupted), specs)
    except CodecError:
        return
    for key, spec in specs.items():
        assert out[key].shape == spec.shape and out[key].dtype == torch.float32
        assert bool(torch.isfinite(out[key]).all())


@settings(max_examples=60, deadline=None)
@given(blob=st.binary(max_size=200))
def test_random_bytes_raise_codec_error(blob: bytes) -> None:
    with pytest.raises(CodecError):
        decode(blob, W2)
    with pytest.raises(CodecError):
        decode(b"CWTF\x01\x00" + blob, W2)
