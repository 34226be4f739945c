"""Hostile control frames for `commonweights bench fuzz`: mutations of valid frames that find bugs.

    >>> fuzzer = FrameFuzzer(seed=0)
    >>> frame = fuzzer.next()
    >>> frame.direction in ("to_server", "to_client") and isinstance(frame.data, bytes)
    True

Control frames start from a valid frame of every message type (`seed_messages`) and are then
mutated as a tree (type confusion of any field, boundary numbers, hostile strings, missing, unknown,
duplicate and renamed keys, wrong `type` and `v`, deep nesting, arrays across their limits, raw
MessagePack a valid encoder never writes) or as bytes (bit flips, truncation, extension, splices),
or built as structured random MessagePack. Some frames are *equivalent* rewrites of a valid one
(keys reordered, widest headers, float32 floats, integral floats as integers): the decoder must read
them as the same message. Update frames are benchmarks/fuzz_updates.py's.

MessagePack is written here by hand (`pack`), so a frame can hold what no encoder produces.
Everything is drawn from one seeded `random.Random`: the same seed gives the same frames.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast, get_args

import msgspec
import torch

from protocol.codecs import CodecConfig
from protocol.codecs import encode as encode_tensors
from protocol.errors import ErrorCode
from protocol.limits import (
    MAX_BLOB_CHUNK_BYTES,
    MAX_CODEC_PARAMS,
    MAX_CODECS,
    MAX_DEVICES,
    MAX_FRAME_BYTES,
    MAX_FRAME_DEPTH,
    MAX_FRAME_VALUES,
    MAX_INNER_STEPS,
    MAX_SHARD_PARAMS,
    MAX_TENSOR_RANK,
)
from protocol.messages import (
    MESSAGE_TYPES,
    Abandon,
    BlobChunk,
    BlobRef,
    BlobRequest,
    Capabilities,
    Device,
    Direction,
    ErrorMessage,
    Goodbye,
    Hello,
    InnerRecipe,
    LeaseExtended,
    Message,
    ModelConfig,
    ModelSpec,
    NoWork,
    Progress,
    Report,
    RequestWork,
    Result,
    Submit,
    ToServerMessage,
    TrainMetrics,
    Welcome,
    WorkUnit,
    encode,
)
from protocol.version import PROTOCOL_VERSION

__all__ = [
    "BAD_UTF8",
    "CONTROL_KINDS",
    "F32",
    "FrameFuzzer",
    "Fuzzed",
    "Pairs",
    "Raw",
    "Wide",
    "pack",
    "seed_messages",
]

# --- MessagePack, written by hand ------------------------------------------------------------------


class Pairs(list[list[Any]]):
    """A map as [key, value] entries: keys may repeat, be of any type, and keep their order."""


class Raw(bytes):
    """MessagePack bytes written as they are (an extension type, an invalid string, a lying length)."""


class F32(float):
    """A float written as MessagePack float32."""


@dataclass(frozen=True, slots=True)
class Wide:
    """A value written with its widest header (uint64/int64, str32, bin32, array32, map32)."""

    value: Any


def pack(value: Any, frozen: Mapping[int, bytes] | None = None) -> bytes:
    """`value` as MessagePack. `frozen` maps the id of a container that never changes to its bytes."""
    out = bytearray()
    _pack(value, out, False, frozen or {})
    return bytes(out)


def _pack(value: Any, out: bytearray, wide: bool, frozen: Mapping[int, bytes]) -> None:
    kind = type(value)
    if kind is Pairs or kind is list:
        done = None if wide else frozen.get(id(value))
        if done is not None:
            out += done
        elif kind is Pairs:
            _header(out, len(value), 0x80, 15, (None, 0xDE, 0xDF), wide=wide)
            for key, item in value:
                _pack(key, out, False, frozen)
                _pack(item, out, False, frozen)
        else:
            _header(out, len(value), 0x90, 15, (None, 0xDC, 0xDD), wide=wide)
            for item in value:
                _pack(item, out, False, frozen)
    elif kind is str:
        data = value.encode()
        _header(out, len(data), 0xA0, 31, (0xD9, 0xDA, 0xDB), wide=wide)
        out += data
    elif kind is int:
        _pack_int(value, out, wide=wide)
    elif kind is Raw:
        out += value
    elif kind is float:
        out += b"\xcb" + struct.pack(">d", value)
    elif value is None:
        out.append(0xC0)
    elif kind is bool:
        out.append(0xC3 if value else 0xC2)
    elif kind is bytes:
        _header(out, len(value), None, 0, (0xC4, 0xC5, 0xC6), wide=wide)
        out += value
    elif kind is F32:
        out += b"\xca" + _float32(value)
    elif kind is Wide:
        _pack(value.value, out, True, frozen)
    elif kind is tuple:
        _pack(list(value), out, wide, frozen)
    else:
        raise TypeError(f"cannot pack {kind.__name__}")


def _float32(value: float) -> bytes:
    try:
        return struct.pack(">f", value)
    except OverflowError:  # beyond float32: what rounding to float32 gives
        return struct.pack(">f", math.copysign(math.inf, value))


def _pack_int(value: int, out: bytearray, *, wide: bool) -> None:
    if not -(1 << 63) <= value < 1 << 64:
        raise OverflowError(f"{value} does not fit MessagePack's 64-bit integers")
    if wide:
        out += b"\xcf" + struct.pack(">Q", value) if value >= 0 else b"\xd3" + struct.pack(">q", value)
    elif 0 <= value < 0x80 or -32 <= value < 0:
        out.append(value & 0xFF)
    elif value >= 0:
        for tag, fmt, limit in ((0xCC, ">B", 1 << 8), (0xCD, ">H", 1 << 16), (0xCE, ">I", 1 << 32)):
            if value < limit:
                out += bytes([tag]) + struct.pack(fmt, value)
                return
        out += b"\xcf" + struct.pack(">Q", value)
    else:
        for tag, fmt, limit in ((0xD0, ">b", 1 << 7), (0xD1, ">h", 1 << 15), (0xD2, ">i", 1 << 31)):
            if value >= -limit:
                out += bytes([tag]) + struct.pack(fmt, value)
                return
        out += b"\xd3" + struct.pack(">q", value)


def _header(
    out: bytearray, length: int, fix: int | None, fix_max: int, tags: tuple[int | None, int, int], *, wide: bool
) -> None:
    tag8, tag16, tag32 = tags
    if wide:
        out += bytes([tag32]) + struct.pack(">I", length)
    elif fix is not None and length <= fix_max:
        out.append(fix | length)
    elif tag8 is not None and length < 1 << 8:
        out += bytes([tag8, length])
    elif length < 1 << 16:
        out += bytes([tag16]) + struct.pack(">H", length)
    else:
        out += bytes([tag32]) + struct.pack(">I", length)


def _tree(value: Any) -> Any:
    """A decoded MessagePack value with its maps as `Pairs`, so they can be rewritten freely."""
    if isinstance(value, dict):
        return Pairs([[key, _tree(item)] for key, item in value.items()])
    if isinstance(value, list):
        return [_tree(item) for item in value]
    return value


def _freeze(value: Any, frozen: dict[int, bytes]) -> None:
    """Record the bytes of every container in `value`, which must never change from now on."""
    if type(value) is Pairs:
        for key, item in value:
            _freeze(key, frozen)
            _freeze(item, frozen)
    elif type(value) is list:
        for item in value:
            _freeze(item, frozen)
    else:
        return
    frozen[id(value)] = pack(value, frozen)


# --- Valid frames of every message type --------------------------------------------------------------

SHA_A: Final = hashlib.sha256(b"a").hexdigest()
SHA_B: Final = hashlib.sha256(b"b").hexdigest()


def seed_messages() -> list[tuple[Message, Direction]]:
    """One or more valid messages of every type, with the direction each travels in."""
    cpu = Device(kind="cpu", name="AMD Ryzen 5 5600X", memory_bytes=16 << 30)
    gpu = Device(kind="cuda", name="NVIDIA GeForce RTX 3060", memory_bytes=12 << 30)
    capabilities = Capabilities(
        devices=(gpu, cpu),
        memory_bytes=8 << 30,
        threads=6,
        codecs=("fp32", "int8", "topk", "dct"),
        platform="linux",
        runtimes=("torch", "onnxruntime"),
        unit_kinds=("train",),
    )
    update = encode_tensors({"w": torch.linspace(-1, 1, 12).reshape(3, 4)}, CodecConfig("int8"))
    metrics = TrainMetrics(
        losses=(3.5, 3.25, 3.0, 2.875),
        tokens=4096,
        seconds=12.5,
        device="cuda",
        device_name=gpu.name,
        runtime="torch",
    )
    recipe = InnerRecipe(
        steps=2, batch_size=1, seq_len=32, grad_accum=1, lr=0.0005, min_lr_ratio=0.125, warmup_steps=0,
        total_steps=100, global_step=4, weight_decay=0.0625, grad_clip=1.0, beta1=0.875, beta2=0.9375, eps=2.0**-20,
    )  # fmt: skip
    model = ModelSpec(
        preset="tiny",
        config=ModelConfig(
            vocab_size=512, d_model=64, n_layer=2, n_head=4, d_ff=256, max_seq_len=128, rope_theta=10000.0,
            norm_eps=2.0**-16,
        ),
    )  # fmt: skip
    unit = WorkUnit(
        kind="train", runtime="torch",
        unit_id="u-17", lease_id="l-17.2", lease_deadline=1.75e9, campaign_id="c1", campaign_name="Tiny stories",
        model_version=3, model=model, checkpoint=BlobRef(sha256=SHA_A, size=123456), checkpoint_format="safetensors",
        data=BlobRef(sha256=SHA_B, size=200), data_dtype="uint16", data_tokens=100,
        shard=("wte.weight", "blocks.0.attn.qkv.weight"),
        shard_shapes={"wte.weight": (512, 64), "blocks.0.attn.qkv.weight": (192, 64)},
        recipe=recipe, seed=42, codec={"name": "int8", "block_size": 256}, max_update_bytes=1 << 20,
    )  # fmt: skip
    to_server: list[Message] = [
        Hello(protocol_version=PROTOCOL_VERSION, client_version="0.3.1", token=None, name="Ada's PC",
              capabilities=capabilities),
        Hello(protocol_version=PROTOCOL_VERSION, client_version="1.0.0rc1+local", token="tok.abc-123_~+/=",
              name="box", capabilities=Capabilities(devices=(cpu,), memory_bytes=1 << 30, threads=1, codecs=("dct",),
                                                    platform="darwin-arm64", runtimes=("onnxruntime",),
                                                    unit_kinds=("train",))),
        RequestWork(),
        RequestWork(preferred_campaign="c1"),
        BlobRequest(sha256=SHA_A, offset=0, length=MAX_BLOB_CHUNK_BYTES),
        BlobRequest(sha256=SHA_B, offset=1 << 20, length=1),
        Progress(unit_id="u-17", lease_id="l-17.2", step=1, steps_total=2, loss=2.5, tokens=64, phase="training"),
        Progress(unit_id="u-17", lease_id="l-17.2", step=0, steps_total=2, loss=None, tokens=0, phase="downloading"),
        Submit(unit_id="u-17", lease_id="l-17.2", update=update, update_sha256=hashlib.sha256(update).hexdigest(),
               metrics=metrics),
        Submit(unit_id="u-1", lease_id="l-1", update=b"\x00", update_sha256=SHA_A,
               metrics=TrainMetrics(losses=(0.0,), tokens=0, seconds=0.0, device="cpu", device_name="cpu",
                                    runtime="onnxruntime", peak_memory_bytes=1 << 30)),
        Report(unit_id="eval-1-3-ab12", lease_id="l-9", losses=(5.25, 5.0, 4.75), seconds=1.5, device="cpu",
               device_name="browser (wasm)", runtime="onnxruntime"),
        Abandon(unit_id="u-17", lease_id="l-17.2", reason="out_of_memory", detail="CUDA out of memory"),
        Goodbye(reason="user quit"),
        Goodbye(reason=""),
    ]  # fmt: skip
    to_client: list[Message] = [
        Welcome(volunteer_id="v-9", token="tok.abc", server_version="0.1.0", heartbeat_interval_s=30.0,
                max_frame_bytes=MAX_FRAME_BYTES, dashboard_url="https://example.org/volunteers/v-9", credit_total=12.5),
        Welcome(volunteer_id="v-9", token=None, server_version="0.1.0", heartbeat_interval_s=1.0,
                max_frame_bytes=1 << 20, dashboard_url=None, credit_total=0.0),
        unit,
        NoWork(retry_after_s=5.0, reason="no active campaign"),
        BlobChunk(sha256=SHA_A, offset=0, total_size=10, data=b"0123456789"),
        BlobChunk(sha256=SHA_A, offset=10, total_size=10, data=b""),
        LeaseExtended(unit_id="u-17", lease_id="l-17.2", lease_deadline=1.75e9),
        Result(unit_id="u-17", lease_id="l-17.2", status="accepted", code=None, message="", credit=1.5e6),
        Result(unit_id="u-17", lease_id="l-17.2", status="rejected", code=ErrorCode.NORM_OUTLIER,
               message="norm 12 is above the round's bound 4", credit=0.0),
        Result(unit_id="u-17", lease_id="l-17.2", status="duplicate", code=ErrorCode.DUPLICATE_SUBMISSION,
               message="kept the first", credit=0.0),
        ErrorMessage(code=ErrorCode.MALFORMED_FRAME, message="bad", fatal=False),
        ErrorMessage(code=ErrorCode.RATE_LIMITED, message="slow down", fatal=True, ref_type="blob_request",
                     ref_id=SHA_A, retry_after_s=60.0),
    ]  # fmt: skip
    # A message with no fields (a later addition, say) needs no example: its empty struct is one.
    seen = {type(m) for m in to_server + to_client}
    for cls in MESSAGE_TYPES.values():
        if cls not in seen and not cls.__struct_fields__:
            (to_server if cls in get_args(ToServerMessage) else to_client).append(cast(Any, cls)())
    return [(m, "to_server") for m in to_server] + [(m, "to_client") for m in to_client]


# --- Hostile values -------------------------------------------------------------------------------------

_INTS: Final = (
    0, 1, -1, 2, 7, 8, 9, 16, 17, 31, 32, 33, 127, 128, 255, 256, 1023, 1024, 1025, 4096, 4097, 10_000, 10_001,
    65_535, 65_536, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 40), (1 << 50) + 1, (1 << 53) - 1, 1 << 53,
    (1 << 53) + 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, -(1 << 31), -(1 << 53) + 1, -(1 << 53) - 1, -(1 << 63),
)  # fmt: skip
_FLOATS: Final = (
    0.0, -0.0, 0.5, 1.0, -1.0, 1e-5, 0.9999999999999999, 1.0000000000000002, 5e-324, 2.2250738585072014e-308,
    1.7976931348623157e308, -1.7976931348623157e308, 1e11, 1e11 + 1, 1e15, 1e15 * 1.0000001, 86_400.000001,
    float(1 << 53), float(1 << 64), math.nan, -math.nan, math.inf, -math.inf,
    F32(math.nan), F32(math.inf), F32(-math.inf), F32(1.5), F32(-0.0), F32(3.4028234663852886e38),
)  # fmt: skip
_CHARS: Final = (
    "\x00", "\x01", "\x1f", "\x7f", "\x85", "\xa0", "\u200b", "\u200e", "\u202e", "\u2028", "\ufeff", "\ufffd",
    "\uffff", "\U0010ffff", "\U000e0001", "é", "😀", " ", "/", ".", "-", "_", ":", "%", "\\", '"', "'", "<", "\n",
)  # fmt: skip
_LENGTHS: Final = (63, 64, 65, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 2048, 2049, 5000)
_TEXT_BASES: Final = ("", "a", "1" * 64, "A" * 64, "g" * 64, "int8", "INT8", "v-1", "c1", "hello", "NaN", "1e400", "0x")
BAD_UTF8: Final = (
    b"\xff", b"\xfe\xff", b"\xc0\xaf", b"\xc0\x80", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
    b"\xed\xa0\xbd\xed\xb8\x80", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\x80", b"a\xed\xa0\x80b",
)  # fmt: skip
_RAW: Final = (
    Raw(b"\xc1"),
    Raw(b"\xd4\x01\x00"), Raw(b"\xd5\x7f\x00\x00"), Raw(b"\xd6\xff\x00\x00\x00\x00"),  # fixext, timestamp32
    Raw(b"\xd7\xff" + bytes(8)), Raw(b"\xd8\x01" + bytes(16)), Raw(b"\xc7\x0c\xff" + bytes(12)),
    Raw(b"\xc7\x00\x05"), Raw(b"\xc8\x00\x01\x02\x00"), Raw(b"\xc9\xff\xff\xff\xff\x02\x00"),
    Raw(b"\xdb\xff\xff\xff\xffab"), Raw(b"\xda\xff\xffab"), Raw(b"\xd9\xffab"),  # lying str lengths
    Raw(b"\xc6\xff\xff\xff\xff\x00"), Raw(b"\xc5\xff\xff\x00"), Raw(b"\xc4\xff\x00"),  # lying bin lengths
    Raw(b"\xdd\xff\xff\xff\xff\xc0"), Raw(b"\xdc\xff\xff\xc0"),  # lying array counts
    Raw(b"\xdf\xff\xff\xff\xff\xa1a\xc0"), Raw(b"\xde\xff\xff\xa1a\xc0"),  # lying map counts
    Raw(b"\x81\x01\x02"), Raw(b"\x81\xc0\x01"), Raw(b"\x81\xc4\x01a\x01"), Raw(b"\x81\x91\x01\x01"),  # non-str keys
    Raw(b"\x81\xcb" + struct.pack(">d", math.nan) + b"\x01"), Raw(b"\x82\xa1a\x01\xa1a\x02"),  # NaN key; dup key
    Raw(b"\xca\x7f\xc0\x00\x00"), Raw(b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x01"), Raw(b"\xcb\xff\xf0" + bytes(6)),
    Raw(b"\xcb\x00"), Raw(b"\xcd\x01"), Raw(b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff"),
    Raw(b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00"), Raw(b"\xcc\x00"), Raw(b"\xd0\xff"),  # -1 as int8
)  # fmt: skip


def _deep(depth: int, *, maps: bool) -> Raw:
    opener = b"\x81\xa1k" if maps else b"\x91"
    return Raw(opener * depth + b"\xc0")


class _Values:
    """Draws hostile values: type confusion, boundaries, hostile text, deep and wide containers."""

    def __init__(self, rng: random.Random, substructures: list[Any]) -> None:
        self.rng = rng
        self.substructures = substructures

    def any(self, depth: int = 0) -> Any:
        rng = self.rng
        pick = rng.random()
        if pick < 0.18:
            return rng.choice(_INTS)
        if pick < 0.32:
            return rng.choice(_FLOATS)
        if pick < 0.47:
            return self.text()
        if pick < 0.52:
            return rng.choice((None, True, False))
        if pick < 0.58:
            return rng.choice((b"", b"\x00", rng.randbytes(rng.randrange(1, 40))))
        if pick < 0.66:
            return rng.choice(_RAW)
        if pick < 0.72:
            return Raw(self.invalid_text())
        if pick < 0.78:
            return rng.choice(self.substructures)  # a valid struct where it doesn't belong
        if pick < 0.82:
            return _deep(
                rng.choice((MAX_FRAME_DEPTH - 2, MAX_FRAME_DEPTH - 1, MAX_FRAME_DEPTH, 40, 5000)),
                maps=rng.random() < 0.5,
            )
        if pick < 0.86:
            return self.digits()
        if depth < 3 and pick < 0.95:
            return [self.any(depth + 1) for _ in range(rng.randrange(0, 5))]
        if depth < 3:
            return Pairs([[self.key(), self.any(depth + 1)] for _ in range(rng.randrange(0, 4))])
        return rng.choice(_INTS)

    def number(self, value: int | float) -> Any:
        """A boundary near `value`, or a number of the other kind."""
        rng = self.rng
        if isinstance(value, float) or rng.random() < 0.2:
            near = [
                value * 2,
                -value,
                value + 1,
                value - 1,
                math.nextafter(value, math.inf),
                math.nextafter(value, -math.inf),
                F32(value),
            ]
            return rng.choice(near + list(_FLOATS))
        near_ints = [value + 1, value - 1, -value, value * 2, value << 32, *_INTS]
        choice = rng.choice(near_ints)
        return choice if -(1 << 63) <= choice < 1 << 64 else rng.choice(_INTS)

    def text(self, base: str = "") -> Any:
        rng = self.rng
        pick = rng.randrange(10)
        if pick == 0 or not base:
            base = rng.choice(_TEXT_BASES) if rng.random() < 0.8 else rng.choice("x😀é") * rng.choice(_LENGTHS)
        if pick <= 2:
            spot = rng.randrange(len(base) + 1)
            return base[:spot] + rng.choice(_CHARS) + base[spot:]
        if pick == 3:
            return (base or "x") * (rng.choice(_LENGTHS) // max(1, len(base)) + 1)
        if pick == 4:
            return base[:-1]
        if pick == 5:
            return base.upper() if rng.random() < 0.5 else base + base
        if pick == 6:
            return Raw(self.invalid_text(base))
        if pick == 7:
            return base[: rng.choice(_LENGTHS)] if len(base) > 64 else base + "x" * rng.choice(_LENGTHS)
        return base

    def invalid_text(self, base: str = "") -> bytes:
        """A MessagePack str header over bytes that are not UTF-8 (lone surrogates, overlong forms, ...)."""
        data = base.encode()[:60] + self.rng.choice(BAD_UTF8)
        return (bytes([0xA0 | len(data)]) if len(data) < 32 else bytes([0xD9, len(data)])) + data

    def digits(self) -> Any:
        """A 5,000-digit integer: MessagePack has no big integers, so it travels as text, bin or float."""
        number = "9" * 5000 if self.rng.random() < 0.5 else "-" + "1" * 4999
        return self.rng.choice(
            (number, number.encode(), float("1e308"), (1 << 64) - 1, Raw(b"\xcb\x7f\xf0" + bytes(6)))
        )

    def key(self) -> Any:
        rng = self.rng
        return rng.choice(
            (
                "",
                "x",
                "type",
                "v",
                "Type",
                "__proto__",
                "constructor",
                "unit_id ",
                "\x00",
                "😀",
                "token",
                "extra",
                "a" * 300,
                1,
                None,
                b"type",
                Raw(self.invalid_text("k")),
            )
        )


# --- Control frames -------------------------------------------------------------------------------------

CONTROL_KINDS: Final = ("valid", "equivalent", "field", "hostile", "bytes", "random", "noise")
"""How a control frame was made; the run counts frames and outcomes per kind."""

_KIND_WEIGHTS: Final = (3, 8, 40, 14, 22, 10, 3)
# First bytes that change what follows: container and string headers, extension types, 0xc1.
_HEADER_BYTES: Final = bytes.fromhex("00ff7f808f909fa0bfc0c1c4c6c7cacbcfd3d4d8d9dbdcdddedf")
_BAD_TAGS: Final = ("", "HELLO", "hello ", "hello\x00", "héllo", "launch", "error", None, 1, True, b"hello")
_BAD_V: Final = (0, 1, 3, -1, 99, 1 << 53, (1 << 64) - 1, -(1 << 63), 1.0, "1", True, None, b"\x01", [1], Pairs())
_SMALL_LIMITS: Final = (0, 1, 2, MAX_TENSOR_RANK, MAX_TENSOR_RANK + 1, MAX_DEVICES, MAX_DEVICES + 1, MAX_CODECS,
                        MAX_CODECS + 1, MAX_CODEC_PARAMS + 1)  # fmt: skip
_LARGE_LIMITS: Final = (MAX_SHARD_PARAMS, MAX_SHARD_PARAMS + 1, MAX_INNER_STEPS, MAX_INNER_STEPS + 1, MAX_FRAME_VALUES)
_MAX_REPEAT_BYTES: Final = 1 << 18
_KEYS: Final = tuple(pack(f"k{i}") for i in range(MAX_SHARD_PARAMS + 1))

# A place in a tree: the steps from the root to a container (a map entry's index, an array item's
# index), then the slot in it: (index, part) with part 1 a map value, 0 a map key, -1 an array item.
Path = tuple[int, ...]
Slot = tuple[Path, int, int]


@dataclass(frozen=True, slots=True)
class Fuzzed:
    """One generated control frame: `data` as sent, decoded in `direction`.

    `expect` is set for equivalent rewrites: the message the frame must decode to.
    """

    data: bytes
    direction: Direction
    kind: str
    expect: Message | None = None


@dataclass(frozen=True, slots=True)
class _Seed:
    message: Message
    direction: Direction
    tree: Pairs
    slots: tuple[Slot, ...]
    maps: tuple[Path, ...]


class FrameFuzzer:
    """An endless, seeded stream of control frames (`next`), from valid frames of every message type.

    Seed trees never change: a mutation copies the containers on the path to the slot it changes
    (copy on write), so the rest of a frame is written from bytes packed once (`frozen`).
    """

    def __init__(self, seed: int, *, directions: tuple[Direction, ...] = ("to_server", "to_client")) -> None:
        self.rng = random.Random(seed)
        self.frozen: dict[int, bytes] = {}
        self.seeds: list[_Seed] = []
        for message, direction in seed_messages():
            if direction in directions:
                tree = _tree(msgspec.msgpack.decode(encode(message)))
                _freeze(tree, self.frozen)
                self.seeds.append(_Seed(message, direction, tree, tuple(_slots(tree)), tuple(_maps(tree))))
        substructures = [item for s in self.seeds for _, item in s.tree if type(item) in (Pairs, list)]
        self.values = _Values(self.rng, substructures)
        self.field_names = sorted({name for cls in MESSAGE_TYPES.values() for name in cls.__struct_fields__})
        makers: tuple[Callable[[], Fuzzed], ...] = (
            self._valid, self._equivalent, self._field, self._hostile, self._bytes, self._random, self._noise
        )  # fmt: skip
        self._makers = makers

    def next(self) -> Fuzzed:
        return self.rng.choices(self._makers, weights=_KIND_WEIGHTS)[0]()

    def _pack(self, tree: Any) -> bytes:
        try:
            return pack(tree, self.frozen)
        except OverflowError:  # a boundary past 64 bits: write the largest instead
            return pack(_clamp(tree), self.frozen)

    # Frames that must decode ------------------------------------------------------------------------------

    def _valid(self) -> Fuzzed:
        seed = self.rng.choice(self.seeds)
        return Fuzzed(self._pack(seed.tree), seed.direction, "valid", seed.message)

    def _equivalent(self) -> Fuzzed:
        """The same message written differently: key order, header widths, float32, integral floats as ints."""
        rng = self.rng
        seed = rng.choice(self.seeds)
        tree: Any = Pairs(seed.tree)
        if isinstance(seed.message, ErrorMessage) and rng.random() < 0.3:  # an error frame is read in any version
            _set(tree, "v", rng.choice((0, 2, 99, (1 << 64) - 1)))
        rewrites = [self._shuffle, self._widen, self._narrow_floats]
        for rewrite in rng.sample(rewrites, rng.randrange(1, len(rewrites) + 1)):
            tree = rewrite(tree)
        return Fuzzed(self._pack(tree), seed.direction, "equivalent", seed.message)

    def _shuffle(self, value: Any) -> Any:
        if type(value) is Pairs:
            entries = [[key, self._shuffle(item)] for key, item in value]
            self.rng.shuffle(entries)
            return Pairs(entries)
        if type(value) is list:
            return [self._shuffle(item) for item in value]
        return value

    def _widen(self, value: Any) -> Any:
        wide = self.rng.random() < 0.6
        if type(value) is Pairs:
            inner: Any = Pairs([[self._widen(key), self._widen(item)] for key, item in value])
        elif type(value) is list:
            inner = [self._widen(item) for item in value]
        elif type(value) in (int, str, bytes):
            inner = value
        else:
            return value
        return Wide(inner) if wide else inner

    def _narrow_floats(self, value: Any) -> Any:
        if type(value) is Pairs:
            return Pairs([[key, self._narrow_floats(item)] for key, item in value])
        if type(value) is list:
            return [self._narrow_floats(item) for item in value]
        if type(value) is float and math.isfinite(value):
            if value.is_integer() and abs(value) < 1 << 53 and self.rng.random() < 0.5:
                return int(value)  # a float field accepts an integer (JavaScript writes 1.0 as 1)
            if struct.unpack(">f", struct.pack(">f", value))[0] == value:
                return F32(value)
        return value

    # Mutated frames -------------------------------------------------------------------------------------------

    def _field(self) -> Fuzzed:
        """One to three mutations of the tree of a valid frame, at any field."""
        seed = self.rng.choice(self.seeds)
        tree = Pairs(seed.tree)
        slots, maps = seed.slots, seed.maps
        for step in range(self.rng.choice((1, 1, 1, 2, 3))):
            if step:
                slots, maps = tuple(_slots(tree)), tuple(_maps(tree))
            self._mutate(tree, slots, maps)
        return Fuzzed(self._pack(tree), seed.direction, "field")

    def _mutate(self, tree: Pairs, slots: tuple[Slot, ...], maps: tuple[Path, ...]) -> None:
        rng, values = self.rng, self.values
        if not slots:  # every key was deleted
            tree.append([rng.choice(self.field_names), values.any()])
            return
        path, index, part = rng.choice(slots)
        op = rng.randrange(13)
        if 5 <= op <= 8:  # the keys of a map
            target = _writable(tree, rng.choice(maps))
            if op == 5 and target:  # missing key
                del target[rng.randrange(len(target))]
            elif op == 6:  # unknown key, or a field of another message
                name = rng.choice(self.field_names) if rng.random() < 0.5 else values.key()
                target.insert(rng.randrange(len(target) + 1), [name, values.any()])
            elif op == 7 and target:  # duplicate key, same or another value
                key, item = rng.choice(target)
                target.append([key, item if rng.random() < 0.5 else values.any()])
            elif op == 8 and target:  # renamed key
                spot = rng.randrange(len(target))
                key, item = target[spot]
                target[spot] = [rng.choice(self.field_names) if rng.random() < 0.6 else values.text(str(key)), item]
            return
        if op == 9:
            _set(tree, "type", self._type_tag())
            return
        if op == 10:
            _set(tree, "v", rng.choice(_BAD_V))
            return
        holder = _writable(tree, path)
        current = holder[index][part] if part >= 0 else holder[index]
        if op <= 2:  # type confusion
            new = values.any()
        elif op == 3:
            new = values.number(current) if type(current) in (int, float) else values.any()
        elif op == 4:
            new = values.text(current if type(current) is str else "")
        elif op == 11:  # nesting around a value
            new = _nest(current, rng.choice((1, 2, MAX_FRAME_DEPTH - 2, MAX_FRAME_DEPTH, 64)), rng)
        else:  # an array across a limit, or a map grown the same way
            count = rng.choice(_LARGE_LIMITS if rng.random() < 0.1 else _SMALL_LIMITS)  # large ones cost time
            if type(current) is Pairs and current:
                new = _repeat_map(current[0][1], min(count, MAX_SHARD_PARAMS + 1), self.frozen)
            else:
                new = _repeat(
                    current[0] if type(current) is list and current else values.any(depth=3), count, self.frozen
                )
        _put(holder, index, part, new)

    def _type_tag(self) -> Any:
        rng = self.rng
        if rng.random() < 0.5:
            return rng.choice(list(MESSAGE_TYPES))
        return rng.choice((*_BAD_TAGS, ["hello"], Pairs([["hello", 1]]), Raw(self.values.invalid_text("hello"))))

    def _hostile(self) -> Fuzzed:
        """A valid frame with MessagePack no valid encoder writes at one spot, or hostile at the top."""
        rng = self.rng
        seed = rng.choice(self.seeds)
        tree = Pairs(seed.tree)
        pick = rng.randrange(30)
        if pick >= 5:
            path, index, part = rng.choice(seed.slots)
            raw = rng.choice(_RAW) if pick >= 12 else Raw(self.values.invalid_text())
            _put(_writable(tree, path), index, part, raw)
            data = self._pack(tree)
        elif pick >= 3:  # a huge declared length at the top, with a tiny body
            tag = rng.choice((b"\xdf\xff\xff\xff\xff", b"\xde\xff\xff", b"\xdf\x00\x01\x00\x00"))
            data = tag + self._pack(tree)[1:]
        elif pick >= 1:  # every entry twice
            data = self._pack(Pairs(tree + tree))
        else:  # many values
            count = rng.choice((MAX_FRAME_VALUES // 2 - 4, MAX_FRAME_VALUES // 2, MAX_FRAME_VALUES))
            tree.append(["filler", _repeat(None, count, self.frozen)])
            data = self._pack(tree)
        return Fuzzed(data, seed.direction, "hostile")

    def _bytes(self) -> Fuzzed:
        """Byte-level damage to a valid (or already mutated) frame."""
        rng = self.rng
        if rng.random() < 0.7:
            seed = rng.choice(self.seeds)
            direction, data = seed.direction, bytearray(self._pack(seed.tree))
        else:
            base = self._field()
            direction, data = base.direction, bytearray(base.data)
        for _ in range(rng.choice((1, 1, 2, 3, 8))):
            op = rng.randrange(9)
            spot = rng.randrange(len(data)) if data else 0
            if op <= 1 and data:
                data[spot] ^= 1 << rng.randrange(8)
            elif op == 2 and data:
                data[spot] = rng.choice(_HEADER_BYTES)
            elif op == 3:
                del data[spot:]
            elif op == 4:
                data += rng.randbytes(rng.randrange(1, 9))
            elif op == 5:
                data += pack(rng.choice((None, 1, "x", Pairs(), [])))
            elif op == 6:
                data[spot:spot] = rng.randbytes(rng.randrange(1, 5))
            elif op == 7:
                del data[spot : spot + rng.randrange(1, 9)]
            else:  # splice with another frame
                other = self._pack(rng.choice(self.seeds).tree)
                data[spot:] = other[rng.randrange(len(other)) :]
        return Fuzzed(bytes(data), direction, "bytes")

    def _random(self) -> Fuzzed:
        """Structured random MessagePack: a map with a type tag and random fields of that type (or any)."""
        rng, values = self.rng, self.values
        tag = rng.choice(list(MESSAGE_TYPES)) if rng.random() < 0.85 else self._type_tag()
        cls = MESSAGE_TYPES.get(tag) if isinstance(tag, str) else None
        names = list(cls.__struct_fields__) if cls is not None else rng.sample(self.field_names, 4)
        tree = Pairs([["type", tag], ["v", PROTOCOL_VERSION if rng.random() < 0.9 else rng.choice(_BAD_V)]])
        for name in names:
            if rng.random() < 0.9:
                tree.append([name, values.any(depth=1)])
        rng.shuffle(tree)
        direction: Direction = "to_client" if isinstance(tag, str) and tag in _TO_CLIENT_TAGS else "to_server"
        return Fuzzed(self._pack(tree), direction, "random")

    def _noise(self) -> Fuzzed:
        """Random bytes, most of them starting like a map."""
        rng = self.rng
        data = rng.randbytes(rng.randrange(0, 64))
        if data and rng.random() < 0.7:
            data = bytes([rng.choice((0x80, 0x81, 0x83, 0x8F, 0xDE, 0xDF))]) + data[1:]
        return Fuzzed(data, rng.choice(("to_server", "to_client")), "noise")


_TO_CLIENT_TAGS: Final = frozenset(
    cls.TYPE for cls in (Welcome, WorkUnit, NoWork, BlobChunk, LeaseExtended, Result, ErrorMessage)
)


def _slots(tree: Pairs) -> list[Slot]:
    """Every place a value sits: map values, some map keys, the first items of arrays."""
    found: list[Slot] = []
    stack: list[tuple[Path, Any]] = [((), tree)]
    while stack:
        path, node = stack.pop()
        if type(node) is Pairs:
            for i, (_, item) in enumerate(node):
                found.append((path, i, 1))
                if len(found) % 5 == 0:
                    found.append((path, i, 0))
                if type(item) in (Pairs, list):
                    stack.append(((*path, i), item))
        elif type(node) is list:
            for i, item in enumerate(node[:16]):
                found.append((path, i, -1))
                if type(item) in (Pairs, list):
                    stack.append(((*path, i), item))
    return found


def _maps(tree: Pairs) -> list[Path]:
    found: list[Path] = []
    stack: list[tuple[Path, Any]] = [((), tree)]
    while stack:
        path, node = stack.pop()
        if type(node) is Pairs:
            found.append(path)
            stack.extend(((*path, i), item) for i, (_, item) in enumerate(node) if type(item) in (Pairs, list))
        elif type(node) is list:
            stack.extend(((*path, i), item) for i, item in enumerate(node[:16]) if type(item) in (Pairs, list))
    return found


def _writable(root: Pairs, path: Path) -> Any:
    """The container at `path`, after copying it and every container above it except `root` (a copy already)."""
    node: Any = root
    for step in path:
        if type(node) is Pairs:
            key, child = node[step]
            child = Pairs(child) if type(child) is Pairs else list(child)
            node[step] = [key, child]
        else:
            child = node[step]
            child = Pairs(child) if type(child) is Pairs else list(child)
            node[step] = child
        node = child
    return node


def _put(holder: Any, index: int, part: int, value: Any) -> None:
    if part < 0:
        holder[index] = value
    elif part == 1:
        holder[index] = [holder[index][0], value]
    else:
        holder[index] = [value, holder[index][1]]


def _set(tree: Pairs, key: str, value: Any) -> None:
    for i, entry in enumerate(tree):
        if entry[0] == key:
            tree[i] = [key, value]
            return
    tree.append([key, value])


def _repeat(item: Any, count: int, frozen: Mapping[int, bytes]) -> Raw:
    """An array of `count` copies of `item`, packed once."""
    packed = pack(_clamp(item), frozen)
    if len(packed) * count > _MAX_REPEAT_BYTES:
        packed = b"\x00"
    return Raw(_container_header(count, 0x90, 0xDC, 0xDD) + packed * count)


def _repeat_map(item: Any, count: int, frozen: Mapping[int, bytes]) -> Raw:
    """A map of `count` distinct keys, each holding `item`."""
    packed = pack(_clamp(item), frozen)
    if len(packed) * count > _MAX_REPEAT_BYTES:
        packed = b"\x00"
    return Raw(_container_header(count, 0x80, 0xDE, 0xDF) + b"".join(key + packed for key in _KEYS[:count]))


def _container_header(count: int, fix: int, tag16: int, tag32: int) -> bytes:
    if count < 16:
        return bytes([fix | count])
    if count < 1 << 16:
        return bytes([tag16]) + struct.pack(">H", count)
    return bytes([tag32]) + struct.pack(">I", count)


def _nest(value: Any, depth: int, rng: random.Random) -> Any:
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else Pairs([["k", value]])
    return value


def _clamp(value: Any) -> Any:
    kind = type(value)
    if kind is Pairs:
        return Pairs([[_clamp(key), _clamp(item)] for key, item in value])
    if kind is list:
        return [_clamp(item) for item in value]
    if kind is int:
        return min(max(value, -(1 << 63)), (1 << 64) - 1)
    return value
