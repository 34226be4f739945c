"""What a message field may hold beyond its Python type, and how a refused field is worded.

Bounds are `msgspec.Meta` constraints in `Annotated` field types (`ge`, `le`, `min_length`,
`max_length`, `pattern`) and msgspec checks them while it decodes. This module holds the rest:

- `TextFormat`: a pattern with a name a person understands; `meta` anchors it at both ends.
- `PRINTABLE` and `UNIQUE`: rules msgspec cannot state (no control or invisible characters, no
  repeated array item), marked in `Meta.extra` and checked by `Reader` once msgspec has decoded.
- `FieldError`: what a struct's `__post_init__` raises when its fields disagree with each other.
- `check_declared`: every field is described and bounded, so no limit is forgotten.
- `Reader`: decodes, checks, and words every refusal as `ProtocolError(schema_violation)` naming
  the field: msgspec's ``Expected `float` >= 0.0 - at `$.metrics.losses[3]` `` becomes
  `submit.metrics.losses[3]: expected a finite float, got nan`.

    >>> class Point(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ...     x: Annotated[int, Meta(ge=0, le=10, description="Column.")]
    >>> reader = Reader(Point)
    >>> reader.read(msgspec.msgpack.encode({"x": 3}), path="point")
    Point(x=3)
    >>> reader.read(msgspec.msgpack.encode({"x": True}), path="point")
    Traceback (most recent call last):
    ...
    protocol.errors.ProtocolError: schema_violation: point.x: expected an integer, got a bool
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Annotated, Any, Final, Literal, NoReturn, Union, get_args, get_origin

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

from protocol.errors import ErrorCode, ProtocolError

Check = Callable[[Any, str], None]
Buffer = bytes | bytearray | memoryview

# What msgspec raises for bytes that are not MessagePack: before 0.23, invalid UTF-8 escaped as a
# UnicodeDecodeError rather than a DecodeError.
_NOT_MESSAGEPACK: Final = (msgspec.DecodeError, UnicodeDecodeError)

_SHOW_CHARS: Final = 40


@dataclass(frozen=True, slots=True)
class TextFormat:
    """A named string format: a regular expression that must match the whole string."""

    regex: str
    description: str

    @property
    def meta(self) -> Meta:
        """The constraint for an `Annotated` str: msgspec searches, so the pattern is anchored here."""
        return Meta(pattern=rf"\A(?:{self.regex})\Z", extra={"format": self})

    def matches(self, text: str) -> bool:
        return _compiled(self.regex).fullmatch(text) is not None


PRINTABLE: Final = Meta(extra={"printable": True})
"""On a str: no control or invisible characters (`str.isprintable`)."""

UNIQUE: Final = Meta(extra={"unique": True})
"""On an array: no item twice."""


class FieldError(ValueError):
    """Raised by a struct's `__post_init__` when fields disagree with each other.

    `field` is the path below the struct (`"recipe.seq_len"`); the reader prefixes the rest.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# --- Declarations ------------------------------------------------------------------------------


def check_declared(cls: type[msgspec.Struct]) -> None:
    """Raise `TypeError` unless every field of `cls`, and of the structs in it, is described and bounded.

    Every string, bytes, array and map needs `max_length`, every number a lower and an upper bound,
    every pattern a `TextFormat` (so a refusal can say what was expected).
    """
    _check_struct(mi.type_info(cls), set())  # type: ignore[arg-type]  # a struct's info is a StructType


def _check_struct(info: mi.StructType, seen: set[type]) -> None:
    if info.cls in seen:
        return
    seen.add(info.cls)
    for field in info.fields:
        where = f"{info.cls.__name__}.{field.name}"
        if not isinstance(field.type, mi.Metadata) or "description" not in (field.type.extra_json_schema or {}):
            raise TypeError(f"{where}: describe the field with Annotated[..., Meta(description=...)]")
        _check_type(field.type, where, seen)


def _check_type(t: mi.Type, where: str, seen: set[type]) -> None:
    t, extra = _unwrap(t)
    if isinstance(t, mi.IntType | mi.FloatType):
        if (t.ge is None and t.gt is None) or (t.le is None and t.lt is None):
            raise TypeError(f"{where}: a number needs a lower (ge/gt) and an upper (le/lt) bound")
    elif isinstance(t, mi.StrType | mi.BytesType | mi.VarTupleType | mi.DictType):
        if t.max_length is None:
            raise TypeError(f"{where}: strings, bytes, arrays and maps need max_length")
        if isinstance(t, mi.StrType) and t.pattern is not None and not isinstance(extra.get("format"), TextFormat):
            raise TypeError(f"{where}: give a pattern as a TextFormat's meta, so a refusal can name it")
        if isinstance(t, mi.VarTupleType):
            _check_type(t.item_type, f"{where}[]", seen)
        if isinstance(t, mi.DictType):
            if not isinstance(_unwrap(t.key_type)[0], mi.StrType):
                raise TypeError(f"{where}: map keys must be str")
            _check_type(t.key_type, f"{where}{{key}}", seen)
            _check_type(t.value_type, f"{where}{{}}", seen)
    elif isinstance(t, mi.TupleType):
        raise TypeError(f"{where}: use tuple[X, ...] for arrays")
    elif isinstance(t, mi.StructType):
        _check_struct(t, seen)
    elif isinstance(t, mi.UnionType):
        arms = [arm for arm in t.types if not isinstance(arm, mi.NoneType)]
        scalars = (mi.BoolType, mi.IntType, mi.FloatType, mi.StrType, mi.BytesType)
        if len(arms) > 1 and not all(isinstance(_unwrap(arm)[0], scalars) for arm in arms):
            raise TypeError(f"{where}: unions may only mix scalar types (and None)")
        for arm in arms:
            _check_type(arm, where, seen)
    elif not isinstance(t, mi.BoolType | mi.NoneType | mi.LiteralType | mi.EnumType):
        raise TypeError(f"{where}: the schema cannot validate {t!r}")


def _unwrap(t: mi.Type) -> tuple[mi.Type, dict[str, Any]]:
    extra: dict[str, Any] = {}
    while isinstance(t, mi.Metadata):
        extra.update(t.extra or {})
        t = t.type
    return t, extra


# --- Reading -----------------------------------------------------------------------------------


class Reader:
    """Decodes MessagePack into `type_` (a struct, or a tagged union of structs) and checks it.

    Every refusal is a `ProtocolError`: `schema_violation` naming the field's path, or
    `malformed_frame` for bytes that are not MessagePack. `hidden` names fields that travel but
    are not listed to a sender who got a field name wrong (the envelope's `v`).
    """

    def __init__(self, type_: Any, *, hidden: frozenset[str] = frozenset()) -> None:
        self._type = type_
        self._hidden = hidden
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(type_)
        self._check = _compile_checks(mi.type_info(type_), {})

    def read(self, data: Buffer, *, path: str) -> Any:
        """The value in `data`; `path` names it in errors (`"submit"` gives `"submit.metrics..."`)."""
        try:
            value = self._decoder.decode(data)
        except msgspec.ValidationError as err:
            raise self._explain(err, data, path) from None
        except _NOT_MESSAGEPACK as err:
            raise _malformed(err) from None
        if self._check is not None:
            self._check(value, path)
        return value

    def _explain(self, err: msgspec.ValidationError, data: Buffer, path: str) -> ProtocolError:
        try:
            raw = msgspec.msgpack.decode(data)
        except _NOT_MESSAGEPACK as bad:
            return _malformed(bad)
        try:
            message = _explain(err, self._type, raw, path, self._hidden)
        except Exception:  # whatever the frame holds, the sender gets a schema_violation naming the frame
            message = f"{path}: {_clip(str(err), 200)}"
        return ProtocolError(ErrorCode.SCHEMA_VIOLATION, message)


def _malformed(err: Exception) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED_FRAME, f"Not valid MessagePack: {_clip(str(err), 200)}")


# --- Rules msgspec cannot state: printable text, unique items -----------------------------------


def _compile_checks(t: mi.Type, structs: dict[type, Check | None]) -> Check | None:
    """A function checking PRINTABLE and UNIQUE wherever `t` has them; None where it has neither."""
    t, extra = _unwrap(t)
    if isinstance(t, mi.StrType):
        return _check_printable if extra.get("printable") else None
    if isinstance(t, mi.VarTupleType):
        return _compile_array_checks(_compile_checks(t.item_type, structs), unique=bool(extra.get("unique")))
    if isinstance(t, mi.DictType):
        return _compile_map_checks(_compile_checks(t.key_type, structs), _compile_checks(t.value_type, structs))
    if isinstance(t, mi.StructType):
        if t.cls not in structs:
            structs[t.cls] = None  # a struct that contains itself stops here
            structs[t.cls] = _compile_struct_checks(t, structs)
        return structs[t.cls]
    if isinstance(t, mi.UnionType):
        by_type = {_python_type(arm): arm_check for arm in t.types if (arm_check := _compile_checks(arm, structs))}
        return _compile_union_checks(by_type) if by_type else None
    return None


def _python_type(t: mi.Type) -> type:
    t, _ = _unwrap(t)
    if isinstance(t, mi.StructType):
        return t.cls
    kinds: dict[type[mi.Type], type] = {mi.StrType: str, mi.VarTupleType: tuple, mi.DictType: dict}
    return kinds.get(type(t), type(None))


def _check_printable(value: str, path: str) -> None:
    if not value.isprintable():
        _fail(path, f"must not contain control or invisible characters, got {_show(value)}")


def _compile_array_checks(check_item: Check | None, *, unique: bool) -> Check | None:
    if check_item is None and not unique:
        return None

    def check(value: tuple[Any, ...], path: str) -> None:
        if check_item is not None:
            for index, item in enumerate(value):
                check_item(item, f"{path}[{index}]")
        if unique and len(set(value)) != len(value):
            seen: set[object] = set()
            for index, item in enumerate(value):
                if item in seen:
                    _fail(f"{path}[{index}]", f"duplicate item {_show(item)}")
                seen.add(item)

    return check


def _compile_map_checks(check_key: Check | None, check_value: Check | None) -> Check | None:
    if check_key is None and check_value is None:
        return None

    def check(value: Mapping[Any, Any], path: str) -> None:
        for key, item in value.items():
            key_path = f"{path}[{_show(key)}]"
            if check_key is not None:
                check_key(key, key_path)
            if check_value is not None:
                check_value(item, key_path)

    return check


def _compile_struct_checks(info: mi.StructType, structs: dict[type, Check | None]) -> Check | None:
    fields = [(f.name, field_check) for f in info.fields if (field_check := _compile_checks(f.type, structs))]
    if not fields:
        return None

    def check(value: msgspec.Struct, path: str) -> None:
        for name, check_field in fields:
            check_field(getattr(value, name), f"{path}.{name}")

    return check


def _compile_union_checks(by_type: dict[type, Check]) -> Check:
    def check(value: object, path: str) -> None:
        check_arm = by_type.get(type(value))
        if check_arm is not None:
            check_arm(value, path)

    return check


# --- Wording msgspec's refusals -------------------------------------------------------------------

# msgspec ends a message with where it happened: " - at `$.a.b[3]`", or " - at `key` in `$.a`" for a
# map key; at the top level it says nothing. A path steps through fields, array indices and map
# values ("[...]", the key left out).
_WHERE: Final = re.compile(r" - at `(?:(key)` in `)?(\$[^`]*)`\Z", re.S)
_STEP: Final = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+)\]|\[\.\.\.\]")
_MISSING: Final = re.compile(r"Object missing required field `(\w+)`\Z")
_UNKNOWN: Final = "Object contains unknown field `"
_WRONG_TYPE: Final = re.compile(r"Expected `[^`]+`, got `[^`]+`\Z")
_BOUND: Final = re.compile(r"Expected `\w+` (>=|>|<=|<) \S+\Z")
_LENGTH: Final = re.compile(r"Expected `(\w+)` of length (>=|<=) (\d+)\Z")
_PATTERN: Final = "Expected `str` matching regex "
_NOT_A_MEMBER: Final = "Invalid enum value "
_UNITS: Final = {"str": "characters", "bytes": "bytes", "array": "items", "object": "entries"}


def _explain(err: msgspec.ValidationError, root: Any, raw: Any, path: str, hidden: frozenset[str]) -> str:
    """`path: reason` for `err`, following msgspec's path through the type and the raw value together."""
    text = str(err)
    where = _WHERE.search(text)
    reason = text[: where.start()] if where else text
    steps = list(_STEP.finditer(where[2][1:])) if where else []
    if where and "".join(step[0] for step in steps) != where[2][1:]:
        raise ValueError(f"msgspec gave a path of an unknown shape: {where[2]}")
    hint, value = root, raw
    for step in steps:
        name, index = step[1], step[2]
        base = _base(hint, value)
        if name is not None:
            hint, value, path = _field_types(base)[name], value[name], f"{path}.{name}"
        elif index is not None:
            hint, value, path = get_args(base)[0], value[int(index)], f"{path}[{index}]"
        else:
            key = _first_refused(value, get_args(base)[1], keys=False)
            hint, value, path = get_args(base)[1], value[key], f"{path}[{_show(key)}]"
    if where and where[1]:  # a map key
        base = _base(hint, value)
        if _is_struct(base):
            return _unknown_field(base, value, path, hidden)
        key = _first_refused(value, get_args(base)[0], keys=True)
        hint, value, path = get_args(base)[0], key, f"{path}[{_show(key)}]"
    if isinstance(err.__cause__, FieldError):  # a struct's __post_init__
        return f"{path}.{err.__cause__.field}: {err.__cause__.reason}"
    if missing := _MISSING.match(reason):
        return f"{path}.{missing[1]}: missing required field"
    if reason.startswith(_UNKNOWN):
        return _unknown_field(_base(hint, value), value, path, hidden)
    return f"{path}: {_word(reason, hint, value)}"


def _unknown_field(cls: type[msgspec.Struct], value: Mapping[Any, Any], path: str, hidden: frozenset[str]) -> str:
    info = _type_info(cls)
    assert isinstance(info, mi.StructType)
    names = [f.name for f in info.fields]
    unknown = next(key for key in value if key not in names and key != info.tag_field)
    known = ", ".join(name for name in names if name not in hidden)
    return f"{_join(path, unknown)}: unknown field (the fields are: {known})"


def _word(reason: str, hint: Any, value: Any) -> str:
    """The sentence for refusal `reason` of `value`, which is declared as `hint`."""
    base = _base(hint, value)
    if _WRONG_TYPE.match(reason) or reason.startswith(_NOT_A_MEMBER):
        if get_origin(base) is Literal:
            return f"expected one of {', '.join(repr(v) for v in get_args(base))}, got {_show(value)}"
        if isinstance(base, type) and issubclass(base, Enum) and type(value) is str:
            return f"{_show(value)} is not a known {base.__name__}"
        return f"expected {_expectation(hint, value)}, got {_kind(value)}"
    if bound := _BOUND.match(reason):
        if isinstance(value, float) and not math.isfinite(value):
            return f"expected a finite float, got {value!r}"
        number = _leaf(hint, value)
        assert isinstance(number, mi.IntType | mi.FloatType)
        limit = {">=": number.ge, ">": number.gt, "<=": number.le, "<": number.lt}[bound[1]]
        shown = float(value) if isinstance(number, mi.FloatType) else value
        return f"must be {bound[1]} {limit:g}, got {shown!r}"
    if length := _LENGTH.match(reason):
        extent = "least" if length[2] == ">=" else "most"
        return f"must hold at {extent} {length[3]} {_UNITS.get(length[1], 'items')}, got {len(value)}"
    if reason.startswith(_PATTERN):
        _, extra = _unwrap(_type_info(_arm(hint, value)))
        text_format = extra.get("format")
        expected = text_format.description if isinstance(text_format, TextFormat) else "a string matching its pattern"
        return f"expected {expected}, got {_show(value)}"
    return reason


def _expectation(hint: Any, value: Any) -> str:
    base = _base(hint, value)
    if _is_union(base):  # scalar arms, none of which fits
        return " or ".join(_base(arm, value).__name__ for arm in get_args(base) if arm is not type(None))
    if isinstance(base, type) and issubclass(base, Enum):
        return f"a {base.__name__} string"
    if get_origin(base) is tuple:
        return "an array"
    if _is_struct(base) or get_origin(base) in (Mapping, dict):
        return "a map"
    names = {bool: "a bool", int: "an integer", float: "a finite float", str: "a string", type(None): "nil"}
    return names.get(base, "bytes (MessagePack bin)" if base is bytes else repr(base))


def _leaf(hint: Any, value: Any) -> mi.Type:
    return _unwrap(_type_info(_arm(hint, value)))[0]


def _arm(hint: Any, value: Any) -> Any:
    """`hint` less `| None` and the arms of a union that `value` is not (still Annotated)."""
    bare = _unannotated(hint)
    if not _is_union(bare):
        return hint
    arms = [arm for arm in get_args(bare) if arm is not type(None)]
    if isinstance(value, dict) and all(_is_struct(_unannotated(arm)) for arm in arms):  # tagged structs
        for arm in arms:
            info = _type_info(arm)
            if isinstance(info, mi.StructType) and info.tag_field is not None and value.get(info.tag_field) == info.tag:
                return arm
    if len(arms) == 1:
        return arms[0]
    for arm in arms:
        if _unannotated(arm) is type(value):
            return arm
    if type(value) is int:  # an int fits a float
        return next((arm for arm in arms if _unannotated(arm) is float), hint)
    return hint


def _base(hint: Any, value: Any) -> Any:
    return _unannotated(_arm(hint, value))


def _unannotated(hint: Any) -> Any:
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    return hint


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _is_struct(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, msgspec.Struct)


@cache
def _field_types(cls: type[msgspec.Struct]) -> dict[str, Any]:
    return {field.name: field.type for field in msgspec.structs.fields(cls)}


def _first_refused(mapping: Mapping[Any, Any], hint: Any, *, keys: bool) -> Any:
    """The first key of `mapping` whose key (or value) `hint` refuses: msgspec's path leaves it out."""
    decoder = _decoder(hint)
    for key, item in mapping.items():
        try:
            decoder.decode(msgspec.msgpack.encode(key if keys else item))
        except msgspec.ValidationError:
            return key
    raise LookupError("msgspec refused a map entry that decodes on its own")


def _fail(path: str, reason: str) -> NoReturn:
    raise ProtocolError(ErrorCode.SCHEMA_VIOLATION, f"{path}: {reason}")


def _kind(value: object) -> str:
    kinds = {
        type(None): "nil",
        bool: "a bool",
        int: "an integer",
        float: "a float",
        str: "a string",
        bytes: "bytes",
        list: "an array",
        dict: "a map",
    }
    return kinds.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    return _clip(repr(value), _SHOW_CHARS)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(path: str, key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{_show(key)}]"


# Wording a refusal looks at the schema again. msgspec computes a type's info and builds a decoder in
# milliseconds, so each is done once per type: a refused frame must cost about what a decoded one does.


@cache
def _type_info(hint: Any) -> mi.Type:
    return mi.type_info(hint)


@cache
def _decoder(hint: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(hint)


@cache
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)
