"""The field rules and how refusals are worded, specified on small structs of their own.

test_messages.py covers the real messages; here each rule is pinned down once: the bounds msgspec
checks (as `Reader` words them), the rules field_rules adds, and what `check_declared` refuses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgpack
import msgspec
import msgspec.inspect as mi
import pytest
from msgspec import Meta

from protocol.errors import ErrorCode, ProtocolError
from protocol.field_rules import PRINTABLE, UNIQUE, FieldError, Reader, TextFormat, check_declared

HEX = TextFormat(r"[0-9a-f]+", "lowercase hex")


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


class Inner(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    n: Annotated[int, Meta(ge=0, le=10, description="A small number.")]


class Sample(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    count: Annotated[int, Meta(ge=0, le=100, description="Count.")]
    ratio: Annotated[float, Meta(gt=0.0, lt=1.0, description="Ratio.")]
    label: Annotated[str, Meta(min_length=1, max_length=5, description="Label."), PRINTABLE]
    digest: Annotated[str, Meta(max_length=8, description="Digest."), HEX.meta]
    blob: Annotated[bytes, Meta(max_length=4, description="Blob.")]
    flag: Annotated[bool, Meta(description="Flag.")]
    choice: Annotated[Literal["a", "b"], Meta(description="Choice.")]
    color: Annotated[Color, Meta(description="Color.")]
    weights: Annotated[tuple[Annotated[float, Meta(ge=0.0, le=1.0)], ...], Meta(max_length=3, description="Weights.")]
    names: Annotated[tuple[Annotated[str, Meta(max_length=4)], ...], Meta(max_length=3, description="Names."), UNIQUE]
    table: Annotated[
        Mapping[
            Annotated[str, Meta(min_length=1, max_length=6), HEX.meta],
            Annotated[tuple[Annotated[int, Meta(ge=1, le=9)], ...], Meta(max_length=2)],
        ],
        Meta(max_length=2, description="Table."),
    ]
    mixed: Annotated[
        Mapping[
            Annotated[str, Meta(max_length=8)],
            Annotated[str, Meta(max_length=3)]
            | Annotated[int, Meta(ge=-5, le=5)]
            | Annotated[float, Meta(ge=-5, le=5)],
        ],
        Meta(max_length=4, description="Mixed."),
    ]
    inner: Annotated[Inner, Meta(description="Nested.")]
    maybe: Annotated[Annotated[int, Meta(ge=0, le=3)] | None, Meta(description="Optional.")] = None

    def __post_init__(self) -> None:
        if self.flag and self.count > 50:
            raise FieldError("count", "must be at most 50 when flag is set")


def from_wire(cls: type[Any], data: object, *, path: str) -> Any:
    """Read `data`, packed as MessagePack, as a `cls`."""
    return Reader(cls).read(msgpack.packb(data), path=path)


def to_wire(value: msgspec.Struct) -> object:
    """`value` as a peer unpacks it: maps, arrays, scalars and bytes."""
    return msgpack.unpackb(msgpack.packb(msgspec.to_builtins(value, builtin_types=(bytes,))))


def fields_of(cls: type[Any]) -> dict[str, mi.Field]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return {field.name: field for field in info.fields}


GOOD: dict[str, Any] = {
    "count": 7,
    "ratio": 0.5,
    "label": "hi",
    "digest": "beef",
    "blob": b"\x00\x01",
    "flag": False,
    "choice": "a",
    "color": "red",
    "weights": [0.0, 1.0],
    "names": ["x", "y"],
    "table": {"ab": [1, 2]},
    "mixed": {"s": "abc", "i": -5, "f": 2.5},
    "inner": {"n": 3},
    "maybe": 1,
}


def with_(**changes: object) -> dict[str, Any]:
    return {**GOOD, **changes}


def refused(data: object) -> str:
    with pytest.raises(ProtocolError) as caught:
        from_wire(Sample, data, path="sample")
    assert caught.value.code is ErrorCode.SCHEMA_VIOLATION
    return caught.value.message


def test_a_valid_map_builds_the_struct_with_python_types() -> None:
    sample = from_wire(Sample, GOOD, path="sample")
    assert sample.color is Color.RED
    assert sample.weights == (0.0, 1.0) and isinstance(sample.weights, tuple)
    assert sample.table == {"ab": (1, 2)}
    assert sample.inner == Inner(3)


def test_to_wire_inverts_from_wire() -> None:
    sample = from_wire(Sample, GOOD, path="sample")
    assert to_wire(sample) == GOOD
    assert from_wire(Sample, to_wire(sample), path="sample") == sample


def test_an_omitted_field_with_a_default_takes_the_default() -> None:
    data = dict(GOOD)
    del data["maybe"]
    assert from_wire(Sample, data, path="sample").maybe is None


def test_a_missing_required_field_is_named() -> None:
    data = dict(GOOD)
    del data["label"]
    assert refused(data) == "sample.label: missing required field"


def test_an_unknown_field_is_refused_and_the_known_ones_listed() -> None:
    message = refused(with_(colour="red"))
    assert message.startswith("sample.colour: unknown field")
    assert "count, ratio, label" in message


def test_a_non_identifier_unknown_key_is_shown_quoted() -> None:
    assert refused(with_(**{"a b": 1})).startswith("sample['a b']: unknown field")


def test_a_non_map_is_refused() -> None:
    assert refused([1, 2]) == "sample: expected a map, got an array"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"count": True}, "sample.count: expected an integer, got a bool"),
        ({"count": 7.0}, "sample.count: expected an integer, got a float"),
        ({"count": "7"}, "sample.count: expected an integer, got a string"),
        ({"count": -1}, "sample.count: must be >= 0, got -1"),
        ({"count": 101}, "sample.count: must be <= 100, got 101"),
        ({"ratio": 0.0}, "sample.ratio: must be > 0, got 0.0"),
        ({"ratio": 1.0}, "sample.ratio: must be < 1, got 1.0"),
        ({"ratio": math.nan}, "sample.ratio: expected a finite float, got nan"),
        ({"ratio": math.inf}, "sample.ratio: expected a finite float, got inf"),
        ({"ratio": False}, "sample.ratio: expected a finite float, got a bool"),
        ({"label": ""}, "sample.label: must hold at least 1 characters, got 0"),
        ({"label": "toolong"}, "sample.label: must hold at most 5 characters, got 7"),
        ({"label": "a\nb"}, "sample.label: must not contain control or invisible characters"),
        ({"label": b"hi"}, "sample.label: expected a string, got bytes"),
        ({"digest": "BEEF"}, "sample.digest: expected lowercase hex, got 'BEEF'"),
        ({"blob": b"12345"}, "sample.blob: must hold at most 4 bytes, got 5"),
        ({"blob": "ab"}, "sample.blob: expected bytes (MessagePack bin), got a string"),
        ({"flag": 1}, "sample.flag: expected a bool, got an integer"),
        ({"choice": "c"}, "sample.choice: expected one of 'a', 'b', got 'c'"),
        ({"color": "green"}, "sample.color: 'green' is not a known Color"),
        ({"color": 1}, "sample.color: expected a Color string, got an integer"),
        ({"weights": [0.5, math.nan]}, "sample.weights[1]: expected a finite float, got nan"),
        ({"weights": [0.1, 0.2, 0.3, 0.4]}, "sample.weights: must hold at most 3 items, got 4"),
        ({"weights": {"a": 1}}, "sample.weights: expected an array, got a map"),
        ({"names": ["x", "x"]}, "sample.names[1]: duplicate item 'x'"),
        ({"names": ["x", "toolong"]}, "sample.names[1]: must hold at most 4 characters"),
        ({"table": {"zz": [1]}}, "sample.table['zz']: expected lowercase hex"),
        ({"table": {"ab": [1, 0]}}, "sample.table['ab'][1]: must be >= 1, got 0"),
        ({"table": {"a": [1], "b": [1], "c": [1]}}, "sample.table: must hold at most 2 entries, got 3"),
        ({"mixed": {"s": "abcd"}}, "sample.mixed['s']: must hold at most 3 characters"),
        ({"mixed": {"i": 6}}, "sample.mixed['i']: must be <= 5, got 6"),
        ({"mixed": {"b": True}}, "sample.mixed['b']: expected str or int or float, got a bool"),
        ({"mixed": {"n": None}}, "sample.mixed['n']: expected str or int or float, got nil"),
        ({"inner": {"n": 11}}, "sample.inner.n: must be <= 10, got 11"),
        ({"inner": {"n": 1, "m": 2}}, "sample.inner.m: unknown field"),
        ({"inner": None}, "sample.inner: expected a map, got nil"),
        ({"maybe": 4}, "sample.maybe: must be <= 3, got 4"),
        ({"flag": True, "count": 60}, "sample.count: must be at most 50 when flag is set"),
    ],
)
def test_each_rule_refuses_with_the_field_path(changes: dict[str, object], expected: str) -> None:
    assert refused(with_(**changes)).startswith(expected)


def test_a_float_field_accepts_an_integer_as_javascript_encoders_write_one() -> None:
    sample = from_wire(Sample, with_(weights=[1, 0]), path="sample")
    assert sample.weights == (1.0, 0.0)
    assert all(type(w) is float for w in sample.weights)


def test_an_optional_field_accepts_nil() -> None:
    assert from_wire(Sample, with_(maybe=None), path="sample").maybe is None


def test_a_scalar_union_keeps_the_type_it_was_sent_as() -> None:
    sample = from_wire(Sample, GOOD, path="sample")
    assert [type(v) for v in sample.mixed.values()] == [str, int, float]


def test_long_values_are_shortened_in_messages() -> None:
    message = refused(with_(digest="Z" * 8))
    assert "'ZZZZZZZZ'" in message
    message = refused(with_(choice="q" * 500))
    assert len(message) < 200


def test_fields_of_reports_docs_bounds_and_defaults() -> None:
    specs = fields_of(Sample)
    assert list(specs)[:3] == ["count", "ratio", "label"]
    count = specs["count"].type
    assert isinstance(count, mi.Metadata) and isinstance(count.type, mi.IntType)
    assert (count.extra_json_schema or {})["description"] == "Count."
    assert count.type.le == 100
    assert specs["count"].required and not specs["maybe"].required


def test_a_field_without_spec_is_a_declaration_error() -> None:
    class Bare(msgspec.Struct, frozen=True):
        x: int

    with pytest.raises(TypeError, match=r"Bare\.x: describe the field with Annotated\[\.\.\., Meta\(description="):
        check_declared(Bare)


@pytest.mark.parametrize(
    ("hint", "rule", "problem"),
    [
        (str, Meta(), "need max_len"),
        (bytes, Meta(), "need max_len"),
        (tuple[Annotated[int, Meta(ge=0, le=1)], ...], Meta(), "need max_len"),
        (tuple[int, ...], Meta(max_length=3), "needs a lower"),
        (int, Meta(ge=0), "needs a lower"),
        (float, Meta(le=1.0), "needs a lower"),
        (Mapping[str, Annotated[int, Meta(ge=0, le=1)]], Meta(), "need max_len"),
        (Mapping[int, int], Meta(max_length=3), "map keys must be str"),
        (tuple[int, int], Meta(), "use tuple"),
        (set[int], Meta(), "cannot validate"),
        (Annotated[int, Meta(ge=0, le=1)] | list[int], Meta(), "unions may only mix scalar types"),
    ],
)
def test_an_unbounded_or_unsupported_field_is_a_declaration_error(hint: Any, rule: Meta, problem: str) -> None:
    loose = msgspec.defstruct("Loose", [("x", Annotated[hint, rule, Meta(description="x")])])
    with pytest.raises(TypeError, match=problem):
        check_declared(loose)


def test_a_pattern_needs_a_text_format_to_name_it() -> None:
    loose = msgspec.defstruct("Loose", [("x", Annotated[str, Meta(max_length=3, pattern="a", description="x")])])
    with pytest.raises(TypeError, match="TextFormat"):
        check_declared(loose)


def test_a_declared_struct_passes() -> None:
    check_declared(Sample)


def test_field_error_is_a_value_error_for_direct_construction() -> None:
    sample = from_wire(Sample, GOOD, path="sample")
    with pytest.raises(ValueError, match="count: must be at most 50"):
        msgspec.structs.replace(sample, flag=True, count=60)


def test_a_text_format_matches_the_whole_string() -> None:
    assert refused(with_(digest="beef\n")).startswith("sample.digest: expected lowercase hex")
    assert refused(with_(digest="xbeef")).startswith("sample.digest: expected lowercase hex")
    assert HEX.matches("beef") and not HEX.matches("beef\n")


def test_a_refusal_deep_in_a_map_names_the_key_msgspec_leaves_out() -> None:
    table = {"aa": [1], "ab": [1, 2], "ac": [3, 10]}
    assert refused(with_(table=table)).startswith("sample.table: must hold at most 2 entries")
    assert refused(with_(table={"aa": [1], "ac": [3, 10]})) == "sample.table['ac'][1]: must be <= 9, got 10"


def test_bytes_that_are_not_messagepack_are_malformed() -> None:
    with pytest.raises(ProtocolError) as caught:
        Reader(Sample).read(b"\xc1", path="sample")
    assert caught.value.code is ErrorCode.MALFORMED_FRAME


def test_wording_a_refusal_asks_msgspec_about_the_schema_once_not_per_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by `commonweights bench fuzz`: msgspec.inspect.type_info takes milliseconds, and asking it
    # again for every refused frame made a 100-byte schema_violation cost the gateway 3 ms (0.3 s at worst).
    from protocol.messages import decode

    frame = msgpack.packb({"type": "progress", "v": 5, "unit_id": "u", "lease_id": "l", "step": "x",
                           "steps_total": 1, "loss": None, "tokens": 0, "phase": "training", "extra": 1})  # fmt: skip
    with pytest.raises(ProtocolError):
        decode(frame, direction="to_server")
    calls: list[object] = []
    real = mi.type_info

    def counted(t: Any) -> mi.Type:
        calls.append(t)
        return real(t)

    monkeypatch.setattr(mi, "type_info", counted)
    for _ in range(3):
        with pytest.raises(ProtocolError) as caught:
            decode(frame, direction="to_server")
        assert caught.value.code is ErrorCode.SCHEMA_VIOLATION and "progress.step" in caught.value.message
    assert calls == []
