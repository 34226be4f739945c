"""A small validator that turns decoded MessagePack values into typed dataclasses, and back.

The schema is the dataclass itself: field types come from its annotations, bounds and docs from
`spec(...)` in each field's metadata, rules that span fields from its `__post_init__` (raising
`FieldError`). Every failure is a `ProtocolError(schema_violation)` naming the field's path.

    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True, slots=True)
    ... class Point:
    ...     x: int = field(metadata=spec("Column.", ge=0, le=10))
    ...     tags: tuple[str, ...] = field(metadata=spec("Labels.", max_len=4, item=Rule(max_len=8)))
    >>> from_wire(Point, {"x": 3, "tags": ["a"]}, path="point")
    Point(x=3, tags=('a',))
    >>> from_wire(Point, {"x": True, "tags": []}, path="point")
    Traceback (most recent call last):
    ...
    protocol.errors.ProtocolError: schema_violation: point.x: expected an integer, got a bool
    >>> to_wire(Point(x=3, tags=("a",)))
    {'x': 3, 'tags': ['a']}

Supported field types: bool, int, float, str, bytes, None, `Literal[...]` of strings, `StrEnum`
subclasses, `tuple[X, ...]` (an array), `Mapping[str, X]` (a map), nested dataclasses, `X | None`,
and unions of scalar types (`str | int | float`). Integers are never bools; a float field accepts
an integer (JavaScript encoders write 1.0 as 1) and refuses NaN and infinities.

Every string, bytes, array and map field must declare `max_len`, and every number both a lower and
an upper bound; `fields_of` raises `TypeError` for a field that does not, so no limit is forgotten.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from enum import Enum
from functools import cache
from typing import Any, Literal, NoReturn, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from protocol.errors import ErrorCode, ProtocolError

T = TypeVar("T")
Check = Callable[[object, str], object]

_NONE = type(None)
_FIELDS: dict[type, tuple[FieldSpec, ...]] = {}
_CHECKS: dict[type, Check] = {}
_SHOW_CHARS = 40


@dataclass(frozen=True, slots=True)
class TextFormat:
    """A named string format: a regular expression that must match the whole string."""

    regex: str
    description: str

    def matches(self, text: str) -> bool:
        return _compiled(self.regex).fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Rule:
    """Bounds on one value. `item`, `key` and `value` bound the elements of arrays and maps."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_len: int = 0
    max_len: int | None = None
    pattern: TextFormat | None = None
    printable: bool = False
    unique: bool = False
    item: Rule | None = None
    key: Rule | None = None
    value: Rule | None = None


def spec(
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    min_len: int = 0,
    max_len: int | None = None,
    pattern: TextFormat | None = None,
    printable: bool = False,
    unique: bool = False,
    item: Rule | None = None,
    key: Rule | None = None,
    value: Rule | None = None,
) -> dict[str, object]:
    """Field metadata: what the field means (`doc`) and the bounds its value must keep."""
    rule = Rule(ge, gt, le, lt, min_len, max_len, pattern, printable, unique, item, key, value)
    return {"doc": doc, "rule": rule}


class FieldError(ValueError):
    """Raised by a schema dataclass's `__post_init__` when fields disagree with each other.

    `field` is the path below the dataclass (`"recipe.seq_len"`); the validator prefixes the rest.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a schema dataclass, as the validator sees it."""

    name: str
    hint: Any
    rule: Rule
    doc: str
    required: bool
    check: Check = dataclasses.field(repr=False, compare=False)


def fields_of(cls: type) -> tuple[FieldSpec, ...]:
    """The validated fields of schema dataclass `cls`, in declaration (and wire) order."""
    cached = _FIELDS.get(cls)
    if cached is None:
        cached = _FIELDS[cls] = _declare(cls)
    return cached


def _declare(cls: type) -> tuple[FieldSpec, ...]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    hints = get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        where = f"{cls.__name__}.{f.name}"
        if "rule" not in f.metadata or "doc" not in f.metadata:
            raise TypeError(f"{where}: declare the field with field(metadata=spec(...))")
        rule = f.metadata["rule"]
        hint = hints[f.name]
        required = f.default is MISSING and f.default_factory is MISSING
        specs.append(FieldSpec(f.name, hint, rule, f.metadata["doc"], required, _compile(hint, rule, where)))
    return tuple(specs)


def from_wire(cls: type[T], data: object, *, path: str) -> T:
    """Build a `cls` from decoded MessagePack `data`, or raise `ProtocolError(schema_violation)`.

    `path` names `data` in error messages (`"submit"` gives `"submit.metrics.losses[3]: ..."`).
    """
    return cast(T, _dataclass_check(cls)(data, path))


def to_wire(value: object) -> object:
    """The plain MessagePack-ready form of a schema value: maps, arrays, scalars and bytes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_wire(item) for item in value]
    if isinstance(value, Mapping):
        return {key: to_wire(item) for key, item in value.items()}
    return value


# --- Compilation: type hint + rule -> check function ------------------------------------------


def _compile(hint: Any, rule: Rule, where: str) -> Check:
    origin = get_origin(hint)
    if hint is _NONE:
        return _check_none
    if origin is Union or origin is types.UnionType:
        return _compile_union(get_args(hint), rule, where)
    if origin is Literal:
        return _compile_literal(get_args(hint))
    if hint is bool:
        return _check_bool
    if hint is int:
        _require_bounds(rule, where)
        return _compile_int(rule)
    if hint is float:
        _require_bounds(rule, where)
        return _compile_float(rule)
    if hint is str:
        _require_max_len(rule, where)
        return _compile_str(rule)
    if hint is bytes:
        _require_max_len(rule, where)
        return _compile_bytes(rule)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _compile_enum(hint)
    if origin is tuple:
        args = get_args(hint)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{where}: use tuple[X, ...] for arrays")
        _require_max_len(rule, where)
        return _compile_array(_compile(args[0], rule.item or Rule(), f"{where}[]"), rule)
    if origin is Mapping or origin is dict:
        key_type, value_type = get_args(hint)
        if key_type is not str:
            raise TypeError(f"{where}: map keys must be str")
        _require_max_len(rule, where)
        check_key = _compile(str, rule.key or Rule(), f"{where}{{key}}")
        check_value = _compile(value_type, rule.value or Rule(), f"{where}{{}}")
        return _compile_map(check_key, check_value, rule)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        fields_of(hint)  # declare-time errors surface now, not on the first frame
        return _dataclass_check(hint)
    raise TypeError(f"{where}: the schema cannot validate {hint!r}")


def _require_bounds(rule: Rule, where: str) -> None:
    if (rule.ge is None and rule.gt is None) or (rule.le is None and rule.lt is None):
        raise TypeError(f"{where}: a number needs a lower (ge/gt) and an upper (le/lt) bound")


def _require_max_len(rule: Rule, where: str) -> None:
    if rule.max_len is None:
        raise TypeError(f"{where}: strings, bytes, arrays and maps need max_len")


def _fail(path: str, reason: str) -> NoReturn:
    raise ProtocolError(ErrorCode.SCHEMA_VIOLATION, f"{path}: {reason}")


def _kind(value: object) -> str:
    kinds = {
        _NONE: "nil",
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
    text = repr(value)
    return text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "..."


def _check_none(value: object, path: str) -> object:
    if value is not None:
        _fail(path, f"expected nil, got {_kind(value)}")
    return None


def _check_bool(value: object, path: str) -> object:
    if type(value) is not bool:
        _fail(path, f"expected a bool, got {_kind(value)}")
    return value


def _check_number_bounds(number: float, rule: Rule, path: str) -> None:
    if rule.ge is not None and not number >= rule.ge:
        _fail(path, f"must be >= {rule.ge:g}, got {number!r}")
    if rule.gt is not None and not number > rule.gt:
        _fail(path, f"must be > {rule.gt:g}, got {number!r}")
    if rule.le is not None and not number <= rule.le:
        _fail(path, f"must be <= {rule.le:g}, got {number!r}")
    if rule.lt is not None and not number < rule.lt:
        _fail(path, f"must be < {rule.lt:g}, got {number!r}")


def _compile_int(rule: Rule) -> Check:
    def check(value: object, path: str) -> object:
        if type(value) is not int:
            _fail(path, f"expected an integer, got {_kind(value)}")
        _check_number_bounds(value, rule, path)
        return value

    return check


def _compile_float(rule: Rule) -> Check:
    def check(value: object, path: str) -> object:
        if type(value) is int:
            value = float(value)
        if type(value) is not float:
            _fail(path, f"expected a finite float, got {_kind(value)}")
        if not math.isfinite(value):
            _fail(path, f"expected a finite float, got {value!r}")
        _check_number_bounds(value, rule, path)
        return value

    return check


def _check_len(size: int, rule: Rule, path: str, unit: str) -> None:
    if size < rule.min_len:
        _fail(path, f"must hold at least {rule.min_len} {unit}, got {size}")
    if rule.max_len is not None and size > rule.max_len:
        _fail(path, f"must hold at most {rule.max_len} {unit}, got {size}")


def _compile_str(rule: Rule) -> Check:
    def check(value: object, path: str) -> object:
        if type(value) is not str:
            _fail(path, f"expected a string, got {_kind(value)}")
        _check_len(len(value), rule, path, "characters")
        if rule.printable and not value.isprintable():
            _fail(path, f"must not contain control or invisible characters, got {_show(value)}")
        if rule.pattern is not None and not rule.pattern.matches(value):
            _fail(path, f"expected {rule.pattern.description}, got {_show(value)}")
        return value

    return check


def _compile_bytes(rule: Rule) -> Check:
    def check(value: object, path: str) -> object:
        if type(value) is not bytes:
            _fail(path, f"expected bytes (MessagePack bin), got {_kind(value)}")
        _check_len(len(value), rule, path, "bytes")
        return value

    return check


def _compile_literal(values: tuple[object, ...]) -> Check:
    expected = ", ".join(repr(v) for v in values)

    def check(value: object, path: str) -> object:
        for allowed in values:
            if type(value) is type(allowed) and value == allowed:
                return allowed
        _fail(path, f"expected one of {expected}, got {_show(value)}")

    return check


def _compile_enum(enum: type[Enum]) -> Check:
    members = {member.value: member for member in enum}

    def check(value: object, path: str) -> object:
        if type(value) is not str:
            _fail(path, f"expected a {enum.__name__} string, got {_kind(value)}")
        if value not in members:
            _fail(path, f"{_show(value)} is not a known {enum.__name__}")
        return members[value]

    return check


def _compile_union(args: tuple[Any, ...], rule: Rule, where: str) -> Check:
    arms = [arm for arm in args if arm is not _NONE]
    optional = len(arms) < len(args)
    if len(arms) == 1:
        inner = _compile(arms[0], rule, where)
    else:
        if not all(arm in (bool, int, float, str, bytes) for arm in arms):
            raise TypeError(f"{where}: unions may only mix scalar types (and None)")
        by_type = {arm: _compile(arm, rule, where) for arm in arms}
        names = " or ".join(arm.__name__ for arm in arms)

        def inner(value: object, path: str) -> object:
            check = by_type.get(type(value))
            if check is None and type(value) is int:
                check = by_type.get(float)
            if check is None:
                _fail(path, f"expected {names}, got {_kind(value)}")
            return check(value, path)

    if not optional:
        return inner

    def check_optional(value: object, path: str) -> object:
        return None if value is None else inner(value, path)

    return check_optional


def _compile_array(check_item: Check, rule: Rule) -> Check:
    def check(value: object, path: str) -> object:
        if type(value) is not list and type(value) is not tuple:
            _fail(path, f"expected an array, got {_kind(value)}")
        _check_len(len(value), rule, path, "items")
        items = tuple(check_item(item, f"{path}[{index}]") for index, item in enumerate(value))
        if rule.unique and len(set(items)) != len(items):
            seen: set[object] = set()
            for index, item in enumerate(items):
                if item in seen:
                    _fail(f"{path}[{index}]", f"duplicate item {_show(item)}")
                seen.add(item)
        return items

    return check


def _compile_map(check_key: Check, check_value: Check, rule: Rule) -> Check:
    def check(value: object, path: str) -> object:
        if type(value) is not dict:
            _fail(path, f"expected a map, got {_kind(value)}")
        _check_len(len(value), rule, path, "entries")
        result = {}
        for key, item in value.items():
            key_path = f"{path}[{_show(key)}]"
            check_key(key, key_path)
            result[key] = check_value(item, key_path)
        return result

    return check


def _dataclass_check(cls: type) -> Check:
    cached = _CHECKS.get(cls)
    if cached is None:
        cached = _CHECKS[cls] = _compile_dataclass(cls)
    return cached


def _compile_dataclass(cls: type) -> Check:
    specs = fields_of(cls)
    by_name = {spec.name: spec for spec in specs}
    known = ", ".join(by_name)

    def check(value: object, path: str) -> object:
        if type(value) is not dict:
            _fail(path, f"expected a map, got {_kind(value)}")
        for key in value:
            if key not in by_name:
                _fail(_join(path, key), f"unknown field (the fields are: {known})")
        kwargs = {}
        for spec in specs:
            if spec.name in value:
                kwargs[spec.name] = spec.check(value[spec.name], f"{path}.{spec.name}")
            elif spec.required:
                _fail(f"{path}.{spec.name}", "missing required field")
        try:
            return cls(**kwargs)
        except FieldError as err:
            _fail(f"{path}.{err.field}", err.reason)

    return check


def _join(path: str, key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{_show(key)}]"


@cache
def _compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)
