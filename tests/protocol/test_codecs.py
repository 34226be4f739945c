"""Tensor codecs: round trips, stated error bounds, sizes and settings."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import protocol.codecs
from protocol.codecs import (
    CODEC_NAMES,
    CodecConfig,
    CodecError,
    TensorSpec,
    bounds,
    dct,
    decode,
    encode,
    encoded_size_bound,
    error_bound,
    frame,
    frame_config,
    int8_block,
    lowbit,
    quantize,
    raw,
    topk,
)

PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Small parameters so that short tensors still span several blocks and chunks; dct_chunk 300 takes
# the uint16 index path.
CONFIGS = st.one_of(
    st.just(CodecConfig("fp32")),
    st.just(CodecConfig("fp16")),
    st.just(CodecConfig("bf16")),
    st.builds(CodecConfig, st.just("int8"), block_size=st.sampled_from([1, 3, 16, 256])),
    st.builds(CodecConfig, st.just("topk"), topk_fraction=st.sampled_from([0.01, 0.1, 0.37, 1.0])),
    st.sampled_from([(1, 1), (4, 2), (8, 3), (64, 4), (300, 5)]).map(
        lambda ck: CodecConfig("dct", dct_chunk=ck[0], dct_topk=ck[1])
    ),
    st.builds(CodecConfig, st.sampled_from(["int4", "int2", "sign1"]), block_size=st.sampled_from([1, 3, 16, 256])),
)
NAMES = st.text(st.characters(codec="utf-8"), min_size=1, max_size=10)
SHAPES = st.lists(st.integers(0, 11), max_size=3).map(tuple)


@st.composite
def float32_tensors(draw: st.DrawFn, max_abs: float) -> torch.Tensor:
    shape = draw(SHAPES)
    elements = st.floats(-max_abs, max_abs, width=32, allow_nan=False)
    return torch.from_numpy(draw(arrays(np.float32, shape, elements=elements)).copy())


def _specs(tensors: dict[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {name: TensorSpec.of(t) for name, t in tensors.items()}


def _max_error(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() - y.double()).abs().max()) if x.numel() else 0.0


def _round_trip(tensors: dict[str, torch.Tensor], config: CodecConfig) -> dict[str, torch.Tensor]:
    return decode(encode(tensors, config), _specs(tensors))


@pytest.mark.parametrize("name", CODEC_NAMES)
@PROPERTY
@given(data=st.data())
def test_round_trip_has_expected_shapes_and_stays_within_the_stated_bound(name: str, data: st.DataObject) -> None:
    config = data.draw(CONFIGS.filter(lambda c: c.name == name))
    max_abs = 65504.0 if name == "fp16" else 2.0**100
    tensors = data.draw(st.dictionaries(NAMES, float32_tensors(max_abs), min_size=1, max_size=3))
    out = _round_trip(tensors, config)
    assert list(out) == list(tensors)
    for key, x in tensors.items():
        y = out[key]
        assert y.shape == x.shape and y.dtype == torch.float32 and y.is_contiguous()
        assert _max_error(x, y) <= error_bound(x, config)


@PROPERTY
@given(config=CONFIGS, x=float32_tensors(65504.0))
def test_encoded_size_equals_the_size_bound(config: CodecConfig, x: torch.Tensor) -> None:
    tensors = {"w": x, "b": x.reshape(-1)[:3]}
    assert len(encode(tensors, config)) == encoded_size_bound(_specs(tensors), config)


@PROPERTY
@given(
    config=CONFIGS,
    dtype=st.sampled_from([torch.float64, torch.float16, torch.bfloat16]),
    x=float32_tensors(1000.0),
)
def test_fp16_bf16_and_fp64_inputs_decode_to_their_wire_dtype_within_the_bound(
    config: CodecConfig, dtype: torch.dtype, x: torch.Tensor
) -> None:
    source = x.to(dtype)
    y = _round_trip({"w": source}, config)["w"]
    assert y.dtype == (torch.float32 if dtype == torch.float64 else dtype)
    assert _max_error(source, y) <= error_bound(source, config)


def test_fp32_round_trip_is_bit_exact() -> None:
    x = torch.tensor([0.0, -0.0, 1e-45, -3.4028235e38, 1.0 / 3.0, 7.0])
    y = _round_trip({"x": x}, CodecConfig("fp32"))["x"]
    assert x.numpy().tobytes() == y.numpy().tobytes()
    assert error_bound(x, CodecConfig("fp32")) == 0.0


def test_fp16_refuses_values_beyond_its_range_instead_of_clamping() -> None:
    with pytest.raises(CodecError) as err:
        encode({"w": torch.tensor([1.0, 70000.0])}, CodecConfig("fp16"))
    assert err.value.code == "out_of_range"
    assert "bf16" in str(err.value)


def test_fp16_bound_is_relative_for_normal_values() -> None:
    x = torch.tensor([1000.1, -0.3])
    assert error_bound(x, CodecConfig("fp16")) == pytest.approx(1000.1 * 2**-11 + 2**-25, rel=1e-6)


def test_exactly_representable_values_have_a_zero_bound_in_fp16_and_bf16() -> None:
    x = torch.tensor([1.0, -0.5, 3.0])
    for name in ("fp16", "bf16"):
        assert error_bound(x, CodecConfig(name)) == 0.0
        assert torch.equal(_round_trip({"x": x}, CodecConfig(name))["x"], x)


def test_int8_bound_is_half_the_largest_block_scale() -> None:
    x = torch.tensor([0.5] * 255 + [-127.0])
    assert error_bound(x, CodecConfig("int8")) == pytest.approx(0.5, rel=1e-3)


def test_int8_chunked_encoder_matches_division_across_chunks_and_zeroes_subnormal_blocks() -> None:
    # 2,100 blocks of 256 span three of the encoder's 1 MiB chunks and end in a short block.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2_100 * 256 - 17, generator=gen) * torch.exp(torch.randn(1, generator=gen))
    x[256:512] = 1e-40  # a block whose scale is subnormal: its reciprocal overflows
    x[512:768] = 0.0
    config = CodecConfig("int8")
    spec = {"w": TensorSpec.of(x)}
    data = encode({"w": x}, config)
    out = decode(data, spec, max_bytes=len(data))["w"]
    assert float((out - x).abs().max()) <= error_bound(x, config)
    assert float(out[256:768].abs().max()) == 0.0
    # Against plain division by the block scale, values differ by at most one step, and rarely.
    blocks = torch.nn.functional.pad(x, (0, 17)).view(-1, 256)
    scale = blocks.abs().amax(dim=1, keepdim=True) / 127
    reference = (torch.round(blocks / torch.where(scale > 0, scale, 1.0)) * scale).view(-1)[: x.numel()]
    steps = ((out - reference).abs() / scale.expand(-1, 256).reshape(-1)[: x.numel()].clamp_min(1e-30))[1024:]
    assert float(steps.max()) <= 1.0 + 1e-3 and float((steps > 0.5).float().mean()) < 1e-4


def test_topk_keeps_exactly_the_largest_magnitudes() -> None:
    x = torch.arange(200, dtype=torch.float32) * torch.tensor([1.0, -1.0]).repeat(100)
    y = _round_trip({"x": x}, CodecConfig("topk", topk_fraction=0.05))["x"]
    assert y.nonzero().flatten().tolist() == list(range(190, 200))
    assert error_bound(x, CodecConfig("topk", topk_fraction=0.05)) >= 189.0


def test_topk_keeps_at_least_one_element() -> None:
    assert topk.kept_count(10, 0.01) == 1
    assert topk.kept_count(0, 0.5) == 0
    assert topk.kept_count(7, 1.0) == 7
    y = _round_trip({"x": torch.tensor([0.1, -4.0, 2.0])}, CodecConfig("topk"))["x"]
    assert y.tolist() == [0.0, -4.0, 0.0]


def test_dct_is_exact_up_to_quantization_when_every_coefficient_is_kept() -> None:
    x = torch.randn(100, generator=torch.Generator().manual_seed(1))
    config = CodecConfig("dct", dct_chunk=8, dct_topk=8)
    y = _round_trip({"x": x}, config)["x"]
    assert _max_error(x, y) <= error_bound(x, config) < 0.05


def test_dct_matrix_is_orthonormal() -> None:
    for size in (1, 7, 64, 300):
        d = dct.dct_matrix(size).double()
        assert torch.allclose(d @ d.T, torch.eye(size, dtype=torch.float64), atol=1e-6)


def test_dct_concentrates_smooth_signals_into_few_coefficients() -> None:
    x = torch.sin(torch.linspace(0, 3, 4096))
    config = CodecConfig("dct")
    rel = float((x - _round_trip({"x": x}, config)["x"]).norm() / x.norm())
    assert rel < 0.05


def test_compression_ratios_match_the_codec_arithmetic() -> None:
    x = {"w": torch.randn(512, 512, generator=torch.Generator().manual_seed(0))}
    fp32 = len(encode(x, CodecConfig("fp32")))
    ratio = {name: fp32 / len(encode(x, CodecConfig(name))) for name in CODEC_NAMES}
    assert ratio["fp16"] == pytest.approx(2.0, rel=1e-3)
    assert ratio["bf16"] == pytest.approx(2.0, rel=1e-3)
    assert 3.8 < ratio["int8"] < 4.0  # one float32 scale per 256 values
    assert ratio["topk"] > 70  # 1% kept at 5 bytes each
    assert ratio["dct"] > 20  # 4 of 64 coefficients at 2 bytes, plus a scale per chunk
    assert 7.7 < ratio["int4"] < 8.0 and 15.0 < ratio["int2"] < 16.0 and 28.0 < ratio["sign1"] < 32.0


def test_low_bit_codecs_land_on_their_levels_with_the_stated_errors() -> None:
    x = torch.tensor([-7.0, -3.4, 0.0, 0.2, 3.6, 7.0])  # one block: max|x| = 7
    four = _round_trip({"x": x}, CodecConfig("int4"))["x"]
    assert four.tolist() == [-7.0, -3.0, 0.0, 0.0, 4.0, 7.0]  # steps of 7/7 = 1
    two = _round_trip({"x": x}, CodecConfig("int2"))["x"]
    third = 7 / 3
    assert two.tolist() == pytest.approx([-7.0, -third, third, third, third, 7.0])  # no zero level
    sign = _round_trip({"x": x}, CodecConfig("sign1"))["x"]
    mean = float(x.abs().mean())
    assert sign.tolist() == pytest.approx([-mean, -mean, mean, mean, mean, mean])
    assert error_bound(x, CodecConfig("sign1")) >= 7.0 - mean  # the largest value is far from the mean


def test_sign1_with_error_feedback_carries_what_it_drops_so_the_sum_converges() -> None:
    from training.error_feedback import ErrorFeedback

    generator = torch.Generator().manual_seed(3)
    target = torch.randn(4096, generator=generator)
    feedback, sent_total = ErrorFeedback(), torch.zeros(4096)
    for _ in range(64):  # the same update each time: the decoded ones must add up to it
        to_send = feedback.compensate({"x": target})
        decoded = _round_trip(to_send, CodecConfig("sign1"))
        feedback.remember(to_send, decoded)
        sent_total += decoded["x"]
    drift = float((sent_total / 64 - target).norm() / target.norm())
    assert drift < 0.1, f"the averaged decoded updates are {drift:.2f} away from the true one"


def test_empty_and_scalar_tensors_round_trip_with_every_codec() -> None:
    tensors = {"empty": torch.zeros(0, 5), "scalar": torch.tensor(2.5), "one": torch.tensor([-1.0])}
    for name in CODEC_NAMES:
        out = _round_trip(tensors, CodecConfig(name))
        assert out["empty"].shape == (0, 5) and out["scalar"].shape == ()
        assert abs(float(out["scalar"]) - 2.5) <= error_bound(tensors["scalar"], CodecConfig(name))


def test_decode_returns_tensors_in_the_expected_order_whatever_the_frame_order() -> None:
    data = encode({"a": torch.ones(2), "b": torch.zeros(3)}, CodecConfig("int8"))
    out = decode(data, {"b": TensorSpec((3,)), "a": TensorSpec((2,))})
    assert list(out) == ["b", "a"]


def test_decode_accepts_bytes_bytearray_and_memoryview() -> None:
    data = encode({"a": torch.ones(4)}, CodecConfig("bf16"))
    for view in (data, bytearray(data), memoryview(data)):
        assert torch.equal(decode(view, {"a": TensorSpec((4,))})["a"], torch.ones(4))


def test_encode_accepts_non_contiguous_and_grad_tracking_tensors() -> None:
    x = torch.randn(6, 4, requires_grad=True)
    out = _round_trip({"t": x.T}, CodecConfig("fp32"))["t"]
    assert torch.equal(out, x.detach().T)


def test_encode_refuses_nan_and_non_float_tensors() -> None:
    with pytest.raises(CodecError) as err:
        encode({"w": torch.tensor([1.0, math.nan])}, CodecConfig("int8"))
    assert err.value.code == "non_finite_input"
    with pytest.raises(CodecError) as err:
        encode({"w": torch.tensor([1, 2])}, CodecConfig("int8"))
    assert err.value.code == "bad_input"
    with pytest.raises(CodecError) as err:
        encode({"": torch.ones(1)}, CodecConfig("int8"))
    assert err.value.code == "bad_name"


def test_frame_config_reads_the_codec_settings_from_the_header() -> None:
    config = CodecConfig("dct", dct_chunk=32, dct_topk=2)
    assert frame_config(encode({"w": torch.ones(3)}, config)) == config


def test_decode_with_a_required_config_rejects_other_codecs() -> None:
    data = encode({"w": torch.ones(3)}, CodecConfig("int8", block_size=128))
    spec = {"w": TensorSpec((3,))}
    # Settings a codec does not use do not count.
    decode(data, spec, config=CodecConfig("int8", block_size=128, dct_chunk=16))
    with pytest.raises(CodecError) as err:
        decode(data, spec, config=CodecConfig("int8"))
    assert err.value.code == "config_mismatch"


# --- settings ---------------------------------------------------------------------------------


def test_config_from_name_gives_defaults_and_round_trips_through_json() -> None:
    for name in CODEC_NAMES:
        config = CodecConfig.from_name(name)
        assert config.name == name
        assert CodecConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"name": "zip"}, "unknown_codec"),
        ({"block_size": 0}, "bad_config"),
        ({"block_size": True}, "bad_config"),
        ({"dct_chunk": -4}, "bad_config"),
        ({"dct_chunk": 4096}, "bad_config"),
        ({"dct_chunk": 8, "dct_topk": 9}, "bad_config"),
        ({"dct_topk": 0}, "bad_config"),
        ({"topk_fraction": 0.0}, "bad_config"),
        ({"topk_fraction": 1.5}, "bad_config"),
        ({"topk_fraction": math.nan}, "bad_config"),
    ],
)
def test_config_rejects_invalid_settings(kwargs: dict[str, object], code: str) -> None:
    with pytest.raises(CodecError) as err:
        CodecConfig(**kwargs)  # type: ignore[arg-type]
    assert err.value.code == code


@pytest.mark.parametrize(
    "data",
    [{"name": "int8", "blocksize": 4}, {"name": 3}, {"block_size": "256"}, {"topk_fraction": "0.1"}],
)
def test_config_from_dict_rejects_unknown_keys_and_wrong_types(data: dict[str, object]) -> None:
    with pytest.raises(CodecError) as err:
        CodecConfig.from_dict(data)
    assert err.value.code == "bad_config"


def test_tensor_spec_validates_shape_and_dtype() -> None:
    assert TensorSpec([2, 3]).shape == (2, 3)  # type: ignore[arg-type]
    assert TensorSpec((2, 3)).numel == 6 and TensorSpec(()).numel == 1
    for bad in [(-1,), (2**32,), (1.5,)]:
        with pytest.raises(ValueError):
            TensorSpec(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TensorSpec((1,), "int8")


@pytest.mark.parametrize(
    "module", [protocol.codecs, frame, bounds, raw, int8_block, topk, dct, quantize, lowbit], ids=lambda m: m.__name__
)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)  # type: ignore[arg-type]
    assert result.failed == 0
