"""The hostile pre-scan: one walk over a frame's MessagePack bytes before anything is built from them.

Decoding allocates an object per value, so a few bytes of nested empty maps could become gigabytes,
and msgspec, which decodes the frame afterwards, lets a repeated map key silently win. `scan` refuses
both, and everything else this protocol never sends (extension types, byte 0xc1, keys that are not
strings, strings that are not UTF-8, trailing bytes), in one pass whose cost the frame's size
bounds.

    >>> scan(b"\\x83\\xa4type\\xa7goodbye\\xa1v\\x01\\xa6reason\\xa0")
    >>> scan(b"\\x81\\xa1v\\x01\\xc0")
    Traceback (most recent call last):
    ...
    protocol.errors.ProtocolError: malformed_frame: 1 bytes follow the frame's map.
"""

from __future__ import annotations

from typing import Final

from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import MAX_FRAME_DEPTH, MAX_FRAME_VALUES

# What each first byte starts, as (kind, a, b). _FIXED: a scalar of `a` more bytes. _FIXSTR: a str of
# `a` bytes. _STR, _BIN: a str or bin behind an `a`-byte length. _FIXCONTAINER: `a` entries of `b`
# values each (an array: 1, a map: 2). _CONTAINER: the same behind an `a`-byte count of entries.
# The order matters to `scan`: the kinds up to _BIN are scalars.
_FIXED, _FIXSTR, _STR, _BIN, _FIXCONTAINER, _CONTAINER, _EXTENSION, _NEVER_USED = range(8)


def _kind(byte: int) -> tuple[int, int, int]:
    if byte < 0x80 or byte >= 0xE0:  # positive and negative fixint
        return (_FIXED, 0, 0)
    if byte < 0x90:
        return (_FIXCONTAINER, byte & 0x0F, 2)
    if byte < 0xA0:
        return (_FIXCONTAINER, byte & 0x0F, 1)
    if byte < 0xC0:
        return (_FIXSTR, byte & 0x1F, 0)
    fixed = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
    fixed |= {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
    text = {0xC4: (_BIN, 1), 0xC5: (_BIN, 2), 0xC6: (_BIN, 4), 0xD9: (_STR, 1), 0xDA: (_STR, 2), 0xDB: (_STR, 4)}
    containers = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
    if byte in fixed:
        return (_FIXED, fixed[byte], 0)
    if byte in text:
        return (text[byte][0], text[byte][1], 0)
    if byte in containers:
        return (_CONTAINER, *containers[byte])
    return (_NEVER_USED, 0, 0) if byte == 0xC1 else (_EXTENSION, 0, 0)


_KINDS: Final = tuple(_kind(byte) for byte in range(256))
_SCALAR_SIZES: Final = bytes(1 + a if kind == _FIXED else 0 for kind, a, _ in _KINDS)  # 0: not a number, nil or bool


def scan(frame: bytes) -> None:
    """Walk `frame` (one MessagePack map) without building it, and refuse it if it breaks a rule above.

    Raises `ProtocolError(malformed_frame)`. Counting values and depth first bounds the work of
    decoding by the frame's size, not its shape.
    """
    end = len(frame)
    pos = 0
    values = 0
    # Per open array or map: the values it still expects, and the keys it has so far (None for an
    # array). A map expects key and value alternately, so an even count means a key comes next.
    expected: list[int] = []
    key_sets: list[set[str | bytes] | None] = []
    while True:
        if pos >= end:
            raise _malformed("The frame ends in the middle of a value.")
        start = pos
        kind, a, b = _KINDS[frame[pos]]
        pos += 1
        values += 1
        if values > MAX_FRAME_VALUES:
            raise _malformed(f"The frame holds more than {MAX_FRAME_VALUES} values.")
        keys = key_sets[-1] if key_sets and not expected[-1] % 2 else None  # a set: this value is a key
        children = -1  # stays -1 for scalars
        if kind <= _BIN:  # _FIXED, _FIXSTR, _STR or _BIN: `a` more bytes, or an `a`-byte length first
            if kind >= _STR:
                a, pos = int.from_bytes(frame[pos : pos + a], "big"), pos + a
            text_start, pos = pos, pos + a
            if pos > end:
                raise _malformed(f"The frame ends in the middle of the value at byte {start}.")
            text: str | bytes | None = None
            if kind in (_FIXSTR, _STR):
                try:
                    text = frame[text_start:pos].decode()
                except UnicodeDecodeError:
                    raise _malformed(f"The string at byte {start} is not UTF-8.") from None
            elif kind == _BIN and keys is not None:  # as bytes, a bin key never equals a str key
                text = frame[text_start:pos]
            if keys is not None:
                if text is None:
                    raise _malformed(f"The map key at byte {start} is not a string.")
                if text in keys:
                    raise _malformed(f"The key {_clip(repr(text), 40)} appears twice in one map.")
                keys.add(text)
        elif kind in (_FIXCONTAINER, _CONTAINER):
            if kind == _CONTAINER:
                a, pos = int.from_bytes(frame[pos : pos + a], "big"), pos + a
            children = a * b
            if pos > end:
                raise _malformed(f"The frame ends in the middle of the value at byte {start}.")
            if keys is not None:
                raise _malformed(f"The map key at byte {start} is not a string.")
            if len(expected) >= MAX_FRAME_DEPTH:
                raise _malformed(f"The frame nests maps and arrays deeper than {MAX_FRAME_DEPTH} levels.")
            # An array that starts with numbers, nils or bools is passed over quickly: in one step if it
            # holds only float64s (submit.metrics.losses), else those it starts with in a tight loop (each
            # one's size is in its first byte); 65,536 of them take 0.1 s one by one in the loop below.
            # The first byte is looked at first, so an array of containers costs no more than before.
            if b == 1 and children and pos < end and _SCALAR_SIZES[frame[pos]]:
                if frame[pos] == 0xCB and frame[pos : pos + 9 * children : 9].count(0xCB) == children:
                    if pos + 9 * children > end:
                        raise _malformed(f"The frame ends in the middle of the value at byte {start}.")
                    skipped, pos = children, pos + 9 * children
                else:
                    skipped, budget = 0, min(children, MAX_FRAME_VALUES + 1 - values)
                    while skipped < budget and pos < end and (size := _SCALAR_SIZES[frame[pos]]):
                        pos += size
                        skipped += 1
                    if pos > end:
                        raise _malformed(f"The frame ends in the middle of the value at byte {pos - size}.")
                values += skipped
                if values > MAX_FRAME_VALUES:
                    raise _malformed(f"The frame holds more than {MAX_FRAME_VALUES} values.")
                children -= skipped
            if children:
                expected.append(children)
                key_sets.append(set() if b == 2 else None)
                continue
        elif kind == _EXTENSION:
            raise _malformed(f"MessagePack extension types are not allowed (byte {start}).")
        else:
            raise _malformed(f"Byte {start} is 0xc1, which MessagePack never uses.")
        # A value just ended: close every container it completes.
        while expected:
            expected[-1] -= 1
            if expected[-1]:
                break
            expected.pop()
            key_sets.pop()
        if not expected:
            break
    if pos != end:
        raise _malformed(f"{end - pos} bytes follow the frame's map.")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED_FRAME, message)
