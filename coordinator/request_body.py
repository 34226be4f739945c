"""A REST request's body decoded as hostile input: JSON or TOML into plain values, or a `BadBody`; and
the API's error answers.

    >>> decode_body(b'{"label": "alice"}', "application/json")
    {'label': 'alice'}
    >>> decode_body(b"[" * 100_000, "application/json")
    Traceback (most recent call last):
    ...
    coordinator.request_body.BadBody: the body nests deeper than 16 levels; ...

Every way a body can be bad is a `BadBody` whose message a client can act on (the REST API answers
400 with it), never a traceback in the server log: bytes that aren't UTF-8, text that isn't JSON or
TOML, nesting deeper than any request needs, integers longer than any request needs, text with a
lone surrogate (which no database or JSON encoder downstream accepts as text). The size limit comes
first, in the handler, before the body is read.

The parsers recurse once per level of nesting: a body nested past Python's recursion limit is
refused by the RecursionError they raise (caught here, before anything else runs on that stack),
and a body that parses is walked, without recursion, for its depth and its text.
"""

from __future__ import annotations

import json
import math
import tomllib
from typing import Any

from aiohttp import web

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_DIGITS",
    "BadBody",
    "decode_body",
    "error_response",
    "json_body",
    "read_body",
    "retry_later",
]

MAX_BODY_BYTES = 256 * 1024

MAX_DEPTH = 16  # containers in containers; a campaign spec, the deepest body the API takes, needs 2
MAX_DIGITS = 40  # the largest number any field takes has 19 digits (a seed below 2**63)


class BadBody(ValueError):
    """A request body the API can't read; the message says why, for the client."""

    code = "bad_request"


def decode_body(body: bytes, content_type: str) -> object:
    """`body` as JSON, or as TOML when `content_type` names TOML; `BadBody` if it is not fit to read."""
    fmt = "TOML" if "toml" in content_type else "JSON"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadBody(f"the body is not valid {fmt}: it is not UTF-8 text ({error})") from None
    try:
        data = tomllib.loads(text) if fmt == "TOML" else json.loads(text, parse_int=_json_int)
    except RecursionError:
        raise _too_deep() from None
    except BadBody:
        raise
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise BadBody(f"the body is not valid {fmt}: {error}") from None
    except ValueError:  # the one tomllib doesn't wrap: int() past Python's 4300 digits
        raise _too_long() from None
    _check_values(data)
    return data


def _json_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise _too_long()
    return int(digits)


def _too_long() -> BadBody:
    return BadBody(f"a number in the body has more than {MAX_DIGITS} digits; no field takes one that large")


def _too_deep() -> BadBody:
    return BadBody(f"the body nests deeper than {MAX_DEPTH} levels; no request needs more than 2")


def _check_values(data: object) -> None:
    """Nesting, integers and text of everything in `data`: a level of containers at a time, no recursion."""
    _check_scalar(data)
    containers = [data] if isinstance(data, dict | list) else []
    depth = 0
    while containers:
        depth += 1
        if depth > MAX_DEPTH:
            raise _too_deep()
        children: list[object] = []
        for container in containers:
            if isinstance(container, dict):
                for key in container:
                    _check_text(key)
                children.extend(container.values())
            else:
                children.extend(container)
        for child in children:
            _check_scalar(child)
        containers = [child for child in children if isinstance(child, dict | list)]


def _check_scalar(value: object) -> None:
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, int) and abs(value) >= 10**MAX_DIGITS:
        raise _too_long()


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadBody(
            f"a text in the body holds a lone surrogate (U+{ord(text[error.start]):04X} at character "
            f"{error.start}), which is not a character; send valid Unicode"
        ) from None


async def read_body(request: web.Request) -> bytes:
    """The whole request body; OverflowError past MAX_BODY_BYTES."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise OverflowError(f"the body must be under {MAX_BODY_BYTES} bytes")
    body = await request.read()  # aiohttp refuses more than the app's client_max_size with 413
    if len(body) > MAX_BODY_BYTES:
        raise OverflowError(f"the body must be under {MAX_BODY_BYTES} bytes")
    return body


async def json_body(request: web.Request) -> object:
    """The request's JSON body; OverflowError past MAX_BODY_BYTES, BadBody with a sentence on a bad one."""
    return decode_body(await read_body(request), "application/json")


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """The REST API's one shape of error: `{"error": {"code": ..., "message": ..., **extra}}`."""
    return web.json_response({"error": {"code": code, "message": message, **extra}}, status=status)


def retry_later(status: int, code: str, message: str, seconds: float) -> web.Response:
    """An error answer with a Retry-After header of `seconds`, rounded up."""
    response = error_response(status, code, message)
    response.headers["Retry-After"] = str(math.ceil(seconds))
    return response
