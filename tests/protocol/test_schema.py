"""The schema validator, specified on small dataclasses of its own.

test_messages.py covers the real messages; here each rule of the validator is pinned down once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import pytest

from protocol.errors import ErrorCode, ProtocolError
from protocol.schema import FieldError, Rule, TextFormat, fields_of, from_wire, spec, to_wire

HEX = TextFormat(r"[0-9a-f]+", "lowercase hex")


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, slots=True)
class Inner:
    n: int = field(metadata=spec("A small number.", ge=0, le=10))


@dataclass(frozen=True, slots=True)
class Sample:
    count: int = field(metadata=spec("Count.", ge=0, le=100))
    ratio: float = field(metadata=spec("Ratio.", gt=0.0, lt=1.0))
    label: str = field(metadata=spec("Label.", min_len=1, max_len=5, printable=True))
    digest: str = field(metadata=spec("Digest.", max_len=8, pattern=HEX))
    blob: bytes = field(metadata=spec("Blob.", max_len=4))
    flag: bool = field(metadata=spec("Flag."))
    choice: Literal["a", "b"] = field(metadata=spec("Choice."))
    color: Color = field(metadata=spec("Color."))
    weights: tuple[float, ...] = field(metadata=spec("Weights.", max_len=3, item=Rule(ge=0.0, le=1.0)))
    names: tuple[str, ...] = field(metadata=spec("Names.", max_len=3, unique=True, item=Rule(max_len=4)))
    table: Mapping[str, tuple[int, ...]] = field(
        metadata=spec(
            "Table.",
            max_len=2,
            key=Rule(min_len=1, max_len=6, pattern=HEX),
            value=Rule(max_len=2, item=Rule(ge=1, le=9)),
        )
    )
    mixed: Mapping[str, str | int | float] = field(
        metadata=spec("Mixed.", max_len=4, key=Rule(max_len=8), value=Rule(ge=-5, le=5, max_len=3))
    )
    inner: Inner = field(metadata=spec("Nested."))
    maybe: int | None = field(default=None, metadata=spec("Optional.", ge=0, le=3))

    def __post_init__(self) -> None:
        if self.flag and self.count > 50:
            raise FieldError("count", "must be at most 50 when flag is set")


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


def test_a_valid_map_builds_the_dataclass_with_python_types() -> None:
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
    specs = {s.name: s for s in fields_of(Sample)}
    assert list(specs)[:3] == ["count", "ratio", "label"]
    assert specs["count"].doc == "Count."
    assert specs["count"].rule.le == 100
    assert specs["count"].required and not specs["maybe"].required


def test_a_field_without_spec_is_a_declaration_error() -> None:
    @dataclass(frozen=True)
    class Bare:
        x: int

    with pytest.raises(TypeError, match=r"Bare\.x: declare the field with field\(metadata=spec"):
        fields_of(Bare)


@pytest.mark.parametrize(
    ("hint", "rule", "problem"),
    [
        (str, Rule(), "need max_len"),
        (bytes, Rule(), "need max_len"),
        (tuple[int, ...], Rule(item=Rule(ge=0, le=1)), "need max_len"),
        (tuple[int, ...], Rule(max_len=3), "needs a lower"),
        (int, Rule(ge=0), "needs a lower"),
        (float, Rule(le=1.0), "needs a lower"),
        (Mapping[str, int], Rule(max_len=3, value=Rule(ge=0, le=1)), "need max_len"),
        (Mapping[int, int], Rule(max_len=3), "map keys must be str"),
        (tuple[int, int], Rule(max_len=2), "use tuple"),
        (set[int], Rule(), "cannot validate"),
        (int | list[int], Rule(ge=0, le=1), "unions may only mix scalar types"),
    ],
)
def test_an_unbounded_or_unsupported_field_is_a_declaration_error(hint: Any, rule: Rule, problem: str) -> None:
    @dataclass(frozen=True)
    class Loose:
        x: Any = field(metadata={"doc": "x", "rule": rule})

    Loose.__annotations__["x"] = hint
    with pytest.raises(TypeError, match=problem):
        fields_of(Loose)


def test_field_error_is_a_value_error_for_direct_construction() -> None:
    sample = from_wire(Sample, GOOD, path="sample")
    with pytest.raises(ValueError, match="count: must be at most 50"):
        dataclasses.replace(sample, flag=True, count=60)
