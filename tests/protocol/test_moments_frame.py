"""Moments frames: the records of a factored second moment, and hostile frames refused."""

from __future__ import annotations

import pytest
import torch

from protocol.codecs import CodecConfig, CodecError, encode
from protocol.moments import decode_moments, encode_moments, moment_specs, moments_size

SHAPES = {"embed.weight": (10, 4), "norm.weight": (4,), "conv": (3, 2, 5), "scalar": ()}


def _records(fill: float = 1.0) -> dict[str, torch.Tensor]:
    return {name: torch.full(spec.shape, fill) for name, spec in moment_specs(SHAPES).items()}


def test_records_are_rows_and_columns_of_matrices_and_whole_vectors() -> None:
    specs = moment_specs(SHAPES)
    assert {name: spec.shape for name, spec in specs.items()} == {
        "embed.weight:rows": (10,),
        "embed.weight:cols": (4,),
        "norm.weight": (4,),
        "conv:rows": (3,),
        "conv:cols": (10,),
        "scalar": (1,),
    }


def test_values_above_what_clipped_gradients_make_are_refused() -> None:
    from protocol.moments import moment_bound

    assert moment_bound(0.0) == float("inf") and moment_bound(2.0) > 4.0
    frame = encode_moments(_records(4.0))
    assert decode_moments(frame, SHAPES, most=moment_bound(2.0))["scalar"].item() == 4.0
    with pytest.raises(CodecError) as caught:
        decode_moments(encode_moments(_records(4.5)), SHAPES, most=moment_bound(2.0))
    assert caught.value.code == "implausible_moment"


def test_a_frame_round_trips_at_its_exact_size() -> None:
    records = {name: torch.rand(spec.shape) for name, spec in moment_specs(SHAPES).items()}
    frame = encode_moments(records)
    assert len(frame) == moments_size(SHAPES)
    back = decode_moments(frame, SHAPES)
    # bf16: 8 significant bits, rounded to nearest.
    assert all(torch.equal(back[name], records[name].bfloat16().float()) for name in records)
    assert all(torch.allclose(back[name], records[name], rtol=2**-8, atol=0) for name in records)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (lambda: encode_moments({**_records(), "norm.weight": torch.full((4,), -1.0)}), "negative_moment"),
        # The last record is the scalar's one bf16 value: made a NaN.
        (lambda: encode_moments(_records())[:-2] + b"\xc0\x7f", "non_finite_value"),
        (lambda: encode(_records(), CodecConfig.from_name("int8")), "config_mismatch"),
        (lambda: encode_moments({k: v for k, v in _records().items() if k != "scalar"}), "count_mismatch"),
        (lambda: encode_moments(_records())[:-3], "truncated"),
        (lambda: encode_moments(_records()) + b"\0", "oversized"),
        (lambda: encode(_records(), CodecConfig.from_name("fp32")), "oversized"),
        (lambda: encode(_records(), CodecConfig.from_name("fp16")), "config_mismatch"),
    ],
)
def test_hostile_frames_are_refused_with_a_code(frame, code: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CodecError) as caught:
        decode_moments(frame(), SHAPES)
    assert caught.value.code == code
