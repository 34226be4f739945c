"""The volunteer WebSocket endpoint over real loopback sockets: handshake, errors, blobs, work."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgpack
import pytest
from aiohttp.test_utils import TestServer

from coordinator.app import create_app
from coordinator.appkeys import SERVICE
from coordinator.campaign import CampaignSpec
from coordinator.service import CoordinatorConfig
from protocol.errors import CloseCode, ErrorCode
from protocol.messages import (
    BlobChunk,
    BlobRequest,
    Capabilities,
    Device,
    ErrorMessage,
    Hello,
    Message,
    NoWork,
    RequestWork,
    Welcome,
    WorkUnit,
    decode,
    encode,
)
from protocol.version import PROTOCOL_VERSION


def hello(token: str | None = None, version: int = PROTOCOL_VERSION) -> Hello:
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
        ),
    )


@pytest.fixture
async def server(tmp_path: Path, small_dataset: Path) -> AsyncIterator[TestServer]:
    app = create_app(CoordinatorConfig(data_dir=tmp_path / "c", datasets={"small": small_dataset}))
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
