"""The volunteer protocol spoken to a real coordinator process with nothing but raw WebSocket and
MessagePack: every frame and every update payload here is built from docs/protocol.md alone.

This module never imports the project's `protocol`, `coordinator`, `volunteer_app` or `training`
packages: it is an independent client, so a place where the coordinator and the document disagree
shows up here, not in the reference implementation agreeing with itself. Only the harness
(tests/support/live.py, and the conftest's prepared dataset) starts the coordinator.

Each test opens its own connections and registers its own volunteers; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.live import LiveCoordinator, live_coordinator, poll

# --- Constants, from docs/protocol.md ----------------------------------------------------------

VERSION = 5  # "Protocol version the frame is written in: 5"
MAX_FRAME_BYTES = 68157440  # limits table
MAX_HELLO_FRAME_BYTES = 65536
MAX_BLOB_CHUNK_BYTES = 4194304
MAX_INFLIGHT_BLOB_REQUESTS = 8

CLOSE_NORMAL = 1000
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_UNAUTHORIZED = 4401
CLOSE_BANNED = 4403
CLOSE_IDLE_TIMEOUT = 4408
CLOSE_RATE_LIMITED = 4429
CLOSE_SESSION_REPLACED = 4409
CLOSE_VERSION_MISMATCH = 4426
# "Close codes": the close code after a fatal error with each code; any other code closes with 1008.
CLOSE_AFTER = {
    "server_shutting_down": 1001,
    "frame_too_large": CLOSE_MESSAGE_TOO_BIG,
    "internal_error": 1011,
    "unauthorized": CLOSE_UNAUTHORIZED,
    "banned": CLOSE_BANNED,
    "idle_timeout": CLOSE_IDLE_TIMEOUT,
    "session_replaced": CLOSE_SESSION_REPLACED,
    "version_mismatch": CLOSE_VERSION_MISMATCH,
    "rate_limited": CLOSE_RATE_LIMITED,
}

UPDATE_VERDICTS = {
    "update_too_large",
    "checksum_mismatch",
    "bad_encoding",
    "shape_mismatch",
    "non_finite",
    "norm_outlier",
    "direction_outlier",
    "implausible_loss",
    "replication_mismatch",
    "holdout_regression",
    "stale_update",
    "campaign_closed",
}
# The verdicts about an update's values, reached only once it decoded against the unit's declaration.
VALUE_VERDICTS = {
    "norm_outlier",
    "direction_outlier",
    "implausible_loss",
    "replication_mismatch",
    "holdout_regression",
    "not_from_unit",
    "stale_update",
    "campaign_closed",
}
ERROR_CODES = UPDATE_VERDICTS | {
    "malformed_frame",
    "frame_too_large",
    "unknown_type",
    "schema_violation",
    "version_mismatch",
    "unexpected_message",
    "idle_timeout",
    "unauthorized",
    "banned",
    "session_replaced",
    "unsupported_codec",
    "unknown_unit",
    "lease_expired",
    "not_your_lease",
    "duplicate_submission",
    "blob_not_found",
    "bad_range",
    "rate_limited",
    "server_shutting_down",
    "internal_error",
}

# Fields of every coordinator → volunteer message (required, optional), from the message tables.
RECEIVED: dict[str, tuple[set[str], set[str]]] = {
    "welcome": (
        {
            "volunteer_id",
            "token",
            "server_version",
            "heartbeat_interval_s",
            "max_frame_bytes",
            "dashboard_url",
            "credit_total",
        },
        set(),
    ),
    "work_unit": (
        {
            "kind",
            "runtime",
            "unit_id",
            "lease_id",
            "lease_deadline",
            "campaign_id",
            "campaign_name",
            "model_version",
            "model",
            "checkpoint",
            "checkpoint_format",
            "data",
            "data_dtype",
            "data_tokens",
            "shard",
            "shard_shapes",
            "recipe",
            "seed",
            "codec",
            "max_update_bytes",
        },
        {"graph", "deltas", "moments", "private"},
    ),
    "no_work": ({"retry_after_s", "reason"}, set()),
    "blob_chunk": ({"sha256", "offset", "total_size", "data"}, set()),
    "lease_extended": ({"unit_id", "lease_id", "lease_deadline"}, set()),
    "result": ({"unit_id", "lease_id", "status", "code", "message", "credit"}, set()),
    "error": ({"code", "message", "fatal"}, {"ref_type", "ref_id", "retry_after_s"}),
}
RECIPE_FIELDS = {
    "steps",
    "batch_size",
    "seq_len",
    "grad_accum",
    "lr",
    "min_lr_ratio",
    "warmup_steps",
    "total_steps",
    "global_step",
    "weight_decay",
    "grad_clip",
    "beta1",
    "beta2",
    "eps",
    "unit_warmup_steps",
    "shared_moments",
}
MODEL_CONFIG_FIELDS = {"vocab_size", "d_model", "n_layer", "n_head", "d_ff", "max_seq_len", "rope_theta", "norm_eps"}

# Patterns of the message tables ("Patterns must match the whole string").
ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")
VERSION_STRING = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]*")
URL = re.compile(r"https?://[!-~]+")
SHA256 = re.compile(r"[0-9a-f]{64}")
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")

# "Update payloads (tensor frames)": header, ids.
MAGIC = b"CWTF"
FORMAT_VERSION = 1
CODEC_IDS = {"fp32": 1, "fp16": 2, "bf16": 3, "int8": 4, "topk": 5, "dct": 6}
DTYPE_FLOAT32 = 1
INT8_DEFAULT_BLOCK = 256

WAIT_S = 10.0  # a bound on one reply, never a sleep
SUBMIT_WAIT_S = 30.0  # a result comes once the verdict is durable: a decode, validation and a commit


# --- Frames --------------------------------------------------------------------------------------


def pack(message: object) -> bytes:
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def frame(kind: str, **fields: Any) -> dict[str, Any]:
    """The envelope first (`type`, `v`), then the fields in the order given."""
    return {"type": kind, "v": VERSION, **fields}


def hello(*, token: str | None = None, codecs: Sequence[str] = ("int8",), name: str = "conformance") -> dict[str, Any]:
    memory = 4 << 30
    return frame(
        "hello",
        protocol_version=VERSION,
        client_version="0.0.1+conformance",
        token=token,
        name=name,
        capabilities={
            "devices": [{"kind": "cpu", "name": "Conformance CPU", "memory_bytes": memory}],
            "memory_bytes": memory,
            "threads": 1,
            "codecs": list(codecs),
            "platform": "linux-x86_64",
            "runtimes": ["torch"],
            "unit_kinds": ["train"],
        },
    )


def is_number(value: object) -> bool:
    """A float field "also accepts an integer"; a bool is never a number."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_received(message: object) -> dict[str, Any]:
    """The envelope and the field set of a coordinator frame, as the message tables give them."""
    assert isinstance(message, dict), f"a frame is one MessagePack map, got {message!r}"
    assert all(isinstance(key, str) for key in message), message
    kind, v = message.get("type"), message.get("v")
    assert isinstance(kind, str) and kind in RECEIVED, f"not a coordinator → volunteer message: {message!r}"
    assert isinstance(v, int) and not isinstance(v, bool), message
    if kind != "error":  # an error frame has the same shape in every version
        assert v == VERSION, message
    required, optional = RECEIVED[kind]
    fields = set(message) - {"type", "v"}
    assert required <= fields, f"{kind} lacks {sorted(required - fields)}: {message!r}"
    assert fields <= required | optional, f"{kind} has unknown fields {sorted(fields - required - optional)}"
    if kind == "error":
        assert message["code"] in ERROR_CODES, message
        assert isinstance(message["message"], str) and 1 <= len(message["message"]) <= 1024, message
        assert isinstance(message["fatal"], bool), message
    if kind == "welcome":
        assert ID.fullmatch(message["volunteer_id"]) and VERSION_STRING.fullmatch(message["server_version"]), message
        assert message["token"] is None or TOKEN.fullmatch(message["token"]), message
        assert message["dashboard_url"] is None or URL.fullmatch(message["dashboard_url"]), message
    if kind == "work_unit":
        for key in ("unit_id", "lease_id", "campaign_id"):
            assert ID.fullmatch(message[key]), (key, message[key])
        for ref in (message["checkpoint"], message["data"]):
            assert set(ref) == {"sha256", "size"} and SHA256.fullmatch(ref["sha256"]), ref
        assert all(PARAM_NAME.fullmatch(name) for name in message["shard"]), message["shard"]
    if kind == "result":
        assert message["status"] in {"accepted", "rejected", "duplicate"}, message
        assert (message["code"] is None) == (message["status"] == "accepted"), message
        if message["status"] == "duplicate":
            assert message["code"] == "duplicate_submission", message
        assert is_number(message["credit"]) and message["credit"] >= 0, message
    return message


class Peer:
    """One WebSocket connection speaking MessagePack frames; every receive is bounded."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.ws.send(pack(message))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = WAIT_S) -> dict[str, Any]:
        data = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(data, bytes), f"every protocol message is one binary WebSocket message, got {data!r}"
        return check_received(msgpack.unpackb(data, raw=False, strict_map_key=True))

    async def expect(self, kind: str, timeout: float = WAIT_S) -> dict[str, Any]:
        message = await self.recv(timeout)
        assert message["type"] == kind, f"expected {kind}, got {message!r}"
        return message

    async def expect_error(self, code: str, timeout: float = WAIT_S) -> dict[str, Any]:
        message = await self.expect("error", timeout)
        assert message["code"] == code, f"expected error {code}, got {message!r}"
        return message

    async def close_code(self, timeout: float = WAIT_S) -> int | None:
        """The close code the coordinator sent (1006 when it sent none), once the connection is closed."""
        await asyncio.wait_for(self.ws.wait_closed(), timeout)
        return self.ws.close_code

    async def fatal(self, code: str, close_code: int) -> dict[str, Any]:
        """A fatal `error` with `code`, then the close with `close_code`."""
        error = await self.expect_error(code)
        assert error["fatal"] is True, error
        assert await self.close_code() == close_code
        return error


@asynccontextmanager
async def connected(url: str, *, local: str | None = None) -> AsyncIterator[Peer]:
    """A WebSocket to `url`, from the local address `local` when given (127.0.0.N: a source of its own)."""
    # No permessage-deflate ("Clients should not offer it"); room for the largest frame.
    bind: dict[str, Any] = {"local_addr": (local, 0)} if local else {}
    async with connect(
        url, compression=None, max_size=MAX_FRAME_BYTES, open_timeout=WAIT_S, close_timeout=WAIT_S, **bind
    ) as ws:
        yield Peer(ws)


@asynccontextmanager
async def volunteer(
    url: str, *, token: str | None = None, codecs: Sequence[str] = ("int8",), local: str | None = None
) -> AsyncIterator[tuple[Peer, dict[str, Any]]]:
    """A connection past its handshake: (peer, welcome)."""
    async with connected(url, local=local) as peer:
        await peer.send(hello(token=token, codecs=codecs))
        welcome = await peer.expect("welcome")
        yield peer, welcome


async def lease(peer: Peer) -> dict[str, Any]:
    await peer.send(frame("request_work", preferred_campaign=None))
    unit = await peer.recv()
    assert unit["type"] == "work_unit", f"the campaigns have units to lease, got {unit!r}"
    return unit


async def download(peer: Peer, ref: Mapping[str, Any], chunk: int) -> bytes:
    """A whole blob by `blob_request`, pipelined up to MAX_INFLIGHT_BLOB_REQUESTS, replies matched by offset."""
    sha, size = ref["sha256"], ref["size"]
    assert 1 <= chunk <= MAX_BLOB_CHUNK_BYTES
    buffer = bytearray(size)
    received = 0
    wanted = list(range(0, size, chunk))
    pending: dict[int, int] = {}  # offset → length asked
    while wanted or pending:
        while wanted and len(pending) < MAX_INFLIGHT_BLOB_REQUESTS:
            offset = wanted.pop(0)
            length = min(chunk, size - offset)
            pending[offset] = length
            await peer.send(frame("blob_request", sha256=sha, offset=offset, length=length))
        reply = await peer.expect("blob_chunk")
        assert reply["sha256"] == sha and reply["total_size"] == size, reply
        offset, data = reply["offset"], reply["data"]
        assert isinstance(data, bytes) and offset in pending, reply
        assert len(data) <= pending.pop(offset) and offset + len(data) <= size
        assert data, "data is empty only at the end of the blob"
        buffer[offset : offset + len(data)] = data
        received += len(data)
        if len(data) < min(chunk, size - offset):  # fewer bytes than asked: continue from the first missing
            wanted.insert(0, offset + len(data))
    assert received == size  # the chunks asked for never overlap
    return bytes(buffer)


# --- Update payloads ("Update payloads (tensor frames)") -----------------------------------------


def int8_groups(flat: np.ndarray, block: int) -> bytes:
    """int8 payload: ceil(n/B) f32 scales, then n i8 values; absmax quantization per block."""
    n = flat.size
    nb = -(-n // block)
    padded = np.zeros(nb * block, dtype=np.float32)
    padded[:n] = flat
    blocks = padded.reshape(nb, block)
    scales = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)  # f32 arithmetic
    divisor = np.where(scales == 0, np.float32(1), scales).astype(np.float32)
    q = np.rint(blocks / divisor[:, None])  # f32 division, then round half to even
    q = np.clip(q, -127, 127)
    q[scales == 0] = 0
    return bytes(scales.astype("<f4").tobytes() + q.reshape(-1)[:n].astype(np.int8).tobytes())


def encode_update(codec: Mapping[str, Any], tensors: Sequence[tuple[str, Sequence[int], np.ndarray]]) -> bytes:
    """A tensor frame of `tensors` (name, shape, Δ) with the unit's `codec` map (fp32 or int8)."""
    name = codec["name"]
    out = bytearray(MAGIC + struct.pack("<HBB", FORMAT_VERSION, CODEC_IDS[name], 0))
    block = 0
    if name == "int8":
        block = int(codec.get("block_size", INT8_DEFAULT_BLOCK))
        out += struct.pack("<I", block)
    elif name != "fp32":
        raise NotImplementedError(name)
    out += struct.pack("<I", len(tensors))
    for tensor_name, shape, values in tensors:
        flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        assert flat.size == math.prod(shape)
        payload = flat.astype("<f4").tobytes() if name == "fp32" else int8_groups(flat, block)
        encoded = tensor_name.encode("utf-8")
        out += struct.pack("<H", len(encoded)) + encoded
        out += struct.pack("<BB", DTYPE_FLOAT32, len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
        out += struct.pack("<Q", len(payload)) + payload
    return bytes(out)


def random_update(unit: Mapping[str, Any], scale: float = 1e-3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    tensors = [
        (name, unit["shard_shapes"][name], (rng.standard_normal(math.prod(unit["shard_shapes"][name])) * scale))
        for name in unit["shard"]
    ]
    return encode_update(unit["codec"], tensors)


def metrics(unit: Mapping[str, Any]) -> dict[str, Any]:
    """Plausible metrics: losses a little below ln(vocab_size) (an untrained model), falling."""
    recipe, config = unit["recipe"], unit["model"]["config"]
    start = math.log(config["vocab_size"])
    return {
        "losses": [start - 0.01 * step for step in range(recipe["steps"])],
        "tokens": recipe["steps"] * recipe["grad_accum"] * recipe["batch_size"] * recipe["seq_len"],
        "seconds": 1.5,
        "device": "cpu",
        "device_name": "Conformance CPU",
        "runtime": "torch",
        "peak_memory_bytes": None,
    }


def submit(
    unit: Mapping[str, Any], update: bytes, *, sha: str | None = None, lease_id: str | None = None
) -> dict[str, Any]:
    return frame(
        "submit",
        unit_id=unit["unit_id"],
        lease_id=lease_id or unit["lease_id"],
        update=update,
        update_sha256=sha or hashlib.sha256(update).hexdigest(),
        metrics=metrics(unit),
    )


def progress(unit: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    fields = {
        "unit_id": unit["unit_id"],
        "lease_id": unit["lease_id"],
        "step": 0,
        "steps_total": unit["recipe"]["steps"],
        "loss": None,
        "tokens": 0,
        "phase": "downloading",
    }
    return frame("progress", **{**fields, **overrides})


async def expect_result(peer: Peer, unit: Mapping[str, Any], lease_id: str | None = None) -> dict[str, Any]:
    result = await peer.expect("result", SUBMIT_WAIT_S)
    assert result["unit_id"] == unit["unit_id"] and result["lease_id"] == (lease_id or unit["lease_id"]), result
    return result


# --- Moments frames ("Shared moments") -----------------------------------------------------------


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """bf16: "the upper 16 bits of x[i]'s binary32 pattern after rounding to nearest, ties to even"."""
    u = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(values: np.ndarray) -> np.ndarray:
    """What a bf16 payload decodes to: "u16 << 16 read as an f32"."""
    return (bf16_bits(values).astype(np.uint32) << 16).view(np.float32)


def moments_records(shapes: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """The records of a moments frame for parameters `shapes`, in their order: `p:rows` [n] and
    `p:cols` [m] for a parameter of shape [n, d1, ...] (m = d1·...), `p` [numel] for rank 0 or 1."""
    records: dict[str, list[int]] = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            records[f"{name}:rows"] = [shape[0]]
            records[f"{name}:cols"] = [math.prod(shape[1:])]
        else:
            records[name] = [math.prod(shape)]
    return records


def encode_moments(
    records: Mapping[str, Sequence[int]],
    values: Mapping[str, np.ndarray],
    *,
    codec_id: int = CODEC_IDS["bf16"],
    dtype_id: int = DTYPE_FLOAT32,
) -> bytes:
    """A moments frame: a tensor frame with the bf16 codec (id 3, no parameters), one record per entry.

    The record dtype id is not stated for moments frames; "every record has dtype id 1 (float32),
    whatever the codec" is said of updates, and this follows it."""
    out = bytearray(MAGIC + struct.pack("<HBB", FORMAT_VERSION, codec_id, 0))
    out += struct.pack("<I", len(records))
    for name, shape in records.items():
        flat = np.ascontiguousarray(values[name], dtype=np.float32).reshape(-1)
        assert flat.size == math.prod(shape)
        payload = flat.astype("<f4").tobytes() if codec_id == CODEC_IDS["fp32"] else bf16_bits(flat).tobytes()
        encoded = name.encode("utf-8")
        out += struct.pack("<H", len(encoded)) + encoded
        out += struct.pack("<BB", dtype_id, len(shape)) + struct.pack(f"<{len(shape)}I", *shape)
        out += struct.pack("<Q", len(payload)) + payload
    return bytes(out)


def random_moments(records: Mapping[str, Sequence[int]], seed: int) -> dict[str, np.ndarray]:
    """Plausible second moments: positive, small, different per record and element."""
    rng = np.random.default_rng(seed)
    return {name: (10.0 ** rng.uniform(-9, -3, math.prod(shape))).astype(np.float32) for name, shape in records.items()}


def read_bf16_frame(data: bytes) -> list[tuple[str, int, list[int], np.ndarray]]:
    """A bf16 tensor frame as "Frame layout" describes it: (name, dtype id, shape, float32 values) per
    record, in frame order."""
    assert data[:4] == MAGIC, data[:16]
    version, codec_id, flags = struct.unpack_from("<HBB", data, 4)
    assert (version, codec_id, flags) == (FORMAT_VERSION, CODEC_IDS["bf16"], 0), (version, codec_id, flags)
    out = []
    for name, dtype, shape, offset, size in frame_records(data, 8):
        n = math.prod(shape)
        assert size == 2 * n, (name, size, n)
        bits = np.frombuffer(data, dtype="<u2", count=n, offset=offset).astype(np.uint32)
        out.append((name, dtype, shape, (bits << 16).view(np.float32)))
    return out


def frame_records(data: bytes, count_at: int) -> Iterator[tuple[str, int, list[int], int, int]]:
    """The records of a tensor frame whose tensor count is at `count_at` ("Frame layout"): name, dtype id,
    shape, and where its payload starts and how long it is; nothing may follow the last one."""
    (count,) = struct.unpack_from("<I", data, count_at)
    offset = count_at + 4
    for _ in range(count):
        (name_length,) = struct.unpack_from("<H", data, offset)
        name = data[offset + 2 : offset + 2 + name_length].decode("utf-8")
        offset += 2 + name_length
        dtype, ndim = struct.unpack_from("<BB", data, offset)
        shape = list(struct.unpack_from(f"<{ndim}I", data, offset + 2))
        (size,) = struct.unpack_from("<Q", data, offset + 2 + 4 * ndim)
        offset += 2 + 4 * ndim + 8
        yield name, dtype, shape, offset, size
        offset += size
    assert offset == len(data), "nothing follows the last record"


def submit_with_moments(unit: Mapping[str, Any], update: bytes, moments: bytes) -> dict[str, Any]:
    return {**submit(unit, update), "moments": moments}


# --- Checkpoint deltas ("Checkpoint deltas") -------------------------------------------------------


def read_int8_frame(data: bytes) -> dict[str, tuple[list[int], np.ndarray]]:
    """An int8 tensor frame: name → (shape, dequantized float32 values), as "Frame layout" describes it."""
    assert data[:4] == MAGIC
    version, codec_id, _flags = struct.unpack_from("<HBB", data, 4)
    assert (version, codec_id) == (FORMAT_VERSION, CODEC_IDS["int8"])
    (block,) = struct.unpack_from("<I", data, 8)
    out = {}
    for name, dtype, shape, offset, size in frame_records(data, 12):
        n = math.prod(shape)
        blocks = -(-n // block)
        scales = np.frombuffer(data, dtype="<f4", count=blocks, offset=offset)
        q = np.frombuffer(data, dtype=np.int8, count=n, offset=offset + 4 * blocks).astype(np.float32)
        assert dtype == DTYPE_FLOAT32 and size == 4 * blocks + n
        # "Dequantized values are q * scale computed in float32", each block with its own scale.
        values = q * np.repeat(scales, block)[:n]
        out[name] = (shape, values.astype(np.float32))
    return out


def read_canonical_checkpoint(data: bytes) -> dict[str, tuple[list[int], np.ndarray]]:
    (length,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8 : 8 + length])
    return {
        name: (
            entry["shape"],
            np.frombuffer(
                data[8 + length + entry["data_offsets"][0] : 8 + length + entry["data_offsets"][1]], dtype="<f4"
            ),
        )
        for name, entry in header.items()
    }


def write_canonical_checkpoint(tensors: Mapping[str, tuple[list[int], np.ndarray]]) -> bytes:
    """Names in ascending byte order, compact JSON, spaces to a multiple of 8, then the float32 values."""
    header, offset = {}, 0
    names = sorted(tensors, key=lambda name: name.encode("utf-8"))
    for name in names:
        shape, values = tensors[name]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * values.size]}
        offset += 4 * values.size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(tensors[name][1].astype("<f4").tobytes() for name in names)


# --- The coordinator -------------------------------------------------------------------------------


def campaign_spec(name: str, codec: str) -> dict[str, Any]:
    return {
        "name": name,
        "dataset": "small",
        "model": "tiny",
        "codec": codec,
        "token_budget": 10_000_000,
        "inner": {"steps": 2, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
        # Many units and a high bar: every test leases its own, and no round closes under the tests.
        "rounds": {"units_per_round": 40, "min_accepted": 40},
        "validation": {"replication_rate": 0.0},
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> Iterator[LiveCoordinator]:
    with live_coordinator(tmp_path_factory.mktemp("conformance"), small_dataset) as live:
        for codec in ("int8", "fp32"):
            status, body = live.call(
                "POST", "/api/campaigns", token=live.admin_token, body=campaign_spec(f"conformance-{codec}", codec)
            )
            assert status == 201, body
        yield live
        log = live.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]


# --- Self-checks of this client against the document's own bytes ----------------------------------


def test_the_progress_frame_is_the_documented_bytes() -> None:
    documented = bytes.fromhex(
        "89 a4 74 79 70 65 a8 70 72 6f 67 72 65 73 73 a1 76 05 a7 75 6e 69 74 5f 69 64 a4 75 2d 34 32 a8"
        "6c 65 61 73 65 5f 69 64 a6 6c 2d 34 32 2d 31 a4 73 74 65 70 02 ab 73 74 65 70 73 5f 74 6f 74 61"
        "6c 04 a4 6c 6f 73 73 cb 40 21 70 a3 d7 0a 3d 71 a6 74 6f 6b 65 6e 73 cd 01 00 a5 70 68 61 73 65"
        "a8 74 72 61 69 6e 69 6e 67"
    )
    unit = {"unit_id": "u-42", "lease_id": "l-42-1", "recipe": {"steps": 4}}
    assert pack(progress(unit, step=2, loss=8.72, tokens=256, phase="training")) == documented


def test_the_update_encoder_writes_the_documented_fp32_and_int8_frames() -> None:
    fp32 = encode_update(
        {"name": "fp32"},
        [
            ("fc.weight", [2, 2], np.array([[0.5, -1.0], [2.0, 0.25]])),
            ("fc.bias", [2], np.array([1.0, -0.5])),
        ],
    )
    assert len(fp32) == 88
    assert hashlib.sha256(fp32).hexdigest() == "1615b2e06ec0fc40ccf9ffef66839df4af5b05e9116b890e0fbf202058d0251c"
    int8 = encode_update(
        {"name": "int8", "block_size": 4},
        [("fc.weight", [2, 3], np.array([[63.5, -1.75, 1.25], [0.2, -31.75, 0.125]]))],
    )
    assert int8 == bytes.fromhex(
        "43 57 54 46 01 00 04 00 04 00 00 00 01 00 00 00 09 00 66 63 2e 77 65 69 67 68 74 01 02 02 00 00"
        "00 03 00 00 00 0e 00 00 00 00 00 00 00 00 00 00 3f 00 00 80 3e 7f fc 02 00 81 00"
    )


# --- Handshake ----------------------------------------------------------------------------------------


async def test_a_new_volunteer_gets_a_token_and_a_returning_one_gets_none(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (_, first):
        token = first["token"]
        assert isinstance(token, str) and 1 <= len(token) <= 256, first
        assert 1 <= first["heartbeat_interval_s"] <= 3600 and 1048576 <= first["max_frame_bytes"] <= MAX_FRAME_BYTES
    async with volunteer(server.ws, token=token) as (_, again):
        assert again["token"] is None, again
        assert again["volunteer_id"] == first["volunteer_id"], (first, again)


async def test_a_second_connection_with_the_same_token_replaces_the_first(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (older, welcome), volunteer(server.ws, token=welcome["token"]) as (newer, _):
        await older.fatal("session_replaced", CLOSE_SESSION_REPLACED)
        # The newer connection carries on.
        await newer.send(frame("blob_request", sha256="0" * 64, offset=0, length=1))
        await newer.expect_error("blob_not_found")


async def test_an_unsupported_protocol_version_is_refused_with_4426(server: LiveCoordinator) -> None:
    async with connected(server.ws) as peer:
        message = hello()
        message["v"] = message["protocol_version"] = 999
        await peer.send(message)
        error = await peer.fatal("version_mismatch", CLOSE_VERSION_MISMATCH)
        assert str(VERSION) in error["message"], "the message says which versions the coordinator speaks"


async def test_an_unknown_token_is_refused_with_4401(server: LiveCoordinator) -> None:
    async with connected(server.ws) as peer:
        await peer.send(hello(token="not-a-token-this-coordinator-issued"))
        await peer.fatal("unauthorized", CLOSE_UNAUTHORIZED)


async def test_a_first_frame_other_than_hello_is_an_unexpected_message(server: LiveCoordinator) -> None:
    async with connected(server.ws) as peer:
        await peer.send(frame("request_work", preferred_campaign=None))
        error = await peer.expect_error("unexpected_message")
        if error["fatal"]:
            assert await peer.close_code() == CLOSE_POLICY_VIOLATION


@pytest.mark.parametrize(
    "codecs",
    [
        pytest.param(["zstd-magic"], id="a-codec-nobody-knows"),
        pytest.param(["fp16"], id="a-documented-codec-no-campaign-uses"),
    ],
)
async def test_a_volunteer_offering_no_acceptable_codec_is_refused(server: LiveCoordinator, codecs: list[str]) -> None:
    """The document: "refuses a volunteer with no acceptable one (`unsupported_codec`)" — without saying
    whether at `hello` or at `request_work`; either is accepted here."""
    async with connected(server.ws) as peer:
        await peer.send(hello(codecs=codecs))
        first = await peer.recv()
        if first["type"] == "error":
            assert first["code"] == "unsupported_codec", first
            if first["fatal"]:
                assert await peer.close_code() == CLOSE_POLICY_VIOLATION
            return
        assert first["type"] == "welcome", first
        await peer.send(frame("request_work", preferred_campaign=None))
        await expect_refusal(peer, "unsupported_codec")


async def test_goodbye_is_answered_with_close_1000(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        await peer.send(frame("goodbye", reason="user quit"))
        assert await peer.close_code() == CLOSE_NORMAL


# --- Frame-level refusals ----------------------------------------------------------------------------


async def test_a_frame_over_max_frame_bytes_is_refused_with_1009(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, welcome):
        limit = welcome["max_frame_bytes"]
        frame_bytes = pack(frame("goodbye", reason="x" * (limit + 1)))
        assert len(frame_bytes) > limit
        # The coordinator refuses it "before reading anything", so it may close while this is still sending.
        with contextlib.suppress(ConnectionClosed):
            await peer.send_raw(frame_bytes)
        await peer.fatal("frame_too_large", CLOSE_MESSAGE_TOO_BIG)


async def expect_refusal(peer: Peer, code: str) -> dict[str, Any]:
    """A refusal: fatal (then the close code the table gives), or not (then the connection still serves)."""
    error = await peer.expect_error(code)
    if error["fatal"]:
        assert await peer.close_code() == CLOSE_AFTER.get(code, CLOSE_POLICY_VIOLATION)
        return error
    await peer.send(frame("blob_request", sha256="0" * 64, offset=0, length=1))
    await peer.expect_error("blob_not_found")
    return error


async def test_a_text_frame_is_a_malformed_frame(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        await peer.send_raw(json.dumps({"type": "request_work", "v": VERSION, "preferred_campaign": None}))
        await expect_refusal(peer, "malformed_frame")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(pack(frame("goodbye", reason="")) + b"\x00", id="trailing-byte"),
        pytest.param(pack(["goodbye", 1]), id="not-a-map"),
        pytest.param(pack({"type": "goodbye", "reason": ""}), id="no-v"),
        pytest.param(b"\x83\xa4type\xa7goodbye\xa1v\x03\xa1v\x03", id="duplicate-key"),
        pytest.param(
            msgpack.packb({"type": "goodbye", "v": 5, "reason": msgpack.ExtType(1, b"x")}), id="extension-type"
        ),
        pytest.param(pack(frame("goodbye", reason=""))[:-3], id="truncated"),
        pytest.param(b"\x83\xa4type\xa7goodbye\xa1v\x03\xa6reason\xc1", id="byte-0xc1"),
        pytest.param(pack({"type": "goodbye", "v": "1", "reason": ""}), id="v-not-an-integer"),
        pytest.param(pack({"type": 7, "v": 5, "reason": ""}), id="type-not-a-string"),
        pytest.param(pack({"type": "goodbye", "v": 5, "reason": "", 1: "x"}), id="integer-map-key"),
        pytest.param(pack(frame("goodbye", reason=[[[[[[[[""]]]]]]]])), id="nesting-deeper-than-8"),
        pytest.param(pack(frame("goodbye", reason=[0] * 70_000)), id="more-than-65536-values"),
    ],
)
async def test_a_binary_frame_that_is_not_a_protocol_map_is_a_malformed_frame(
    server: LiveCoordinator, data: bytes
) -> None:
    async with volunteer(server.ws) as (peer, _):
        await peer.send_raw(data)
        await expect_refusal(peer, "malformed_frame")


@pytest.mark.parametrize("kind", ["frobnicate", "welcome", "work_unit"])
async def test_a_type_the_coordinator_does_not_receive_is_an_unknown_type(server: LiveCoordinator, kind: str) -> None:
    async with volunteer(server.ws) as (peer, _):
        await peer.send(frame(kind))
        await expect_refusal(peer, "unknown_type")


async def test_a_frame_in_another_version_after_hello_is_a_version_mismatch(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        await peer.send({"type": "request_work", "v": VERSION + 1, "preferred_campaign": None})
        await expect_refusal(peer, "version_mismatch")


@pytest.mark.parametrize(
    ("message", "path"),
    [
        pytest.param(
            frame("request_work", preferred_campaign=None, favourite_colour="blue"),
            "favourite_colour",
            id="unknown-field",
        ),
        pytest.param(frame("blob_request", sha256="0" * 64, offset=0), "length", id="missing-field"),
        pytest.param(frame("blob_request", sha256="0" * 64, offset=True, length=1), "offset", id="bool-as-integer"),
        pytest.param(
            frame("blob_request", sha256="0" * 64, offset=0, length=MAX_BLOB_CHUNK_BYTES + 1),
            "length",
            id="chunk-over-4-MiB",
        ),
        pytest.param(frame("blob_request", sha256="0" * 64, offset=0.0, length=1), "offset", id="float-as-integer"),
        pytest.param(frame("blob_request", sha256="A" * 64, offset=0, length=1), "sha256", id="uppercase-sha256"),
        pytest.param(frame("request_work", preferred_campaign=b"bytes"), "preferred_campaign", id="bin-for-str"),
        pytest.param(frame("goodbye", reason="x" * 1025), "reason", id="text-over-1024"),
        pytest.param(
            frame("abandon", unit_id="u", lease_id="l", reason="bored", detail=""), "reason", id="reason-not-in-enum"
        ),
    ],
)
async def test_a_field_out_of_its_bounds_is_a_schema_violation_naming_it(
    server: LiveCoordinator, message: dict[str, Any], path: str
) -> None:
    async with volunteer(server.ws) as (peer, _):
        await peer.send(message)
        error = await expect_refusal(peer, "schema_violation")
        assert f"{message['type']}.{path}" in error["message"], error


# --- Work and blobs -----------------------------------------------------------------------------------


async def test_a_work_unit_and_its_blobs_download_in_chunks_and_match_their_sha256(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        assert unit["codec"]["name"] == "int8", "only a codec the volunteer listed"
        assert set(unit["recipe"]) == RECIPE_FIELDS and set(unit["model"]["config"]) == MODEL_CONFIG_FIELDS
        assert list(unit["shard_shapes"]) and set(unit["shard_shapes"]) == set(unit["shard"])
        recipe = unit["recipe"]
        tokens_needed = recipe["steps"] * recipe["grad_accum"] * recipe["batch_size"] * recipe["seq_len"] + 1
        assert unit["data_tokens"] >= tokens_needed
        width = {"uint16": 2, "uint32": 4}[unit["data_dtype"]]
        assert unit["data"]["size"] == unit["data_tokens"] * width

        data = await download(peer, unit["data"], chunk=max(1, unit["data"]["size"] // 3))
        assert hashlib.sha256(data).hexdigest() == unit["data"]["sha256"]
        tokens = np.frombuffer(data, dtype="<u2" if width == 2 else "<u4")
        assert int(tokens.max()) < unit["model"]["config"]["vocab_size"]

        checkpoint = await download(peer, unit["checkpoint"], chunk=256 * 1024)
        assert len(checkpoint) == unit["checkpoint"]["size"]
        assert hashlib.sha256(checkpoint).hexdigest() == unit["checkpoint"]["sha256"]
        # safetensors: u64 header length, a JSON header naming every tensor's dtype and shape.
        (header_length,) = struct.unpack("<Q", checkpoint[:8])
        header = json.loads(checkpoint[8 : 8 + header_length])
        for name in unit["shard"]:
            assert header[name]["shape"] == unit["shard_shapes"][name], name


async def test_a_checkpoint_rebuilt_from_the_units_deltas_has_the_published_sha256(
    server: LiveCoordinator, tmp_path: Path
) -> None:
    spec = {
        **campaign_spec("conformance-deltas", "int8"),
        "token_budget": 10 * 2 * 2 * 32,
        "rounds": {"units_per_round": 1, "min_accepted": 1},
        "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
    }
    status, body = server.call("POST", "/api/campaigns", token=server.admin_token, body=spec)
    assert status == 201, body
    campaign = str(body["id"])
    # Versions 1 and 2 come from the reference volunteer, a process of its own, training two units.
    trained = subprocess.run(
        [sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", server.ws, "--campaign", campaign,
         "--max-units", "2", "--quiet", "--config-dir", str(tmp_path / "config"),
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, timeout=240, check=False,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout.decode()[-2000:] + trained.stderr.decode()[-2000:]
    status, listed = server.call("GET", f"/api/campaigns/{campaign}/versions")
    versions = listed["versions"]
    assert status == 200 and [v["version"] for v in versions] == [0, 1, 2]
    async with volunteer(server.ws) as (peer, _):
        await peer.send(frame("request_work", preferred_campaign=campaign))
        unit = await peer.expect("work_unit")
        assert unit["model_version"] == 2 and unit["checkpoint"]["sha256"] == versions[2]["checkpoint_sha256"]
        chain = unit["deltas"]
        assert [step["base"] for step in chain] == [v["checkpoint_sha256"] for v in versions[:2]]
        assert [step["result"] for step in chain] == [v["checkpoint_sha256"] for v in versions[1:]]
        # Hold version 0, as a volunteer that trained on it would, and rebuild version 2 from the deltas.
        held = await download(
            peer, {"sha256": versions[0]["checkpoint_sha256"], "size": versions[0]["checkpoint_bytes"]}, 1 << 20
        )
        for step in chain:
            delta = read_int8_frame(await download(peer, step["delta"], 1 << 20))
            base = read_canonical_checkpoint(held)
            assert set(delta) == set(base)
            # "Add, element by element, in IEEE-754 float32 with round-to-nearest-even".
            rebuilt = {
                name: (shape, np.add(values, delta[name][1], dtype=np.float32))
                for name, (shape, values) in base.items()
            }
            held = write_canonical_checkpoint(rebuilt)
            assert hashlib.sha256(held).hexdigest() == step["result"]
        assert len(held) == unit["checkpoint"]["size"]


async def test_blob_requests_past_the_end_or_for_unknown_blobs_are_refused(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        sha, size = unit["data"]["sha256"], unit["data"]["size"]
        await peer.send(frame("blob_request", sha256=sha, offset=size + 1, length=16))
        error = await peer.expect_error("bad_range")
        assert error["ref_type"] == "blob_request" and error["ref_id"] == sha, error
        assert not error["fatal"], error
        unknown = hashlib.sha256(b"no such blob").hexdigest()
        await peer.send(frame("blob_request", sha256=unknown, offset=0, length=16))
        error = await peer.expect_error("blob_not_found")
        assert error["ref_type"] == "blob_request" and error["ref_id"] == unknown, error
        # At the very end: an empty chunk ("data is empty only at the end of the blob").
        await peer.send(frame("blob_request", sha256=sha, offset=size, length=16))
        chunk = await peer.expect("blob_chunk")
        assert chunk["offset"] == size and chunk["total_size"] == size and chunk["data"] == b"", chunk


# --- Leases -----------------------------------------------------------------------------------------


async def test_progress_extends_the_lease_and_a_wrong_steps_total_is_a_schema_violation(
    server: LiveCoordinator,
) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        await peer.send(progress(unit))
        extended = await peer.expect("lease_extended")
        assert extended["unit_id"] == unit["unit_id"] and extended["lease_id"] == unit["lease_id"], extended
        assert is_number(extended["lease_deadline"]) and extended["lease_deadline"] >= unit["lease_deadline"] - 1

        await peer.send(progress(unit, steps_total=unit["recipe"]["steps"] + 1))
        error = await peer.expect_error("schema_violation")
        assert "steps_total" in error["message"], error
        assert error["ref_type"] in (None, "progress"), error


async def test_progress_floats_may_be_float32_or_integers_but_never_nan_and_step_is_at_most_steps_total(
    server: LiveCoordinator,
) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        as_float32 = msgpack.packb(
            progress(unit, step=1, loss=6.25, tokens=64, phase="training"), use_single_float=True
        )
        assert b"\xca" in as_float32  # MessagePack float32
        await peer.send_raw(as_float32)
        await peer.expect("lease_extended")
        await peer.send(progress(unit, step=1, loss=6, tokens=64, phase="training"))  # "JavaScript writes 1.0 as 1"
        await peer.expect("lease_extended")
        spoilt: list[tuple[dict[str, Any], str]] = [
            ({"loss": math.nan}, "loss"),
            ({"loss": math.inf}, "loss"),
            ({"tokens": 2**53}, "tokens"),
            ({"step": unit["recipe"]["steps"] + 1}, "step"),
        ]
        for bad, path in spoilt:
            await peer.send(progress(unit, **bad))
            error = await peer.expect_error("schema_violation")
            assert f"progress.{path}" in error["message"], (bad, error)
            assert not error["fatal"], error


async def test_a_made_up_lease_id_is_not_your_lease(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        await peer.send(progress(unit, lease_id="made-up-lease"))
        error = await peer.expect_error("not_your_lease")
        assert error["ref_id"] == unit["unit_id"], error
        assert not error["fatal"], error

        update = random_update(unit)
        await peer.send(submit(unit, update, lease_id="made-up-lease"))
        result = await expect_result(peer, unit, lease_id="made-up-lease")
        assert result["status"] == "rejected" and result["code"] == "not_your_lease", result

        # Nothing else was lost: the real lease still extends.
        await peer.send(progress(unit))
        extended = await peer.expect("lease_extended")
        assert extended["lease_id"] == unit["lease_id"], extended


async def test_another_volunteers_lease_is_not_your_lease(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (holder, _), volunteer(server.ws) as (other, _):
        unit = await lease(holder)
        await other.send(progress(unit))
        error = await other.expect_error("not_your_lease")
        assert error["ref_id"] == unit["unit_id"], error
        await other.send(submit(unit, random_update(unit)))
        result = await expect_result(other, unit)
        assert result["status"] == "rejected" and result["code"] == "not_your_lease", result
        # The holder's lease is untouched.
        await holder.send(progress(unit))
        await holder.expect("lease_extended")


async def test_an_abandoned_unit_ends_its_lease_without_a_reply(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        await peer.send(
            frame("abandon", unit_id=unit["unit_id"], lease_id=unit["lease_id"], reason="user_request", detail="")
        )
        # "No reply": the next frame answers the next request.
        await peer.send(frame("blob_request", sha256="0" * 64, offset=0, length=1))
        await peer.expect_error("blob_not_found")
        await peer.send(progress(unit))
        error = await peer.expect("error")
        assert error["code"] in {"lease_expired", "not_your_lease", "unknown_unit"}, error
        assert error["ref_id"] == unit["unit_id"], error


async def test_a_submit_for_an_unknown_unit_is_a_rejected_result_unknown_unit(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        made_up = {**unit, "unit_id": "no-such-unit"}
        await peer.send(submit(made_up, random_update(unit)))
        result = await expect_result(peer, made_up)
        assert result["status"] == "rejected" and result["code"] == "unknown_unit", result


async def test_progress_for_an_unknown_unit_is_unknown_unit(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        await peer.send(progress({"unit_id": "no-such-unit", "lease_id": "no-such-lease", "recipe": {"steps": 2}}))
        error = await peer.expect_error("unknown_unit")
        assert error["ref_id"] == "no-such-unit", error


# --- Submitting ---------------------------------------------------------------------------------------


async def test_a_wrong_update_sha256_is_a_rejected_result_checksum_mismatch(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        update = random_update(unit)
        await peer.send(submit(unit, update, sha=hashlib.sha256(update + b"!").hexdigest()))
        result = await expect_result(peer, unit)
        assert result["status"] == "rejected" and result["code"] == "checksum_mismatch", result
        assert result["credit"] == 0, result


@pytest.mark.parametrize("codec", ["int8", "fp32"])
async def test_an_update_built_from_the_document_decodes_and_gets_a_verdict(
    server: LiveCoordinator, codec: str
) -> None:
    async with volunteer(server.ws, codecs=[codec]) as (peer, welcome):
        unit = await lease(peer)
        assert unit["codec"]["name"] == codec, "the coordinator only leases a unit whose codec the volunteer listed"
        update = random_update(unit)
        assert len(update) == unit["max_update_bytes"], "a valid update has exactly one possible size"
        await peer.send(submit(unit, update))
        result = await expect_result(peer, unit)
        assert result["code"] is None or result["code"] in VALUE_VERDICTS, result
    if result["status"] == "accepted" and result["credit"] == 0:
        # "the update is valid but waits: message says so and credit is 0 until the replica ... agrees"
        assert "replica" in result["message"], result
    elif result["status"] == "accepted":
        assert result["credit"] > 0, result
        # "credit_total: Credit earned so far, all campaigns."
        async with volunteer(server.ws, token=welcome["token"], codecs=[codec]) as (_, again):
            assert again["credit_total"] >= result["credit"], (result, again)


async def test_an_update_of_garbage_bytes_is_bad_encoding(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        garbage = np.random.default_rng(5).bytes(unit["max_update_bytes"])
        await peer.send(submit(unit, garbage))
        result = await expect_result(peer, unit)
        assert result["status"] == "rejected" and result["code"] == "bad_encoding", result
        assert result["message"].startswith("the update could not be decoded:"), result


def spoil(unit: Mapping[str, Any], how: str) -> bytes:
    """A tensor frame that breaks exactly one rule of "How the coordinator checks an update"."""
    rng = np.random.default_rng(7)
    shard, shapes = list(unit["shard"]), {name: list(unit["shard_shapes"][name]) for name in unit["shard"]}
    values = {name: rng.standard_normal(math.prod(shapes[name])).astype(np.float32) * 1e-3 for name in shard}
    codec = dict(unit["codec"])
    if how == "fewer-tensors":  # smaller than max_update_bytes, so check 8 is reached
        shard = shard[1:]
    if how == "transposed-shape":  # same size, dims swapped
        big = next(name for name in shard if len(shapes[name]) == 2 and shapes[name][0] != shapes[name][1])
        shapes[big] = shapes[big][::-1]
    if how == "larger-block-size":  # fewer scales: smaller, and the codec parameters differ from the unit's
        codec["block_size"] = int(codec.get("block_size", INT8_DEFAULT_BLOCK)) * 2
    if how == "another-codec":
        codec = {"name": "fp32"}
    if how == "nan-value":
        values[shard[0]][0] = np.nan
    update = bytearray(encode_update(codec, [(name, shapes[name], values[name]) for name in shard]))
    # Offsets of the first record's payload, for the byte-level spoils of an int8 frame.
    first = shard[0].encode()
    payload_at = 16 + 2 + len(first) + 2 + 4 * len(shapes[shard[0]]) + 8
    if how == "int8-minus-128":
        n_scales = -(-math.prod(shapes[shard[0]]) // int(codec.get("block_size", INT8_DEFAULT_BLOCK)))
        update[payload_at + 4 * n_scales] = 0x80
    if how == "negative-scale":
        update[payload_at : payload_at + 4] = struct.pack("<f", -1.0)
    if how == "infinite-scale":
        update[payload_at : payload_at + 4] = struct.pack("<f", math.inf)
    if how == "bad-magic":
        update[:4] = b"CWTG"
    if how == "flags":
        update[7] = 1
    return bytes(update)


@pytest.mark.parametrize(
    ("codec", "how", "verdict"),
    [
        ("int8", "another-codec", "update_too_large"),
        ("int8", "fewer-tensors", "shape_mismatch"),
        ("int8", "transposed-shape", "shape_mismatch"),
        ("int8", "larger-block-size", "bad_encoding"),
        ("int8", "int8-minus-128", "bad_encoding"),
        ("int8", "negative-scale", "bad_encoding"),
        ("int8", "infinite-scale", "non_finite"),
        ("int8", "bad-magic", "bad_encoding"),
        ("int8", "flags", "bad_encoding"),
        ("fp32", "nan-value", "non_finite"),
    ],
)
async def test_a_broken_update_gets_the_documented_verdict(
    server: LiveCoordinator, codec: str, how: str, verdict: str
) -> None:
    async with volunteer(server.ws, codecs=[codec]) as (peer, _):
        unit = await lease(peer)
        await peer.send(submit(unit, spoil(unit, how)))
        result = await expect_result(peer, unit)
        assert result["status"] == "rejected" and result["code"] == verdict, result
        assert result["credit"] == 0, result


async def test_an_update_one_byte_too_long_is_update_too_large(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        await peer.send(submit(unit, random_update(unit) + b"\x00"))
        result = await expect_result(peer, unit)
        assert result["status"] == "rejected" and result["code"] == "update_too_large", result


async def test_resubmitting_the_same_update_gets_the_same_result(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, welcome):
        unit = await lease(peer)
        message = submit(unit, random_update(unit, seed=1))
        await peer.send(message)
        first = await expect_result(peer, unit)
        await peer.send(message)
        assert await expect_result(peer, unit) == first
    # After a reconnect, as a client that lost the result would.
    async with volunteer(server.ws, token=welcome["token"]) as (peer, _):
        await peer.send(message)
        assert await expect_result(peer, unit) == first


async def test_a_different_update_under_the_same_lease_is_a_duplicate(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        await peer.send(submit(unit, random_update(unit, seed=2)))
        await expect_result(peer, unit)
        await peer.send(submit(unit, random_update(unit, seed=3)))
        second = await expect_result(peer, unit)
        assert second["status"] == "duplicate" and second["code"] == "duplicate_submission", second
        assert second["credit"] == 0, second


# --- Shared moments ------------------------------------------------------------------------------------


async def test_a_round_publishes_the_lower_median_of_the_moments_its_updates_sent(server: LiveCoordinator) -> None:
    """Four units send four different moments frames and a fifth an empty one; version 1's units name a
    moments frame of every checkpoint tensor holding, element by element, the lower median of the four."""
    units = 5
    spec = {
        **campaign_spec("conformance-moments", "int8"),
        "token_budget": 4 * units * 2 * 2 * 32,
        "rounds": {"units_per_round": units, "min_accepted": units, "max_leases_per_volunteer": units},
        "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0, "check_rate": 0.0},
    }
    status, body = server.call("POST", "/api/campaigns", token=server.admin_token, body=spec)
    assert status == 201, body
    campaign = str(body["id"])
    sent: list[dict[str, np.ndarray]] = []
    async with volunteer(server.ws) as (peer, _):
        leased = []
        for _ in range(units):
            await peer.send(frame("request_work", preferred_campaign=campaign))
            unit = await peer.expect("work_unit")
            assert unit["campaign_id"] == campaign and unit["model_version"] == 0, unit
            assert unit["recipe"]["shared_moments"] is True, unit["recipe"]
            # "It is null in a campaign's first round".
            assert unit["moments"] is None, unit["moments"]
            leased.append(unit)
        shapes = {name: leased[0]["shard_shapes"][name] for name in leased[0]["shard"]}
        records = moments_records(shapes)
        for index, unit in enumerate(leased):
            assert {name: unit["shard_shapes"][name] for name in unit["shard"]} == shapes, "one shard: plan full"
            if index == units - 1:
                moments = b""  # "A client that can't sends it empty ... doesn't add to the next median."
            else:
                values = random_moments(records, seed=100 + index)
                sent.append({name: bf16_round(v) for name, v in values.items()})
                moments = encode_moments(records, values)
            await peer.send(submit_with_moments(unit, random_update(unit, seed=10 + index), moments))
            result = await expect_result(peer, unit)
            assert result["status"] == "accepted", result

    def version_1() -> bool:
        status, listed = server.call("GET", f"/api/campaigns/{campaign}/versions")
        assert status == 200, listed
        return len(listed["versions"]) > 1

    poll("the round to close into version 1", version_1, timeout=60)
    async with volunteer(server.ws) as (peer, _):
        await peer.send(frame("request_work", preferred_campaign=campaign))
        unit = await peer.expect("work_unit")
        assert unit["campaign_id"] == campaign and unit["model_version"] == 1, unit
        ref = unit["moments"]
        assert ref is not None and set(ref) == {"sha256", "size"} and SHA256.fullmatch(ref["sha256"]), ref
        blob = await download(peer, ref, chunk=64 * 1024)
        assert hashlib.sha256(blob).hexdigest() == ref["sha256"]
        checkpoint = await download(peer, unit["checkpoint"], chunk=1 << 20)
    published = read_bf16_frame(blob)
    # "a moments frame of every checkpoint tensor, not only the shard's", records as the document gives them.
    every = {name: shape for name, (shape, _) in read_canonical_checkpoint(checkpoint).items()}
    expected_records = moments_records(every)
    names = [name for name, _, _, _ in published]
    assert len(names) == len(set(names)) and set(names) == set(expected_records), (names, list(expected_records))
    assert len(blob) == 12 + sum(
        2 + len(name.encode()) + 2 + 4 * len(shape) + 8 + 2 * math.prod(shape)
        for name, shape in expected_records.items()
    ), "its size is fixed by the shapes"
    stacked = {name: np.stack([frame_[name] for frame_ in sent]) for name in records}
    for name, dtype, shape, values in published:
        assert dtype == DTYPE_FLOAT32, (name, dtype)
        assert shape == expected_records[name], (name, shape)
        assert np.all(np.isfinite(values)) and np.all(values >= 0), name
        # "the elementwise median ... (the lower one of two middle values)": of 4 frames, the second smallest.
        lower_median = np.sort(stacked[name], axis=0)[(len(sent) - 1) // 2]
        np.testing.assert_array_equal(values, lower_median, err_msg=name)


def spoil_moments(unit: Mapping[str, Any], how: str) -> bytes:
    """A moments frame of the unit's shard that breaks one rule of "Shared moments"."""
    shapes = {name: unit["shard_shapes"][name] for name in unit["shard"]}
    records = moments_records(shapes)
    values = random_moments(records, seed=3)
    first = next(iter(records))
    codec_id, dtype_id = CODEC_IDS["bf16"], DTYPE_FLOAT32
    if how == "negative-value":
        values[first][0] = -1e-4
    if how == "nan-value":
        values[first][0] = np.nan
    if how == "infinite-value":
        values[first][0] = np.inf
    if how == "fp32-codec":  # larger: "the code its update would get for the same fault" is check 1's
        codec_id = CODEC_IDS["fp32"]
    if how == "fp16-codec":  # the same size as bf16
        codec_id = CODEC_IDS["fp16"]
    if how == "bfloat16-dtype":
        dtype_id = 3
    if how == "missing-record":
        del records[first]
    if how == "unfactored-matrix":  # a matrix sent whole under its own name instead of as :rows and :cols
        matrix = next(name for name, shape in shapes.items() if len(shape) >= 2)
        del records[f"{matrix}:rows"], records[f"{matrix}:cols"]
        records[matrix] = [math.prod(shapes[matrix])]
        values[matrix] = np.full(math.prod(shapes[matrix]), 1e-6, dtype=np.float32)
    if how == "swapped-rows-and-cols":
        matrix = next(name for name, shape in shapes.items() if len(shape) >= 2 and shape[0] != math.prod(shape[1:]))
        rows, cols = records[f"{matrix}:rows"], records[f"{matrix}:cols"]
        records[f"{matrix}:rows"], records[f"{matrix}:cols"] = cols, rows
        values[f"{matrix}:rows"], values[f"{matrix}:cols"] = values[f"{matrix}:cols"], values[f"{matrix}:rows"]
    encoded = encode_moments(records, values, codec_id=codec_id, dtype_id=dtype_id)
    return encoded + b"\x00" if how == "trailing-byte" else encoded


@pytest.mark.parametrize(
    ("how", "verdict"),
    [
        ("negative-value", "bad_encoding"),
        ("nan-value", "non_finite"),
        ("infinite-value", "non_finite"),
        # "Its size is fixed by the shapes, like an update's": a longer frame fails an update's check 1.
        ("fp32-codec", "update_too_large"),
        ("trailing-byte", "update_too_large"),
        ("unfactored-matrix", "update_too_large"),
        ("fp16-codec", "bad_encoding"),  # check 7: the codec is not bf16
        ("bfloat16-dtype", "shape_mismatch"),  # check 12, if records are float32 as in an update
        ("missing-record", "shape_mismatch"),
        ("swapped-rows-and-cols", "shape_mismatch"),
    ],
)
async def test_a_broken_moments_frame_rejects_the_submission_naming_submit_moments(
    server: LiveCoordinator, how: str, verdict: str
) -> None:
    async with volunteer(server.ws) as (peer, _):
        unit = await lease(peer)
        assert unit["recipe"]["shared_moments"] is True, "shared moments are on by default"
        await peer.send(submit_with_moments(unit, random_update(unit), spoil_moments(unit, how)))
        result = await expect_result(peer, unit)
        assert result["status"] == "rejected" and result["code"] == verdict, result
        assert "submit.moments" in result["message"], result
        assert result["credit"] == 0, result


# --- Strangers: the limits before hello, staying connected, sources -------------------------------------


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> Iterator[LiveCoordinator]:
    """A coordinator that wants a frame every second and closes a connection silent for two, where each
    127.0.0.N is a source of its own, limited to 2 new identities at once and then 1 a minute."""
    args = ["--heartbeat-interval", "1", "--idle-timeout", "2", "--limit-loopback", "--source-prefix-v4", "32",
            "--registration-burst", "2", "--registrations-per-minute", "1"]  # fmt: skip
    with live_coordinator(tmp_path_factory.mktemp("strict"), small_dataset, extra_args=args) as live:
        yield live
        log = live.log.read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]


async def test_a_frame_over_max_hello_frame_bytes_before_hello_is_refused_with_1009(server: LiveCoordinator) -> None:
    async with connected(server.ws) as peer:
        # Refused from its header, "without reading the payload": the close may come while this is sending.
        with contextlib.suppress(ConnectionClosed):
            await peer.send_raw(b"\x00" * (MAX_HELLO_FRAME_BYTES + 1))
        error = await peer.fatal("frame_too_large", CLOSE_MESSAGE_TOO_BIG)
        assert str(MAX_HELLO_FRAME_BYTES) in error["message"], error


async def test_after_welcome_a_frame_over_max_hello_frame_bytes_is_read_and_judged(server: LiveCoordinator) -> None:
    async with volunteer(server.ws) as (peer, _):
        # After welcome the full limit applies: a frame over MAX_HELLO_FRAME_BYTES is read and judged.
        await peer.send_raw(pack(frame("goodbye", reason="x" * 1025)) + b"\x00" * MAX_HELLO_FRAME_BYTES)
        await expect_refusal(peer, "malformed_frame")


async def test_keepalive_before_hello_is_an_unexpected_message(server: LiveCoordinator) -> None:
    async with connected(server.ws) as peer:
        await peer.send(frame("keepalive"))
        error = await peer.expect_error("unexpected_message")
        if error["fatal"]:
            assert await peer.close_code() == CLOSE_POLICY_VIOLATION


async def test_a_connection_that_sends_nothing_is_closed_with_idle_timeout(strict: LiveCoordinator) -> None:
    async with volunteer(strict.ws, local="127.0.0.11") as (peer, welcome):
        assert welcome["heartbeat_interval_s"] == 1
        # "at least twice heartbeat_interval_s": not before two seconds; this coordinator waits two.
        error = await peer.fatal("idle_timeout", CLOSE_IDLE_TIMEOUT)
        assert "keepalive" in error["message"], error


async def test_keepalive_keeps_a_quiet_connection_open_and_gets_no_reply(strict: LiveCoordinator) -> None:
    async with volunteer(strict.ws, local="127.0.0.12") as (peer, welcome):
        interval = welcome["heartbeat_interval_s"]
        for _ in range(10):  # five idle deadlines of this coordinator
            await peer.send(frame("keepalive"))
            await asyncio.sleep(interval / 2)
        # The next frame to arrive answers this request: the keepalives got nothing.
        await peer.send(frame("blob_request", sha256="0" * 64, offset=0, length=1))
        await peer.expect_error("blob_not_found")


async def test_new_identities_past_a_sources_allowance_are_refused_with_4429(strict: LiveCoordinator) -> None:
    async with volunteer(strict.ws, local="127.0.0.13") as (_, first):
        pass
    async with volunteer(strict.ws, local="127.0.0.13"):
        pass
    async with connected(strict.ws, local="127.0.0.13") as peer:
        await peer.send(hello())
        error = await peer.fatal("rate_limited", CLOSE_RATE_LIMITED)
        assert is_number(error.get("retry_after_s")) and error["retry_after_s"] > 0, error
    # A volunteer that kept its token is not a new identity; another source has its own allowance.
    async with volunteer(strict.ws, token=first["token"], local="127.0.0.13") as (_, again):
        assert again["volunteer_id"] == first["volunteer_id"]
    async with volunteer(strict.ws, local="127.0.0.14"):
        pass
