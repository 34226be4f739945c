"""The pre-scan over arrays of scalars: the run it passes over in one tight loop obeys every rule the
value-by-value walk does (found by `commonweights bench fuzz`: a 64 KiB frame of 65,536 small scalars
took 0.1 s to walk one by one)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode, ProtocolError
from protocol.frame_scan import scan
from protocol.limits import MAX_FRAME_VALUES


def refusal(frame: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        scan(frame)
    assert caught.value.code is ErrorCode.MALFORMED_FRAME
    return caught.value


def in_array(items: bytes, count: int) -> bytes:
    """A frame {"x": [items]} whose array says it holds `count` values."""
    return b"\x81\xa1x\xdd" + count.to_bytes(4, "big") + items


def test_an_array_of_exactly_the_most_values_passes_and_one_more_is_refused() -> None:
    allowed = MAX_FRAME_VALUES - 3  # the frame's map, its key and the array count too
    scan(in_array(b"\xc0" * allowed, allowed))
    err = refusal(in_array(b"\xc0" * (allowed + 1), allowed + 1))
    assert f"more than {MAX_FRAME_VALUES} values" in err.message


def test_an_array_that_declares_more_scalars_than_the_frame_holds_is_refused_without_walking_past_the_limit() -> None:
    err = refusal(in_array(b"\x01" * 10, 0xFFFF_FFFF))
    assert "ends in the middle" in err.message


def test_a_scalar_cut_short_at_the_end_of_the_frame_is_refused_naming_its_byte() -> None:
    frame = in_array(b"\x01\x02\xcd\x01", 3)  # a uint16 with one byte of two
    err = refusal(frame)
    assert err.message == f"The frame ends in the middle of the value at byte {len(frame) - 2}."


@pytest.mark.parametrize(
    "bad, words",
    [(b"\xd4\x01\x00", "extension types"), (b"\xc1", "0xc1"), (b"\xa2\xff\xfe", "not UTF-8")],
    ids=["extension", "never-used", "invalid-utf8"],
)
def test_what_follows_a_run_of_scalars_is_still_checked(bad: bytes, words: str) -> None:
    assert words in refusal(in_array(b"\x01" * 100 + bad + b"\x02" * 100, 201)).message


def test_a_map_after_a_run_of_scalars_still_refuses_a_duplicate_key() -> None:
    assert "appears twice" in refusal(in_array(b"\xc3\xcc\xff" + b"\x82\xa1k\x01\xa1k\x02", 3)).message


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(width=32),  # NaN and infinities too: they are still numbers to the scan
)
values = st.recursive(
    st.one_of(scalars, st.text(max_size=5), st.binary(max_size=5)),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=40,
)


@settings(deadline=None)
@given(st.lists(values, max_size=30), st.booleans())
def test_any_array_scans_as_one_walk_and_every_cut_of_it_is_refused(items: list[object], single: bool) -> None:
    frame = msgpack.packb({"x": items}, use_bin_type=True, use_single_float=single)
    scan(frame)
    for end in range(3, len(frame)):
        refusal(frame[:end])
