"""Request bodies decoded as hostile input: every bad one is a BadBody with a sentence, never another exception."""

from __future__ import annotations

import pytest

from coordinator.request_body import MAX_DEPTH, MAX_DIGITS, BadBody, decode_body

JSON = "application/json"
TOML = "application/toml"


def test_a_good_body_decodes_to_plain_values() -> None:
    assert decode_body(b'{"label": "alice", "n": [1, 2.5, null]}', JSON) == {"label": "alice", "n": [1, 2.5, None]}
    assert decode_body(b'name = "x"\n[inner]\nsteps = 2\n', TOML) == {"name": "x", "inner": {"steps": 2}}
    assert decode_body('{"label": "Zoë \\ud83d\\ude00"}'.encode(), JSON) == {"label": "Zoë 😀"}  # a pair is fine


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"[" * 100_000, JSON, f"nests deeper than {MAX_DEPTH} levels"),
        (b'{"a":' * 100_000, JSON, f"nests deeper than {MAX_DEPTH} levels"),
        (b"[" * 900 + b"]" * 900, JSON, f"nests deeper than {MAX_DEPTH} levels"),  # parses, then refused
        (b"a = " + b"[" * 100_000, TOML, f"nests deeper than {MAX_DEPTH} levels"),
        (b"a = " + b"[" * 900 + b"]" * 900, TOML, f"nests deeper than {MAX_DEPTH} levels"),
        (b"a = " + b"{b=" * 5000, TOML, "nests deeper than"),
        (b".".join([b"a"] * 5000) + b" = 1", TOML, f"nests deeper than {MAX_DEPTH} levels"),  # no recursion
        (b'{"seed": ' + b"1" * 5000 + b"}", JSON, f"more than {MAX_DIGITS} digits"),
        (b'{"seed": -' + b"1" * 41 + b"}", JSON, f"more than {MAX_DIGITS} digits"),
        (b"seed = " + b"1" * 5000, TOML, f"more than {MAX_DIGITS} digits"),
        (b"seed = " + b"1" * 41, TOML, f"more than {MAX_DIGITS} digits"),
        (b'{"label": "\\ud800"}', JSON, "lone surrogate (U+D800 at character 0)"),
        (b'{"x\\udfff": 1}', JSON, "lone surrogate (U+DFFF"),
        (b'["ok", {"a": ["abc\\udc00"]}]', JSON, "lone surrogate (U+DC00 at character 3)"),
        (b'label = "\\ud800"', TOML, "not valid TOML"),
        (b"\xff\xfe", JSON, "not valid JSON: it is not UTF-8 text"),
        (b'{"label": ', JSON, "not valid JSON"),
        (b"label = ", TOML, "not valid TOML"),
    ],
    ids=lambda v: v[:24] if isinstance(v, bytes) else v,
)
def test_a_bad_body_is_refused_with_a_sentence(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(BadBody) as caught:
        decode_body(body, content_type)
    assert message in str(caught.value)
    assert caught.value.code == "bad_request"


def test_the_limits_leave_room_for_every_real_body() -> None:
    deepest = b'{"a": ' * (MAX_DEPTH - 1) + b"[1]" + b"}" * (MAX_DEPTH - 1)
    assert decode_body(deepest, JSON) is not None
    assert decode_body(b'{"seed": ' + str(2**63 - 1).encode() + b"}", JSON) == {"seed": 2**63 - 1}
    assert decode_body(b'{"n": ' + b"9" * MAX_DIGITS + b"}", JSON) == {"n": int("9" * MAX_DIGITS)}
    assert decode_body(b'{"lr": 1e999}', JSON) == {"lr": float("inf")}  # a float, which the spec refuses by name
