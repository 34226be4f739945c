"""The volunteer WebSocket endpoint over real loopback sockets: handshake, errors, blobs, work."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestServer

from coordinator import gateway
from coordinator.admission import AdmissionConfig
from coordinator.app import create_app
from coordinator.appkeys import SERVICE
from coordinator.campaign import CampaignSpec
from coordinator.service import CoordinatorConfig
from coordinator.sources import SourcePolicy
from protocol.errors import CloseCode, ErrorCode, close_code_for
from protocol.limits import (
    MAX_CODECS,
    MAX_DEVICES,
    MAX_FRAME_BYTES,
    MAX_HELLO_FRAME_BYTES,
    MAX_KEY_LEN,
    MAX_MEMORY_BYTES,
    MAX_NAME_LEN,
    MAX_THREADS,
    MAX_TOKEN_LEN,
    MAX_VERSION_LEN,
)
from protocol.messages import (
    BlobChunk,
    BlobRequest,
    Capabilities,
    Device,
    ErrorMessage,
    Hello,
    Keepalive,
    Message,
    NoWork,
    RequestWork,
    Welcome,
    WorkUnit,
    decode,
    encode,
)
from protocol.version import PROTOCOL_VERSION
from tests.support.backends import Backend


def hello(token: str | None = None, version: int = PROTOCOL_VERSION, *, own_data: bool = False) -> Hello:
    return Hello(
        protocol_version=version,
        client_version="0.1.0",
        token=token,
        name="test volunteer",
        capabilities=Capabilities(
            devices=(Device(kind="cpu", name="test cpu", memory_bytes=8 << 30),),
            memory_bytes=8 << 30,
            threads=1,
            codecs=("fp32", "int8"),
            platform="linux-x86_64",
            runtimes=("torch",),
            unit_kinds=("train",),
            own_data=own_data,
        ),
    )


@pytest.fixture
async def server(tmp_path: Path, small_dataset: Path, backend: Backend) -> AsyncIterator[TestServer]:
    # work_hold_s 0: with no campaign, request_work is answered no_work at once (these tests use it as the
    # reply that shows a session still works); the hold itself is tested below.
    config = CoordinatorConfig(
        data_dir=tmp_path / "c",
        database=backend.database,
        blobs=backend.blobs,
        datasets={"small": small_dataset},
        work_hold_s=0.0,
    )
    app = create_app(config)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await test_server.close()


async def exchange(ws: aiohttp.ClientWebSocketResponse, message: Message) -> Message:
    await ws.send_bytes(encode(message))
    return await receive(ws)


async def receive(ws: aiohttp.ClientWebSocketResponse) -> Message:
    frame = await ws.receive(timeout=30)
    assert frame.type == aiohttp.WSMsgType.BINARY, frame
    return decode(frame.data, direction="to_client")


async def test_first_contact_registers_and_the_token_works_next_time(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/ws")) as ws:
            welcome = await exchange(ws, hello())
            assert isinstance(welcome, Welcome) and welcome.token is not None
        async with session.ws_connect(server.make_url("/ws")) as ws:
            again = await exchange(ws, hello(token=welcome.token))
            assert isinstance(again, Welcome)
            assert again.volunteer_id == welcome.volunteer_id and again.token is None


async def test_an_unknown_token_is_refused_with_4401(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        error = await exchange(ws, hello(token="not-a-real-token"))
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.UNAUTHORIZED and error.fatal
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == CloseCode.UNAUTHORIZED


async def test_a_version_mismatch_is_refused_with_a_message_the_volunteer_can_act_on(server: TestServer) -> None:
    frame = msgpack.packb({**_wire(hello()), "v": 99, "protocol_version": 99}, use_bin_type=True)
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        await ws.send_bytes(frame)
        error = await receive(ws)
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.VERSION_MISMATCH
        assert "version" in error.message and ("update" in error.message.lower() or "Install" in error.message)


def _wire(message: Message) -> dict[str, object]:
    data = msgpack.unpackb(encode(message), raw=False)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\x00\x01garbage", ErrorCode.MALFORMED_FRAME),
        (msgpack.packb({"type": "launch_missiles", "v": PROTOCOL_VERSION}), ErrorCode.UNKNOWN_TYPE),
        (msgpack.packb({"type": "request_work", "v": PROTOCOL_VERSION, "extra": 1}), ErrorCode.SCHEMA_VIOLATION),
        (msgpack.packb([1, 2, 3]), ErrorCode.MALFORMED_FRAME),
    ],
    ids=["garbage", "unknown-type", "extra-field", "not-a-map"],
)
async def test_a_malformed_frame_costs_an_error_frame_and_the_connection_stays_usable(
    server: TestServer, frame: bytes, code: ErrorCode
) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        assert isinstance(await exchange(ws, hello()), Welcome)
        await ws.send_bytes(frame)
        error = await receive(ws)
        assert isinstance(error, ErrorMessage) and error.code == code and not error.fatal
        still = await exchange(ws, RequestWork())
        assert isinstance(still, NoWork)


async def test_a_text_frame_is_refused_and_too_many_bad_frames_close_the_connection(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        assert isinstance(await exchange(ws, hello()), Welcome)
        for _ in range(25):
            await ws.send_str("hello?")
            frame = await ws.receive(timeout=10)
            if frame.type == aiohttp.WSMsgType.CLOSE:
                assert frame.data == CloseCode.POLICY_VIOLATION
                break
            error = decode(frame.data, direction="to_client")
            assert isinstance(error, ErrorMessage) and error.code == ErrorCode.MALFORMED_FRAME
        else:
            pytest.fail("the connection stayed open after 25 bad frames")
        # Other volunteers are unaffected.
        async with session.ws_connect(server.make_url("/ws")) as other:
            assert isinstance(await exchange(other, hello()), Welcome)


async def test_the_first_frame_must_be_hello(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        error = await exchange(ws, RequestWork())
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.UNEXPECTED_MESSAGE and error.fatal


async def test_a_volunteer_gets_a_unit_and_downloads_its_blobs_in_verified_chunks(server: TestServer) -> None:
    service = server.app[SERVICE]
    spec = CampaignSpec.from_dict(
        {"name": "gw", "dataset": "small", "inner": {"steps": 2, "batch_size": 2, "seq_len": 32}, "codec": "int8"}
    )
    service.create_campaign(spec, owner="admin:1")
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        assert isinstance(await exchange(ws, hello()), Welcome)
        unit = await exchange(ws, RequestWork())
        assert isinstance(unit, WorkUnit), unit
        assert unit.recipe.steps == 2 and unit.codec["name"] == "int8"
        for ref in (unit.checkpoint, unit.data):
            data = b""
            while len(data) < ref.size:
                chunk = await exchange(ws, BlobRequest(sha256=ref.sha256, offset=len(data), length=64 * 1024))
                assert isinstance(chunk, BlobChunk) and chunk.total_size == ref.size
                data += chunk.data
            assert hashlib.sha256(data).hexdigest() == ref.sha256
        # A blob that isn't this volunteer's is not served, and nothing says whether it exists.
        error = await exchange(ws, BlobRequest(sha256="0" * 64, offset=0, length=10))
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.BLOB_NOT_FOUND
        assert (error.ref_type, error.ref_id) == ("blob_request", "0" * 64)
        past = await exchange(ws, BlobRequest(sha256=unit.data.sha256, offset=unit.data.size + 1, length=10))
        assert isinstance(past, ErrorMessage) and past.code == ErrorCode.BAD_RANGE


@pytest.fixture
async def holding(tmp_path: Path, small_dataset: Path) -> AsyncIterator[TestServer]:
    """A coordinator with its default hold of request_work while no campaign trains."""
    test_server = TestServer(create_app(CoordinatorConfig(data_dir=tmp_path / "c", datasets={"small": small_dataset})))
    await test_server.start_server()
    yield test_server
    await test_server.close()


async def test_a_request_for_work_made_before_any_campaign_is_answered_with_a_unit_when_one_opens(
    holding: TestServer,
) -> None:
    """Nobody sleeps out a 30 s retry while a client that ignores it polls and takes a new campaign's
    first units: the coordinator holds the request and answers it the moment a campaign starts."""
    service = holding.app[SERVICE]
    async with aiohttp.ClientSession() as session, session.ws_connect(holding.make_url("/ws")) as ws:
        assert isinstance(await exchange(ws, hello()), Welcome)
        await ws.send_bytes(encode(RequestWork()))
        # The session keeps reading while the request is held: a second one is answered at once.
        second = await exchange(ws, RequestWork())
        assert isinstance(second, NoWork) and second.retry_after_s == 30, second
        spec = CampaignSpec.from_dict(
            {"name": "late", "dataset": "small", "inner": {"steps": 2, "batch_size": 2, "seq_len": 32}}
        )
        service.create_campaign(spec, owner="admin:1")
        unit = await receive(ws)
        assert isinstance(unit, WorkUnit) and unit.campaign_name == "late", unit


async def test_a_held_request_for_work_is_answered_no_work_after_the_hold_with_the_rest_of_the_wait(
    tmp_path: Path, small_dataset: Path
) -> None:
    config = CoordinatorConfig(data_dir=tmp_path / "c", datasets={"small": small_dataset}, work_hold_s=0.5)
    server = TestServer(create_app(config))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
            assert isinstance(await exchange(ws, hello()), Welcome)
            began = time.monotonic()
            answer = await exchange(ws, RequestWork())
            waited = time.monotonic() - began
            assert isinstance(answer, NoWork) and "no campaign" in answer.reason
            assert waited >= 0.5 and answer.retry_after_s <= 29.5, (waited, answer)
    finally:
        await server.close()


async def test_a_banned_volunteer_is_refused(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.make_url("/ws")) as ws:
            welcome = await exchange(ws, hello())
            assert isinstance(welcome, Welcome)
        server.app[SERVICE].store.set_banned(welcome.volunteer_id, True)
        async with session.ws_connect(server.make_url("/ws")) as ws:
            error = await exchange(ws, hello(token=welcome.token))
            assert isinstance(error, ErrorMessage) and error.code == ErrorCode.BANNED


async def test_shutdown_tells_volunteers_and_closes_with_going_away(tmp_path: Path, small_dataset: Path) -> None:
    app = create_app(CoordinatorConfig(data_dir=tmp_path / "c", datasets={"small": small_dataset}))
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    async with aiohttp.ClientSession() as session, session.ws_connect(test_server.make_url("/ws")) as ws:
        assert isinstance(await exchange(ws, hello()), Welcome)
        await test_server.close()
        farewell = await receive(ws)
        assert isinstance(farewell, ErrorMessage) and farewell.code == ErrorCode.SERVER_SHUTTING_DOWN
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == CloseCode.GOING_AWAY


# --- Strangers are cheap: the handshake's limits --------------------------------------------------------


def test_the_largest_valid_hello_fits_the_limit_before_hello() -> None:
    wide = "\U0001f600"  # four bytes in UTF-8: the longest a printable name can be
    largest = Hello(
        protocol_version=PROTOCOL_VERSION,
        client_version="1" * MAX_VERSION_LEN,
        token="t" * MAX_TOKEN_LEN,
        name=wide * MAX_NAME_LEN,
        capabilities=Capabilities(
            devices=tuple(Device("cuda", wide * MAX_NAME_LEN, MAX_MEMORY_BYTES) for _ in range(MAX_DEVICES)),
            memory_bytes=MAX_MEMORY_BYTES,
            threads=MAX_THREADS,
            codecs=tuple(f"{i:02d}".ljust(MAX_KEY_LEN, "c") for i in range(MAX_CODECS)),
            platform=wide * MAX_NAME_LEN,
            runtimes=("torch", "onnxruntime"),
            unit_kinds=("train",),
        ),
    )
    assert len(encode(largest)) <= MAX_HELLO_FRAME_BYTES // 4


class RawSocket:
    """A WebSocket spoken by hand, so a test can send a frame header without its payload, or a frame a
    few bytes at a time. Frames go masked with the all-zero key: the payload travels as it is."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: TestServer) -> RawSocket:
        assert server.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    @staticmethod
    def header(length: int, opcode: int = 0x2) -> bytes:
        first = 0x80 | opcode
        if length < 126:
            size = bytes([0x80 | length])
        elif length < 1 << 16:
            size = bytes([0x80 | 126]) + length.to_bytes(2, "big")
        else:
            size = bytes([0x80 | 127]) + length.to_bytes(8, "big")
        return bytes([first]) + size + b"\x00\x00\x00\x00"

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, message: Message) -> None:
        frame = encode(message)
        await self.write(self.header(len(frame)) + frame)

    async def read(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next frame from the coordinator."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 10)
        length = second & 0x7F
        if length >= 126:
            length = int.from_bytes(await self.reader.readexactly(2 if length == 126 else 8), "big")
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(length), 10)

    async def receive(self) -> Message:
        opcode, payload = await self.read()
        assert opcode == 0x2, (opcode, payload)
        return decode(payload, direction="to_client")

    async def close_code(self) -> int:
        opcode, payload = await self.read()
        assert opcode == 0x8, (opcode, payload)
        return int.from_bytes(payload[:2], "big")

    def close(self) -> None:
        self.writer.close()


async def test_a_large_frame_before_hello_is_refused_from_its_header_alone(server: TestServer) -> None:
    raw = await RawSocket.open(server)
    try:
        # Only the header of a 64 MiB frame goes out: the refusal can't be waiting for the payload.
        await raw.write(raw.header(64 << 20) + b"\x00" * 100)
        error = await raw.receive()
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.FRAME_TOO_LARGE and error.fatal
        assert str(MAX_HELLO_FRAME_BYTES) in error.message and "hello" in error.message
        assert await raw.close_code() == CloseCode.MESSAGE_TOO_BIG
    finally:
        raw.close()


async def test_a_message_fragmented_past_the_limit_before_hello_is_refused(server: TestServer) -> None:
    raw = await RawSocket.open(server)
    try:
        chunk = b"\x00" * (MAX_HELLO_FRAME_BYTES // 2)
        first = bytes([0x02, 0x80 | 127]) + len(chunk).to_bytes(8, "big") + b"\x00" * 4  # binary, not final
        more = bytes([0x00, 0x80 | 127]) + len(chunk).to_bytes(8, "big") + b"\x00" * 4  # continuation
        await raw.write(first + chunk + more + chunk + more)
        error = await raw.receive()
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.FRAME_TOO_LARGE
        assert await raw.close_code() == CloseCode.MESSAGE_TOO_BIG
    finally:
        raw.close()


async def test_after_welcome_frames_up_to_the_full_limit_are_taken(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        welcome = await exchange(ws, hello())
        assert isinstance(welcome, Welcome) and welcome.max_frame_bytes == MAX_FRAME_BYTES
        await ws.send_bytes(b"\xc1" * (4 * MAX_HELLO_FRAME_BYTES))  # read whole, then refused as msgpack
        error = await receive(ws)
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.MALFORMED_FRAME and not error.fatal
        assert isinstance(await exchange(ws, RequestWork()), NoWork)


async def test_no_hello_in_time_is_an_idle_timeout(server: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gateway, "HELLO_TIMEOUT_S", 0.5)
    raw = await RawSocket.open(server)
    try:
        await raw.write(raw.header(1000)[:2])  # half a header, then nothing
        error = await raw.receive()
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.IDLE_TIMEOUT and error.fatal
        assert "hello" in error.message
        assert await raw.close_code() == CloseCode.IDLE_TIMEOUT
    finally:
        raw.close()


@pytest.fixture
async def quick(tmp_path: Path, small_dataset: Path) -> AsyncIterator[TestServer]:
    """A coordinator that wants a frame every second and closes a connection silent for two."""
    config = CoordinatorConfig(
        data_dir=tmp_path / "c",
        datasets={"small": small_dataset},
        heartbeat_interval_s=1.0,
        idle_timeout_s=2.0,
        work_hold_s=0.0,
    )
    test_server = TestServer(create_app(config), host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await test_server.close()


async def test_a_silent_session_is_closed_on_the_idle_deadline_and_pings_do_not_count(quick: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(quick.make_url("/ws"), autoping=True) as ws:
        welcome = await exchange(ws, hello())
        assert isinstance(welcome, Welcome) and welcome.heartbeat_interval_s == 1.0
        began = time.monotonic()

        async def ping() -> None:
            while not ws.closed:
                await ws.ping()
                await asyncio.sleep(0.3)

        pinger = asyncio.create_task(ping())
        try:
            error = await receive(ws)
        finally:
            pinger.cancel()
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.IDLE_TIMEOUT and error.fatal
        assert "keepalive" in error.message
        assert 1.5 < time.monotonic() - began < 10
        closing = await ws.receive(timeout=10)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == CloseCode.IDLE_TIMEOUT


async def test_keepalive_keeps_a_quiet_session_open(quick: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(quick.make_url("/ws")) as ws:
        assert isinstance(await exchange(ws, hello()), Welcome)
        for _ in range(12):  # 4.8 s: more than twice the deadline
            await ws.send_bytes(encode(Keepalive()))
            await asyncio.sleep(0.4)
        assert isinstance(await exchange(ws, RequestWork()), NoWork)  # no reply to keepalive came before


async def test_keepalive_before_hello_is_an_unexpected_message(quick: TestServer) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(quick.make_url("/ws")) as ws:
        error = await exchange(ws, Keepalive())
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.UNEXPECTED_MESSAGE and error.fatal


async def test_a_slow_upload_is_not_silence_but_a_stalled_one_is(quick: TestServer) -> None:
    raw = await RawSocket.open(quick)
    try:
        await raw.send(hello())
        assert isinstance(await raw.receive(), Welcome)
        chunk = b"\xc1" * (64 * 1024)
        await raw.write(raw.header(len(chunk) * 12))
        for _ in range(12):  # 4.8 s for one frame, more than twice the deadline, and bytes keep coming
            await raw.write(chunk)
            await asyncio.sleep(0.4)
        error = await raw.receive()
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.MALFORMED_FRAME and not error.fatal
        # Now a frame that stops coming: its header, a few bytes, then nothing.
        await raw.write(raw.header(1 << 20) + chunk[:10])
        error = await raw.receive()
        assert isinstance(error, ErrorMessage) and error.code == ErrorCode.IDLE_TIMEOUT
        assert await raw.close_code() == CloseCode.IDLE_TIMEOUT
    finally:
        raw.close()


# --- Registration limits and connections per source ------------------------------------------------------


@pytest.fixture
async def limited(tmp_path: Path, small_dataset: Path) -> AsyncIterator[TestServer]:
    """Each 127.0.0.N its own source, loopback limited: 2 registrations at once, then 1 a minute; 2
    volunteers connected per source."""
    config = CoordinatorConfig(
        data_dir=tmp_path / "c",
        datasets={"small": small_dataset},
        sources=SourcePolicy(v4_bits=32, limit_loopback=True),
        admission=AdmissionConfig(registration_burst=2, registrations_per_minute=1, max_connected_per_source=2),
    )
    test_server = TestServer(create_app(config), host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await test_server.close()


async def hello_from(server: TestServer, local: str, token: str | None = None) -> Message:
    """The reply to a hello from address `local`, on a connection closed right after."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local, 0))) as session,
        session.ws_connect(server.make_url("/ws")) as ws,
    ):
        reply = await exchange(ws, hello(token=token))
        if isinstance(reply, ErrorMessage) and reply.fatal:
            closing = await ws.receive(timeout=10)
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == int(close_code_for(reply.code))
        return reply


async def test_registrations_from_one_source_are_rate_limited_and_other_sources_are_not(limited: TestServer) -> None:
    first = await hello_from(limited, "127.0.0.2")
    second = await hello_from(limited, "127.0.0.2")
    assert isinstance(first, Welcome) and isinstance(second, Welcome)
    refused = await hello_from(limited, "127.0.0.2")
    assert isinstance(refused, ErrorMessage) and refused.code == ErrorCode.RATE_LIMITED and refused.fatal
    assert refused.retry_after_s is not None and 50 <= refused.retry_after_s <= 60
    assert "127.0.0.2/32" in refused.message and "try again in 60 s" in refused.message
    # Another source has its own allowance; a volunteer with a token never meets this limit.
    assert isinstance(await hello_from(limited, "127.0.0.3"), Welcome)
    assert isinstance(await hello_from(limited, "127.0.0.2", token=first.token), Welcome)
    # Nothing was registered for the refused hello.
    assert len(limited.app[SERVICE].store.volunteers()) == 3


async def test_a_source_may_keep_only_so_many_volunteers_connected_at_once(limited: TestServer) -> None:
    url = limited.make_url("/ws")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.4", 0))) as session:
        async with session.ws_connect(url) as one, session.ws_connect(url) as two:
            a, b = await exchange(one, hello()), await exchange(two, hello())
            assert isinstance(a, Welcome) and isinstance(b, Welcome)
            async with session.ws_connect(url) as three:
                refused = await exchange(three, hello())
                assert isinstance(refused, ErrorMessage) and refused.code == ErrorCode.RATE_LIMITED
                assert refused.fatal and refused.retry_after_s == 60
                assert "2 volunteers from your network (127.0.0.4/32)" in refused.message
            async with session.ws_connect(url) as again:  # a volunteer replacing its own connection is no crowd
                assert isinstance(await exchange(again, hello(token=b.token)), Welcome)
        # Once they left there is room again.
        assert isinstance(await hello_from(limited, "127.0.0.4", token=a.token), Welcome)


async def test_loopback_is_exempt_from_the_limits_by_default(server: TestServer) -> None:
    replies = [await hello_from(server, "127.0.0.1") for _ in range(25)]  # past the default burst of 20
    assert all(isinstance(reply, Welcome) for reply in replies)


# --- The HTTP side --------------------------------------------------------------------------------------


async def test_a_request_with_an_oversized_header_line_gets_400_and_no_traceback_in_the_log(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert server.port is not None
    caplog.set_level(logging.DEBUG)
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        assert status.startswith(b"HTTP/1.") and b" 400 " in status, status
        writer.close()
    lines = [r for r in caplog.records if r.name == "coordinator.http"]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines), [r.getMessage() for r in lines]
    assert len(lines) <= 1 and "Traceback" not in caplog.text
    # A real request still works.
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/api/health")) as response:
        assert response.status == 200


def test_bad_requests_are_logged_as_one_short_line_at_most_every_ten_seconds() -> None:
    from aiohttp.http_exceptions import LineTooLong

    from coordinator.app import QuietBadRequests

    now = [100.0]
    quiet = QuietBadRequests(clock=lambda: now[0])

    def record(error: BaseException | None) -> logging.LogRecord:
        exc_info = (type(error), error, None) if error is not None else None
        return logging.LogRecord("coordinator.http", logging.ERROR, __file__, 1, "Error handling request from %s",
                                 ("192.0.2.7",), exc_info)  # fmt: skip

    first = record(LineTooLong(b"a" * 100, "8190", "9000"))
    assert quiet.filter(first) and first.exc_info is None and first.levelno == logging.WARNING
    assert first.getMessage().startswith("refused a malformed HTTP request from 192.0.2.7: ")
    assert not quiet.filter(record(LineTooLong(b"", "8190", "9000")))  # within ten seconds: held back
    now[0] += 10
    third = record(LineTooLong(b"", "8190", "9000"))
    assert quiet.filter(third) and third.getMessage().endswith("(and 1 more since the last such line)")
    other = record(RuntimeError("a bug"))  # the server's own failures keep their traceback
    assert quiet.filter(other) and other.exc_info is not None and other.levelno == logging.ERROR
