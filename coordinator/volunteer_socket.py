"""The WebSocket a volunteer connects with: a small frame limit until its `hello` succeeds, and a
measure of how long it has been silent.

    ws = VolunteerSocket(heartbeat=30.0)
    await ws.prepare(request)
    ...                       # hello arrives, is checked
    ws.open_frames()          # from now on frames up to MAX_FRAME_BYTES
    ws.silent_for()           # seconds since the volunteer last sent data

aiohttp fixes a socket's frame limit when the handshake completes and buffers a whole frame before
handing it over, so with one limit a stranger could park a 64 MiB frame in memory before saying who
it is. `FrameGuard` sits between aiohttp's connection and its frame reader and reads the frame
headers going by: before `hello` it refuses a message over `MAX_HELLO_FRAME_BYTES` from its header,
before a byte of its payload is kept; always, it notes when data (not pings or pongs, which any
WebSocket library answers by itself) last arrived.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from aiohttp import WebSocketError, WSCloseCode, web
from aiohttp.web_request import BaseRequest

from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import MAX_FRAME_BYTES, MAX_HELLO_FRAME_BYTES
from protocol.messages import ErrorMessage, encode

__all__ = ["PROGRESS_BYTES", "FrameGuard", "VolunteerSocket"]

# While one large frame arrives, each this many payload bytes count as the sender being alive, so
# a slow upload is not "silent" but a frame trickled a few bytes at a time is.
PROGRESS_BYTES = 64 * 1024


class FrameGuard:
    """The parser aiohttp's connection feeds: watches frame headers, then hands the bytes on to the
    WebSocket reader unchanged (or, once it refused a frame, no more bytes at all)."""

    def __init__(self, reader: Any, queue: Any, *, limit: int | None, clock: Any = time.monotonic) -> None:
        self._reader = reader  # aiohttp's WebSocketReader
        self._queue = queue  # the queue the reader delivers messages to
        self.limit = limit  # largest data message accepted, or None: the reader's own limit
        self._clock = clock
        self.last_data = clock()  # when the peer last made progress sending data
        self._head = bytearray()  # a frame header read so far
        self._payload_left = 0
        self._in_data = False  # the payload being skipped belongs to a data frame
        self._message = 0  # bytes of the current (maybe fragmented) data message so far
        self._unmarked = 0  # data bytes since last_data was moved
        self._refused = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._refused:
            return True, b""
        refusal = self._watch(data)
        if refusal is not None:
            self._refused = True
            # What aiohttp's reader does with a frame over its own limit: the socket's next receive
            # gets the error and closes with 1009 (VolunteerSocket.close says why first).
            self._queue.set_exception(WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, refusal))
            return True, b""
        result: tuple[bool, bytes] = self._reader.feed_data(data)
        return result

    def feed_eof(self) -> None:
        self._reader.feed_eof()

    def _watch(self, data: bytes) -> str | None:
        """Follow frame boundaries through `data`; a refusal when a message grows past the limit."""
        position, end = 0, len(data)
        while position < end:
            if self._payload_left:
                step = min(self._payload_left, end - position)
                self._payload_left -= step
                position += step
                if self._in_data:
                    self._unmarked += step
                    if self._payload_left == 0 or self._unmarked >= PROGRESS_BYTES:
                        self._mark()
                continue
            wanted = _header_size(self._head) - len(self._head)
            if wanted > 0:
                taken = min(wanted, end - position)
                self._head += data[position : position + taken]
                position += taken
                if taken < wanted or _header_size(self._head) > len(self._head):
                    continue
            refusal = self._frame(bytes(self._head))
            self._head.clear()
            if refusal is not None:
                return refusal
        return None

    def _frame(self, header: bytes) -> str | None:
        opcode, length = header[0] & 0x0F, header[1] & 0x7F
        if length == 126:
            length = int.from_bytes(header[2:4], "big")
        elif length == 127:
            length = int.from_bytes(header[2:10], "big")
        self._payload_left = length
        self._in_data = opcode < 0x8  # continuation, text, binary; the rest are control frames
        if not self._in_data:
            return None
        self._message = self._message + length if opcode == 0x0 else length
        if self.limit is not None and self._message > self.limit:
            return f"a {self._message}-byte message before hello; the limit is {self.limit} bytes"
        if length == 0:
            self._mark()
        return None

    def _mark(self) -> None:
        self.last_data = self._clock()
        self._unmarked = 0


def _header_size(head: bytearray) -> int:
    """Bytes in the frame header that starts `head` (2 while its length byte is still to come)."""
    if len(head) < 2:
        return 2
    length, masked = head[1] & 0x7F, head[1] & 0x80
    return 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if masked else 0)


class VolunteerSocket(web.WebSocketResponse):
    """A WebSocket that takes frames up to `MAX_HELLO_FRAME_BYTES` until `open_frames()`, then up to
    `MAX_FRAME_BYTES`; a frame over the limit is answered with the documented fatal `frame_too_large`
    error frame (aiohttp alone would close with 1009 and no reason)."""

    def __init__(self, *, heartbeat: float | None = None, clock: Any = time.monotonic) -> None:
        super().__init__(max_msg_size=MAX_FRAME_BYTES, heartbeat=heartbeat, compress=False)
        self._clock = clock
        self.guard: FrameGuard | None = None

    @property
    def frame_limit(self) -> int:
        """The largest frame this socket takes now."""
        return MAX_FRAME_BYTES if self.guard is None or self.guard.limit is None else self.guard.limit

    def open_frames(self) -> None:
        """The volunteer said a good hello: from now on it may send frames up to MAX_FRAME_BYTES."""
        if self.guard is not None:
            self.guard.limit = None

    def silent_for(self) -> float:
        """Seconds since the volunteer last made progress sending data (pings and pongs don't count)."""
        return 0.0 if self.guard is None else self._clock() - self.guard.last_data

    def _post_start(self, request: BaseRequest, protocol: str | None, writer: Any) -> None:
        # aiohttp has no public seam for this: put the guard where the connection feeds its frame
        # reader. Bytes that came in with the upgrade request go through the guard too.
        handler = request.protocol
        tail, handler._message_tail = handler._message_tail, b""
        super()._post_start(request, protocol, writer)
        self.guard = FrameGuard(handler._payload_parser, self._reader, limit=MAX_HELLO_FRAME_BYTES, clock=self._clock)
        handler._payload_parser = self.guard
        if tail:
            eof, _ = self.guard.feed_data(tail)
            if eof:
                handler.close()

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed:
            limit = self.frame_limit
            if limit < MAX_FRAME_BYTES:
                reason = f"a frame before a successful hello may be at most {limit} bytes; send hello first"
            else:
                reason = (
                    f"a frame was larger than this coordinator accepts ({limit} bytes); "
                    "see welcome.max_frame_bytes and the unit's max_update_bytes"
                )
            refusal = ProtocolError(ErrorCode.FRAME_TOO_LARGE, reason)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send_bytes(encode(ErrorMessage.from_error(refusal, fatal=True)))
            message = message or ErrorCode.FRAME_TOO_LARGE.value.encode()
        return await super().close(code=code, message=message, drain=drain)
