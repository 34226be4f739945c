"""The control-channel contract: every message round-trips, every bad frame gets a precise error.

Also keeps docs/protocol.md honest: its tables of fields, error codes, limits and close codes are
generated from the code, and a test fails when they drift. To regenerate them:

    COMMONWEIGHTS_UPDATE_DOCS=1 .venv/bin/python -m pytest tests/protocol/test_messages.py -k docs
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import itertools
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import msgpack
import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    UPDATE_REJECTIONS,
    Abandon,
    BlobChunk,
    BlobRef,
    BlobRequest,
    Capabilities,
    CloseCode,
    Device,
    ErrorCode,
    ErrorMessage,
    Goodbye,
    Hello,
    InnerRecipe,
    Keepalive,
    LeaseExtended,
    Message,
    ModelConfig,
    ModelSpec,
    NoWork,
    PrivateRecipe,
    Progress,
    ProtocolError,
    Report,
    RequestWork,
    Result,
    Submit,
    ToServerMessage,
    TrainMetrics,
    Welcome,
    WorkUnit,
    check_version,
    close_code_for,
    decode,
    encode,
)
from protocol import limits as limits_module
from protocol.field_rules import TextFormat
from protocol.limits import (
    MAX_BLOB_CHUNK_BYTES,
    MAX_FRAME_DEPTH,
    MAX_FRAME_VALUES,
    MAX_INNER_STEPS,
    MAX_SHARD_PARAMS,
    MAX_TOKENIZER_BYTES,
)
from protocol.messages import KEY, ToServerType

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
TO_SERVER_TAGS = frozenset(cls.TYPE for cls in get_args(ToServerMessage))
# Messages near the protocol's size limits are the point, so large examples are no health problem (the
# lowest hypothesis release flagged `welcome`'s as data_too_large once in CI).
RELAXED = [HealthCheck.too_slow, HealthCheck.data_too_large]
FAST = settings(max_examples=20, deadline=None, suppress_health_check=RELAXED)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=RELAXED)


def direction_of(tag: str) -> Literal["to_server", "to_client"]:
    return "to_server" if tag in TO_SERVER_TAGS else "to_client"


# --- One valid example of every message -----------------------------------------------------------

CHECKPOINT_SHA = hashlib.sha256(b"checkpoint").hexdigest()
DATA_SHA = hashlib.sha256(b"data").hexdigest()
UPDATE = bytes(range(16))
METRICS = TrainMetrics(
    losses=(9.01, 8.72, 8.40, 8.13),
    tokens=512,
    seconds=3.5,
    device="cuda",
    device_name="NVIDIA GeForce RTX 3060",
    runtime="torch",
    peak_memory_bytes=1_500_000_000,
)
CONFIG = ModelConfig(
    vocab_size=8192,
    d_model=96,
    n_layer=3,
    n_head=4,
    d_ff=256,
    max_seq_len=256,
    rope_theta=10000.0,
    norm_eps=1e-5,
)
RECIPE = InnerRecipe(
    steps=4,
    batch_size=2,
    seq_len=64,
    grad_accum=1,
    lr=3e-3,
    min_lr_ratio=0.1,
    warmup_steps=10,
    total_steps=1000,
    global_step=40,
    weight_decay=0.1,
    grad_clip=1.0,
    beta1=0.9,
    beta2=0.95,
    eps=1e-8,
)
WORK_UNIT = WorkUnit(
    kind="train",
    runtime="torch",
    unit_id="u-42",
    lease_id="l-42-1",
    lease_deadline=1_767_225_600.0,
    campaign_id="tinystories",
    campaign_name="TinyStories, tiny model",
    model_version=7,
    model=ModelSpec(preset="tiny", config=CONFIG),
    checkpoint=BlobRef(sha256=CHECKPOINT_SHA, size=1_234_567),
    checkpoint_format="safetensors",
    data=BlobRef(sha256=DATA_SHA, size=2 * 513),
    data_dtype="uint16",
    data_tokens=513,
    shard=("blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight"),
    shard_shapes={"blocks.0.attn.qkv.weight": (288, 96), "blocks.0.attn.proj.weight": (96, 96)},
    recipe=RECIPE,
    seed=1234,
    codec={"name": "int8", "block_size": 256},
    max_update_bytes=1 << 20,
)
PRIVATE = PrivateRecipe(
    tokenizer=BlobRef(hashlib.sha256(b"tokenizer").hexdigest(), 2048),
    file_kinds=(".txt", ".md"),
    max_file_bytes=1 << 20,
    max_total_bytes=1 << 26,
    min_tokens=4096,
    clip_norm=1.0,
    noise_multiplier=1.5,
    delta=1e-5,
    epsilon_budget=8.0,
)
PRIVATE_WIRE = msgspec.to_builtins(PRIVATE)


def test_a_unit_on_the_volunteers_own_data_carries_no_data() -> None:
    unit = msgspec.structs.replace(WORK_UNIT, data=None, data_tokens=0, private=PRIVATE)
    frame = encode(unit)
    assert decode(frame, direction="to_client") == unit
    assert msgpack.unpackb(frame)["data"] is None


EXAMPLES: dict[str, Message] = {
    "hello": Hello(
        protocol_version=PROTOCOL_VERSION,
        client_version="0.1.0",
        token=None,
        name="ada's laptop",
        capabilities=Capabilities(
            devices=(
                Device(kind="cuda", name="NVIDIA GeForce RTX 3060", memory_bytes=12 << 30),
                Device(kind="cpu", name="AMD Ryzen 7 5800X", memory_bytes=32 << 30),
            ),
            memory_bytes=8 << 30,
            threads=8,
            codecs=("fp32", "fp16", "bf16", "int8", "topk", "dct"),
            platform="linux-x86_64",
            runtimes=("torch", "onnxruntime"),
            unit_kinds=("train",),
        ),
    ),
    "request_work": RequestWork(preferred_campaign="tinystories"),
    "blob_request": BlobRequest(sha256=CHECKPOINT_SHA, offset=4 << 20, length=4 << 20),
    "progress": Progress(
        unit_id="u-42", lease_id="l-42-1", step=2, steps_total=4, loss=8.72, tokens=256, phase="training"
    ),
    "submit": Submit(
        unit_id="u-42",
        lease_id="l-42-1",
        update=UPDATE,
        update_sha256=hashlib.sha256(UPDATE).hexdigest(),
        metrics=METRICS,
    ),
    "report": Report(
        unit_id="eval-3-7-a1b2c3",
        lease_id="l-9",
        losses=(5.21, 5.18, 5.25),
        seconds=1.25,
        device="cpu",
        device_name="browser (wasm)",
        runtime="onnxruntime",
    ),
    "abandon": Abandon(unit_id="u-42", lease_id="l-42-1", reason="out_of_memory", detail="CUDA out of memory"),
    "goodbye": Goodbye(reason="user quit"),
    "keepalive": Keepalive(),
    "welcome": Welcome(
        volunteer_id="v-1001",
        token="c2VjcmV0LXRva2VuLWZvci12LTEwMDE",
        server_version="0.1.0",
        heartbeat_interval_s=30.0,
        max_frame_bytes=16 << 20,
        dashboard_url="https://weights.example.org/volunteers/v-1001",
        credit_total=0.0,
    ),
    "work_unit": WORK_UNIT,
    "no_work": NoWork(retry_after_s=60.0, reason="no active campaign"),
    "blob_chunk": BlobChunk(sha256=DATA_SHA, offset=0, total_size=1026, data=b"\x00\x01" * 513),
    "lease_extended": LeaseExtended(unit_id="u-42", lease_id="l-42-1", lease_deadline=1_767_225_900.0),
    "result": Result(unit_id="u-42", lease_id="l-42-1", status="accepted", code=None, message="Thanks!", credit=12.5),
    "error": ErrorMessage(
        code=ErrorCode.LEASE_EXPIRED,
        message="Lease l-42-1 ended; the unit was reissued. Ask for new work.",
        fatal=False,
        ref_type="progress",
        ref_id="u-42",
    ),
}


def wire_of(message: Message) -> dict[str, Any]:
    body = msgpack.unpackb(msgpack.packb(msgspec.to_builtins(message, builtin_types=(bytes,))))
    assert isinstance(body, dict)
    return {"type": message.TYPE, "v": PROTOCOL_VERSION, **body}


def refusal(frame: object, direction: Literal["to_server", "to_client"] = "to_server", **kw: Any) -> ProtocolError:
    data: Any = msgpack.packb(frame, use_bin_type=True) if isinstance(frame, dict | list) else frame
    with pytest.raises(ProtocolError) as caught:
        decode(data, direction=direction, **kw)
    return caught.value


def test_examples_cover_every_message_type() -> None:
    assert set(EXAMPLES) == set(MESSAGE_TYPES)
    assert all(type(message) is MESSAGE_TYPES[tag] for tag, message in EXAMPLES.items())


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_every_example_round_trips(tag: str) -> None:
    message = EXAMPLES[tag]
    assert decode(encode(message), direction=direction_of(tag)) == message


def test_to_server_type_literal_lists_the_volunteer_messages() -> None:
    assert set(get_args(ToServerType)) == TO_SERVER_TAGS


# --- Hypothesis strategies, derived from the schema --------------------------------------------


def fields_of(cls: type) -> tuple[mi.Field, ...]:
    """The fields of a struct, as msgspec.inspect describes them (types, constraints, descriptions)."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info.fields


def unwrap(t: mi.Type) -> tuple[mi.Type, dict[str, Any]]:
    """`t` without its Metadata layers, and the `Meta.extra` they held (format, printable, unique)."""
    extra: dict[str, Any] = {}
    while isinstance(t, mi.Metadata):
        extra |= t.extra or {}
        t = t.type
    return t, extra


def arms_of(t: mi.Type) -> list[mi.Type]:
    """The types `t` admits besides nil, unwrapped."""
    t, _ = unwrap(t)
    arms = t.types if isinstance(t, mi.UnionType) else (t,)
    return [unwrap(arm)[0] for arm in arms if not isinstance(unwrap(arm)[0], mi.NoneType)]


def ints_for(rule: mi.IntType) -> st.SearchStrategy[int]:
    low = rule.ge if rule.ge is not None else rule.gt + 1  # type: ignore[operator]
    high = rule.le if rule.le is not None else rule.lt - 1  # type: ignore[operator]
    return st.integers(int(low), int(high))


def floats_for(rule: mi.FloatType) -> st.SearchStrategy[float]:
    return st.floats(
        min_value=rule.ge if rule.ge is not None else rule.gt,
        max_value=rule.le if rule.le is not None else rule.lt,
        exclude_min=rule.ge is None,
        exclude_max=rule.le is None,
        allow_nan=False,
        allow_infinity=False,
    )


def texts_for(
    min_len: int, max_len: int, *, pattern: TextFormat | None = None, printable: bool = False
) -> st.SearchStrategy[str]:
    if pattern is not None:
        return st.from_regex(pattern.regex, fullmatch=True).filter(lambda s: min_len <= len(s) <= max_len)
    low, high = min_len, min(max_len, min_len + 12)
    if printable:
        alphabet = st.characters(categories=("L", "M", "N", "P", "S")) | st.just(" ")
        return st.text(alphabet, min_size=low, max_size=high)
    return st.text(min_size=low, max_size=high)


def values_for(t: mi.Type) -> st.SearchStrategy[Any]:
    t, extra = unwrap(t)
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.UnionType):
        return st.one_of([values_for(arm) for arm in t.types])
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        return ints_for(t)
    if isinstance(t, mi.FloatType):
        return floats_for(t)
    if isinstance(t, mi.StrType):
        assert t.max_length is not None
        return texts_for(
            t.min_length or 0, t.max_length, pattern=extra.get("format"), printable=bool(extra.get("printable"))
        )
    if isinstance(t, mi.BytesType):
        assert t.max_length is not None
        low = t.min_length or 0
        return st.binary(min_size=low, max_size=min(t.max_length, low + 32))
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.VarTupleType):
        assert t.max_length is not None
        low = t.min_length or 0
        return st.lists(
            values_for(t.item_type),
            min_size=low,
            max_size=min(t.max_length, low + 3),
            unique=bool(extra.get("unique")),
        ).map(tuple)
    if isinstance(t, mi.DictType):
        assert t.max_length is not None
        low = t.min_length or 0
        return st.dictionaries(
            values_for(t.key_type), values_for(t.value_type), min_size=low, max_size=min(t.max_length, low + 3)
        )
    if isinstance(t, mi.StructType):
        return instances_of(t.cls)
    raise AssertionError(f"no strategy for {t!r}")


def kwargs_of(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({spec.name: values_for(spec.type) for spec in fields_of(cls)})


@st.composite
def model_configs(draw: st.DrawFn) -> ModelConfig:
    n_head = draw(st.integers(1, 8))
    kwargs = draw(kwargs_of(ModelConfig)) | {
        "n_head": n_head,
        "d_model": n_head * 2 * draw(st.integers(1, 16)),
    }
    return ModelConfig(**kwargs)


@st.composite
def recipes(draw: st.DrawFn) -> InnerRecipe:
    small = {
        "steps": draw(st.integers(1, 20)),
        "batch_size": draw(st.integers(1, 8)),
        "grad_accum": draw(st.integers(1, 4)),
        "seq_len": draw(st.integers(1, 64)),
    }
    return InnerRecipe(**(draw(kwargs_of(InnerRecipe)) | small))


@st.composite
def work_units(draw: st.DrawFn) -> WorkUnit:
    kwargs = draw(kwargs_of(WorkUnit))
    config: ModelConfig = kwargs["model"].config
    recipe = msgspec.structs.replace(kwargs["recipe"], seq_len=min(kwargs["recipe"].seq_len, config.max_seq_len))
    dtype = "uint16" if config.vocab_size <= 1 << 16 else "uint32"
    tokens = recipe.tokens_needed + draw(st.integers(0, 1000))
    shape = st.lists(st.integers(1, 1 << 20), max_size=3).map(tuple)
    name = texts_for(1, 64, pattern=KEY)
    # A chain of deltas ends at the checkpoint: each result is the next base.
    drawn = list(kwargs["deltas"])
    chain = [kwargs["checkpoint"].sha256]
    for _ in drawn:
        chain.insert(0, draw(st.text("0123456789abcdef", min_size=64, max_size=64)))
    deltas = tuple(msgspec.structs.replace(step, base=chain[i], result=chain[i + 1]) for i, step in enumerate(drawn))
    # A unit on the volunteer's own data is a train unit without data or shared moments.
    private = kwargs["private"] if kwargs["kind"] == "train" and not recipe.shared_moments else None
    if private is not None:
        tokens = 0
        size = min(private.tokenizer.size, MAX_TOKENIZER_BYTES)
        private = msgspec.structs.replace(private, tokenizer=msgspec.structs.replace(private.tokenizer, size=size))
    data_sha = (kwargs["data"] or BlobRef(DATA_SHA, 0)).sha256
    return WorkUnit(
        **kwargs
        | {
            "recipe": recipe,
            "data_dtype": dtype,
            "data_tokens": tokens,
            "data": None if private else BlobRef(data_sha, tokens * (2 if dtype == "uint16" else 4)),
            "private": private,
            "shard_shapes": {param: draw(shape) for param in kwargs["shard"]},
            "codec": kwargs["codec"] | {"name": draw(name)},
            "graph": (kwargs["graph"] or BlobRef("0" * 64, 1)) if kwargs["runtime"] == "onnxruntime" else None,
            "deltas": deltas,
            # Shared moments only where the unit trains with them.
            "moments": kwargs["moments"] if kwargs["kind"] == "train" and recipe.shared_moments else None,
        }
    )


@st.composite
def results(draw: st.DrawFn) -> Result:
    status = draw(st.sampled_from(["accepted", "rejected", "duplicate"]))
    codes = {"accepted": st.none(), "rejected": st.sampled_from(list(ErrorCode))}
    code = draw(codes.get(status, st.just(ErrorCode.DUPLICATE_SUBMISSION)))
    return Result(**(draw(kwargs_of(Result)) | {"status": status, "code": code}))


@st.composite
def blob_chunks(draw: st.DrawFn) -> BlobChunk:
    total = draw(st.integers(0, 10_000))
    offset = draw(st.integers(0, total))
    data = draw(st.binary(min_size=1 if offset < total else 0, max_size=min(64, total - offset)))
    return BlobChunk(sha256=draw(kwargs_of(BlobChunk))["sha256"], offset=offset, total_size=total, data=data)


@st.composite
def progresses(draw: st.DrawFn) -> Progress:
    total = draw(st.integers(1, MAX_INNER_STEPS))
    return Progress(**(draw(kwargs_of(Progress)) | {"steps_total": total, "step": draw(st.integers(0, total))}))


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    return Hello(**(draw(kwargs_of(Hello)) | {"protocol_version": PROTOCOL_VERSION}))


# Classes whose fields constrain each other get a hand-written strategy.
CONSTRAINED: dict[type, Callable[[], st.SearchStrategy[Any]]] = {
    ModelConfig: model_configs,
    InnerRecipe: recipes,
    WorkUnit: work_units,
    Result: results,
    BlobChunk: blob_chunks,
    Progress: progresses,
    Hello: hellos,
}


def instances_of(cls: type) -> st.SearchStrategy[Any]:
    if cls in CONSTRAINED:
        return CONSTRAINED[cls]()
    return kwargs_of(cls).map(lambda kwargs: cls(**kwargs))


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
@FAST
@given(data=st.data())
def test_every_message_type_round_trips(tag: str, data: st.DataObject) -> None:
    message = data.draw(instances_of(MESSAGE_TYPES[tag]))
    assert decode(encode(message), direction=direction_of(tag)) == message


# --- The envelope: map, type, v ----------------------------------------------------------------


def test_decode_accepts_bytearray_and_memoryview() -> None:
    frame = encode(EXAMPLES["progress"])
    assert decode(bytearray(frame), direction="to_server") == EXAMPLES["progress"]
    assert decode(memoryview(frame), direction="to_server") == EXAMPLES["progress"]


def test_a_strided_buffer_is_malformed() -> None:
    assert refusal(memoryview(encode(EXAMPLES["goodbye"]))[::2]).code is ErrorCode.MALFORMED_FRAME


def test_a_text_frame_is_malformed() -> None:
    err = refusal('{"type": "hello"}')
    assert err.code is ErrorCode.MALFORMED_FRAME
    assert "binary WebSocket frames" in err.message


@pytest.mark.parametrize("frame", [b"", b"\x90", b"\x01", b"\xa3abc", b"\xc0"], ids=repr)
def test_a_frame_that_is_not_one_map_is_malformed(frame: bytes) -> None:
    err = refusal(frame)
    assert err.code is ErrorCode.MALFORMED_FRAME
    assert err.message == "A frame must be one MessagePack map."


def test_every_truncation_of_a_frame_is_malformed() -> None:
    frame = encode(EXAMPLES["work_unit"])
    for end in range(1, len(frame)):
        assert refusal(frame[:end], "to_client").code is ErrorCode.MALFORMED_FRAME


def test_trailing_bytes_are_malformed() -> None:
    err = refusal(encode(EXAMPLES["goodbye"]) + b"\xc0\xc0")
    assert (err.code, err.message) == (ErrorCode.MALFORMED_FRAME, "2 bytes follow the frame's map.")


@pytest.mark.parametrize("ext", [b"\xd4\x01\x00", b"\xc7\x00\x05", b"\xd6\xff\x00\x00\x00\x00"], ids=repr)
def test_extension_types_are_refused(ext: bytes) -> None:
    err = refusal(b"\x81\xa6reason" + ext)
    assert err.code is ErrorCode.MALFORMED_FRAME
    assert "extension types are not allowed" in err.message


def test_the_never_used_byte_is_malformed() -> None:
    assert "0xc1" in refusal(b"\x81\xa6reason\xc1").message


def test_nesting_deeper_than_the_limit_is_malformed() -> None:
    too_deep = b"\x81\xa1x" + b"\x91" * MAX_FRAME_DEPTH + b"\xc0"  # the frame's map is level 1
    err = refusal(too_deep)
    assert err.code is ErrorCode.MALFORMED_FRAME
    assert f"deeper than {MAX_FRAME_DEPTH} levels" in err.message
    deepest = b"\x81\xa1x" + b"\x91" * (MAX_FRAME_DEPTH - 1) + b"\xc0"
    assert "deeper" not in refusal(deepest).message


def test_more_values_than_the_limit_is_malformed_before_unpacking() -> None:
    # 70k empty maps: a few bytes each on the wire, but a dict each once unpacked.
    frame = b"\x81\xa1x\xdd" + (70_000).to_bytes(4, "big") + b"\x80" * 70_000
    err = refusal(frame)
    assert err.code is ErrorCode.MALFORMED_FRAME
    assert f"more than {MAX_FRAME_VALUES} values" in err.message


def test_a_duplicate_key_is_malformed() -> None:
    frame = b"\x83\xa4type\xa7goodbye\xa1v\x05\xa4type\xa5hello"
    err = refusal(frame)
    assert (err.code, err.message) == (ErrorCode.MALFORMED_FRAME, "The key 'type' appears twice in one map.")


def test_a_duplicate_key_in_a_nested_map_is_malformed_however_it_is_spelled() -> None:
    # The second "n" is a str8: the same key in a longer encoding; msgspec alone would let it win.
    frame = b"\x83\xa4type\xa7goodbye\xa1v\x05\xa6reason\x82\xa1n\x01\xd9\x01n\x02"
    err = refusal(frame)
    assert (err.code, err.message) == (ErrorCode.MALFORMED_FRAME, "The key 'n' appears twice in one map.")


def test_a_bin_key_is_not_the_str_key_with_the_same_bytes() -> None:
    frame = b"\x83\xa4type\xa7goodbye\xa1v\x05\xa6reason\x82\xa1n\x01\xc4\x01n\x02"
    assert refusal(frame).code is ErrorCode.SCHEMA_VIOLATION


def test_the_envelope_is_read_from_the_frame_map_only() -> None:
    err = refusal({"reason": {"type": "goodbye", "v": 5}})
    assert (err.code, err.message) == (ErrorCode.MALFORMED_FRAME, "The frame has no 'type' string naming its message.")


def test_invalid_utf8_is_malformed() -> None:
    frame = b"\x83\xa4type\xa7goodbye\xa1v\x05\xa6reason\xa2\xff\xfe"
    assert refusal(frame).code is ErrorCode.MALFORMED_FRAME


def test_a_non_string_map_key_is_malformed() -> None:
    assert refusal(b"\x81\x01\x01").code is ErrorCode.MALFORMED_FRAME


def test_a_frame_over_max_bytes_is_refused_before_unpacking() -> None:
    frame = encode(EXAMPLES["submit"])
    err = refusal(frame, max_bytes=len(frame) - 1)
    assert err.code is ErrorCode.FRAME_TOO_LARGE
    assert f"The frame is {len(frame)} bytes; the limit is {len(frame) - 1} bytes." == err.message
    assert decode(frame, direction="to_server", max_bytes=len(frame)) == EXAMPLES["submit"]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ({"v": 5, "reason": "x"}, "no 'type' string"),
        ({"type": 7, "v": 5}, "no 'type' string"),
        ({"type": "goodbye", "reason": "x"}, "no integer 'v'"),
        ({"type": "goodbye", "v": "1", "reason": "x"}, "no integer 'v'"),
        ({"type": "goodbye", "v": True, "reason": "x"}, "no integer 'v'"),
        ({"type": "goodbye", "v": 1.0, "reason": "x"}, "no integer 'v'"),
    ],
)
def test_a_missing_or_mistyped_envelope_is_malformed(frame: dict[str, Any], expected: str) -> None:
    err = refusal(frame)
    assert err.code is ErrorCode.MALFORMED_FRAME
    assert expected in err.message


def test_an_unknown_type_is_refused_with_the_accepted_ones() -> None:
    err = refusal({"type": "hack", "v": 5})
    assert err.code is ErrorCode.UNKNOWN_TYPE
    assert "'hack'" in err.message and "hello, request_work" in err.message
    assert err.ref_type is None


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_a_message_sent_the_wrong_way_is_an_unknown_type(tag: str) -> None:
    wrong_way: Literal["to_server", "to_client"] = "to_client" if direction_of(tag) == "to_server" else "to_server"
    err = refusal(encode(EXAMPLES[tag]), wrong_way)
    assert err.code is ErrorCode.UNKNOWN_TYPE
    assert f"'{tag}' is a message the" in err.message


# --- Versions ------------------------------------------------------------------------------------


def test_an_old_client_is_told_to_update_the_app() -> None:
    err = refusal(wire_of(EXAMPLES["hello"]) | {"v": 0, "protocol_version": 0})
    assert err.code is ErrorCode.VERSION_MISMATCH
    assert "Update the Commonweights app" in err.message
    assert f"protocol version {PROTOCOL_VERSION}" in err.message
    assert err.ref_type == "hello"


def test_a_client_newer_than_the_coordinator_is_told_which_version_it_speaks() -> None:
    err = refusal({"type": "hello", "v": PROTOCOL_VERSION + 1, "whatever": "new fields"})
    assert err.code is ErrorCode.VERSION_MISMATCH
    assert "newer than this coordinator supports" in err.message
    assert f"protocol version {PROTOCOL_VERSION}" in err.message


def test_a_client_hearing_a_newer_coordinator_is_told_to_update() -> None:
    err = refusal(wire_of(EXAMPLES["welcome"]) | {"v": PROTOCOL_VERSION + 1}, "to_client")
    assert err.code is ErrorCode.VERSION_MISMATCH
    assert err.message.startswith(f"The coordinator speaks protocol version {PROTOCOL_VERSION + 1}")
    assert "Update the Commonweights app" in err.message


def test_an_error_frame_is_read_whatever_its_version() -> None:
    frame = wire_of(EXAMPLES["error"]) | {"v": 99}
    assert decode(msgpack.packb(frame), direction="to_client") == EXAMPLES["error"]


def test_a_version_is_checked_before_the_type() -> None:
    assert refusal({"type": "from_the_future", "v": 99}).code is ErrorCode.VERSION_MISMATCH


def test_hello_protocol_version_must_match_the_frame() -> None:
    err = refusal(wire_of(EXAMPLES["hello"]) | {"protocol_version": PROTOCOL_VERSION + 1})
    assert err.code is ErrorCode.SCHEMA_VIOLATION
    assert err.message.startswith("hello.protocol_version:")


def test_check_version() -> None:
    check_version(PROTOCOL_VERSION)
    with pytest.raises(ProtocolError) as caught:
        check_version(PROTOCOL_VERSION + 5, peer="coordinator")
    assert caught.value.code is ErrorCode.VERSION_MISMATCH


# --- Fields --------------------------------------------------------------------------------------

TOP_FIELDS = [(tag, spec) for tag in sorted(EXAMPLES) for spec in fields_of(MESSAGE_TYPES[tag])]


def field_id(case: tuple[str, Any]) -> str:
    return f"{case[0]}.{case[1].name}"


def refused_field(tag: str, **changes: object) -> str:
    err = refusal(wire_of(EXAMPLES[tag]) | changes, direction_of(tag))
    assert err.code is ErrorCode.SCHEMA_VIOLATION
    assert err.ref_type == tag
    return err.message


@pytest.mark.parametrize("case", TOP_FIELDS, ids=field_id)
def test_every_field_refuses_a_value_of_the_wrong_kind(case: tuple[str, Any]) -> None:
    tag, spec = case
    current = wire_of(EXAMPLES[tag])[spec.name]
    wrong: object = {"x": 1} if isinstance(current, list) else [1]
    assert refused_field(tag, **{spec.name: wrong}).startswith(f"{tag}.{spec.name}: expected")


@pytest.mark.parametrize("case", TOP_FIELDS, ids=field_id)
def test_every_required_field_is_required_and_every_optional_one_defaults(case: tuple[str, Any]) -> None:
    tag, spec = case
    frame = wire_of(EXAMPLES[tag])
    del frame[spec.name]
    if spec.required:
        err = refusal(frame, direction_of(tag))
        assert (err.code, err.message) == (
            ErrorCode.SCHEMA_VIOLATION,
            f"{tag}.{spec.name}: missing required field",
        )
    else:
        message = decode(msgpack.packb(frame), direction=direction_of(tag))
        assert getattr(message, spec.name) == spec.default and spec.default in (None, (), b"")


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_every_message_refuses_an_unknown_field(tag: str) -> None:
    assert refused_field(tag, surprise=1).startswith(f"{tag}.surprise: unknown field")


def scalar_fields(kind: type[mi.Type]) -> list[tuple[str, Any]]:
    def admits(t: mi.Type) -> bool:
        return any(isinstance(arm, kind) for arm in arms_of(t))

    return [(tag, spec) for tag, spec in TOP_FIELDS if admits(spec.type)]


@pytest.mark.parametrize("case", scalar_fields(mi.IntType), ids=field_id)
def test_every_integer_field_refuses_bools_floats_and_negatives(case: tuple[str, Any]) -> None:
    tag, spec = case
    assert refused_field(tag, **{spec.name: True}) == f"{tag}.{spec.name}: expected an integer, got a bool"
    assert refused_field(tag, **{spec.name: 1.0}) == f"{tag}.{spec.name}: expected an integer, got a float"
    assert refused_field(tag, **{spec.name: -1}).startswith(f"{tag}.{spec.name}: must be >=")


@pytest.mark.parametrize("case", scalar_fields(mi.FloatType), ids=field_id)
def test_every_float_field_refuses_nan_and_infinities(case: tuple[str, Any]) -> None:
    tag, spec = case
    for bad in (math.nan, math.inf, -math.inf):
        assert refused_field(tag, **{spec.name: bad}).startswith(f"{tag}.{spec.name}: expected a finite float")


@pytest.mark.parametrize("case", scalar_fields(mi.FloatType), ids=field_id)
def test_every_float_field_accepts_an_integer(case: tuple[str, Any]) -> None:
    tag, spec = case
    rule = next(arm for arm in arms_of(spec.type) if isinstance(arm, mi.FloatType))
    value = int(rule.ge if rule.ge is not None else rule.gt + 1)  # type: ignore[operator]
    message = decode(msgpack.packb(wire_of(EXAMPLES[tag]) | {spec.name: value}), direction=direction_of(tag))
    assert getattr(message, spec.name) == value
    assert type(getattr(message, spec.name)) is float


SIZED = (mi.StrType, mi.BytesType, mi.VarTupleType, mi.DictType)


def sized_fields() -> list[tuple[str, Any]]:
    def sized(t: mi.Type) -> bool:
        arms = arms_of(t)
        return len(arms) == 1 and isinstance(arms[0], SIZED)

    return [(tag, spec) for tag, spec in TOP_FIELDS if sized(spec.type)]


@pytest.mark.parametrize("case", sized_fields(), ids=field_id)
def test_every_string_bytes_array_and_map_field_refuses_one_more_than_its_limit(
    case: tuple[str, Any],
) -> None:
    tag, spec = case
    (hint,) = arms_of(spec.type)
    assert isinstance(hint, SIZED) and hint.max_length is not None
    size = hint.max_length + 1
    oversized: object
    if isinstance(hint, mi.StrType):
        oversized = "a" * size
    elif isinstance(hint, mi.BytesType):
        oversized = bytes(size)
    elif isinstance(hint, mi.VarTupleType):
        oversized = [0] * size
    else:
        oversized = {f"k{i}": 0 for i in range(size)}
    assert refused_field(tag, **{spec.name: oversized}).startswith(f"{tag}.{spec.name}: must hold at most")


@pytest.mark.parametrize("case", [c for c in TOP_FIELDS if "sha256" in c[1].name], ids=field_id)
def test_every_sha256_is_64_lowercase_hex_characters(case: tuple[str, Any]) -> None:
    tag, spec = case
    for bad in ("A" * 64, "a" * 63, "g" * 64):
        assert "64 lowercase hex characters" in refused_field(tag, **{spec.name: bad})


def test_a_non_finite_loss_is_named_by_its_index() -> None:
    frame = wire_of(EXAMPLES["submit"])
    frame["metrics"]["losses"][3] = math.nan
    err = refusal(frame)
    assert err.message == "submit.metrics.losses[3]: expected a finite float, got nan"


def test_too_many_losses_are_refused() -> None:
    frame = wire_of(EXAMPLES["submit"])
    frame["metrics"]["losses"] = [1.0] * (MAX_INNER_STEPS + 1)
    assert refusal(frame).message.startswith("submit.metrics.losses: must hold at most 10000 items")


def test_a_single_precision_float_is_accepted() -> None:
    frame = msgpack.packb(wire_of(EXAMPLES["progress"]), use_single_float=True)
    progress = decode(frame, direction="to_server")
    assert isinstance(progress, Progress)
    assert progress.loss == pytest.approx(8.72, rel=1e-6)


def test_nested_shapes_name_their_path() -> None:
    frame = wire_of(EXAMPLES["work_unit"])
    frame["shard_shapes"]["blocks.0.attn.qkv.weight"] = [288, 0]
    err = refusal(frame, "to_client")
    assert err.message == "work_unit.shard_shapes['blocks.0.attn.qkv.weight'][1]: must be >= 1, got 0"


def test_a_device_list_names_the_bad_entry() -> None:
    frame = wire_of(EXAMPLES["hello"])
    frame["capabilities"]["devices"][1]["kind"] = "tpu"
    assert refusal(frame).message.startswith("hello.capabilities.devices[1].kind: expected one of 'cpu'")


# --- Rules across fields -----------------------------------------------------------------------


def test_constructing_an_inconsistent_message_fails_at_once() -> None:
    with pytest.raises(ValueError, match="step: 5 is more than steps_total 4"):
        Progress(unit_id="u-1", lease_id="l-1", step=5, steps_total=4, loss=None, tokens=0, phase="training")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda f: f["shard_shapes"].pop("blocks.0.attn.proj.weight"),
            "work_unit.shard_shapes: must name exactly",
        ),
        (lambda f: f["codec"].pop("name"), "work_unit.codec.name: the codec mapping needs a 'name'"),
        (lambda f: f["codec"].update(name=3), "work_unit.codec.name:"),
        (lambda f: f["recipe"].update(seq_len=512), "work_unit.recipe.seq_len: 512 exceeds"),
        (
            lambda f: f["model"]["config"].update(vocab_size=70_000),
            "work_unit.data_dtype: uint16 cannot hold",
        ),
        (lambda f: f["data"].update(size=1025), "work_unit.data.size: 1025 bytes is not data_tokens 513"),
        (
            lambda f: f.update(data_tokens=400) or f["data"].update(size=800),
            "work_unit.data_tokens: 400 is fewer",
        ),
        (lambda f: f["model"]["config"].update(n_head=5), "work_unit.model.config.n_head: d_model 96"),
        (
            lambda f: f["model"]["config"].update(n_head=32),
            "work_unit.model.config.n_head: the head dimension",
        ),
        (lambda f: f.update(shard=["a", "a"]), "work_unit.shard[1]: duplicate item 'a'"),
        (lambda f: f.update(data=None), "work_unit.data: must be a blob unless the unit has private"),
        (lambda f: f.update(private=PRIVATE_WIRE), "work_unit.private: is only for train units, whose data"),
        (
            lambda f: f.update(private=PRIVATE_WIRE, data=None, data_tokens=0, kind="evaluate"),
            "work_unit.private: is only for train units",
        ),
        (
            lambda f: (
                f.update(private=PRIVATE_WIRE, data=None, data_tokens=0) or f["recipe"].update(shared_moments=True)
            ),
            "work_unit.private: a unit on the owner's data can't share moments",
        ),
        (
            lambda f: f.update(
                private=PRIVATE_WIRE | {"tokenizer": PRIVATE_WIRE["tokenizer"] | {"size": (64 << 20) + 1}},
                data=None,
                data_tokens=0,
            ),
            "work_unit.private.tokenizer.size: a tokenizer may hold at most 67108864 bytes",
        ),
        (
            lambda f: f.update(private=PRIVATE_WIRE | {"file_kinds": ["txt"]}, data=None, data_tokens=0),
            "work_unit.private.file_kinds[0]:",
        ),
        (
            lambda f: f.update(private=PRIVATE_WIRE | {"delta": 1.0}, data=None, data_tokens=0),
            "work_unit.private.delta:",
        ),
    ],
)
def test_a_work_unit_must_be_self_consistent(mutate: Callable[[dict[str, Any]], object], expected: str) -> None:
    frame = wire_of(WORK_UNIT)
    mutate(frame)
    assert refusal(frame, "to_client").message.startswith(expected)


@pytest.mark.parametrize(
    ("status", "code", "problem"),
    [
        ("accepted", "norm_outlier", "must be null when status is accepted"),
        ("rejected", None, "must be an error code when status is rejected"),
        ("duplicate", None, "must be duplicate_submission when status is duplicate"),
    ],
)
def test_a_result_code_matches_its_status(status: str, code: str | None, problem: str) -> None:
    frame = wire_of(EXAMPLES["result"]) | {"status": status, "code": code}
    assert refusal(frame, "to_client").message == f"result.code: {problem}"


def test_a_blob_chunk_stays_inside_its_blob() -> None:
    frame = wire_of(EXAMPLES["blob_chunk"])
    assert refusal(frame | {"offset": 1}, "to_client").message.startswith("blob_chunk.data: runs past")
    message = refusal(frame | {"offset": 1000, "data": b""}, "to_client").message
    assert message == "blob_chunk.data: is empty although the blob continues past offset"
    end = decode(msgpack.packb(frame | {"offset": 1026, "data": b""}), direction="to_client")
    assert isinstance(end, BlobChunk) and end.is_last


def test_a_blob_request_asks_for_at_most_one_chunk() -> None:
    frame = wire_of(EXAMPLES["blob_request"]) | {"length": MAX_BLOB_CHUNK_BYTES + 1}
    assert refusal(frame).message.startswith("blob_request.length: must be <=")
    assert refusal(frame | {"length": 0}).message.startswith("blob_request.length: must be >= 1")


def test_a_shard_has_a_bounded_number_of_parameters() -> None:
    frame = wire_of(WORK_UNIT) | {"shard": [f"p{i}" for i in range(MAX_SHARD_PARAMS + 1)]}
    assert refusal(frame, "to_client").message.startswith("work_unit.shard: must hold at most 4096 items")


# --- Encoding ------------------------------------------------------------------------------------


def test_encode_writes_type_and_version_first() -> None:
    frame = msgpack.unpackb(encode(EXAMPLES["goodbye"]))
    assert list(frame) == ["type", "v", "reason"]
    assert frame["v"] == PROTOCOL_VERSION


def test_encode_is_deterministic() -> None:
    assert encode(EXAMPLES["work_unit"]) == encode(msgspec.structs.replace(WORK_UNIT))


def test_encode_refuses_a_message_the_peer_would_refuse() -> None:
    bad = Goodbye(reason=7)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError) as caught:
        encode(bad)
    assert (caught.value.code, caught.value.message) == (
        ErrorCode.SCHEMA_VIOLATION,
        "goodbye.reason: expected a string, got an integer",
    )


def test_encode_refuses_a_frame_over_max_bytes() -> None:
    with pytest.raises(ProtocolError) as caught:
        encode(EXAMPLES["submit"], max_bytes=64)
    assert caught.value.code is ErrorCode.FRAME_TOO_LARGE


def test_encode_refuses_a_non_message() -> None:
    with pytest.raises(TypeError):
        encode(METRICS)  # type: ignore[arg-type]


def test_an_error_frame_is_built_from_a_protocol_error() -> None:
    error = ProtocolError(ErrorCode.SCHEMA_VIOLATION, "x" * 5000, ref_type="progress")
    frame = ErrorMessage.from_error(error, fatal=False, ref_id="u-42")
    assert (frame.code, frame.ref_type, frame.ref_id, len(frame.message)) == (
        ErrorCode.SCHEMA_VIOLATION,
        "progress",
        "u-42",
        1024,
    )
    assert decode(encode(frame), direction="to_client") == frame
    foreign = ProtocolError(ErrorCode.UNKNOWN_TYPE, "no", ref_type="welcome")
    assert ErrorMessage.from_error(foreign, fatal=True).ref_type is None


def test_decode_errors_name_the_frame_type() -> None:
    frame = wire_of(EXAMPLES["progress"]) | {"step": -1}
    assert refusal(frame).ref_type == "progress"


def test_a_protocol_error_survives_pickling() -> None:
    import pickle

    error = ProtocolError(ErrorCode.BANNED, "Banned.", ref_type="hello")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message, copy.ref_type, str(copy)) == (
        error.code,
        "Banned.",
        "hello",
        "banned: Banned.",
    )


# --- Error codes and close codes ---------------------------------------------------------------


def test_every_error_code_has_a_sentence() -> None:
    for code in ErrorCode:
        assert code.description.endswith(".") and len(code.description) < 200
        assert code.value == code.name.lower()


def test_update_rejections_are_error_codes_of_validation() -> None:
    assert ErrorCode.NORM_OUTLIER.rejects_update
    assert not ErrorCode.MALFORMED_FRAME.rejects_update
    required = {"bad_encoding", "shape_mismatch", "non_finite", "norm_outlier", "direction_outlier"}
    required |= {"implausible_loss", "replication_mismatch", "stale_update", "campaign_closed"}
    assert required <= {code.value for code in UPDATE_REJECTIONS}


def test_the_codes_the_brief_requires_exist() -> None:
    names = [
        *("malformed_frame", "frame_too_large", "unknown_type", "schema_violation", "version_mismatch"),
        *("unauthorized", "banned", "unknown_unit", "lease_expired", "not_your_lease"),
        *("duplicate_submission", "blob_not_found", "bad_range", "rate_limited", "server_shutting_down"),
        "internal_error",
    ]
    assert set(names) <= {code.value for code in ErrorCode}


def test_fatal_errors_map_to_close_codes() -> None:
    assert close_code_for(ErrorCode.SERVER_SHUTTING_DOWN) is CloseCode.GOING_AWAY
    assert close_code_for(ErrorCode.FRAME_TOO_LARGE) is CloseCode.MESSAGE_TOO_BIG
    assert close_code_for(ErrorCode.VERSION_MISMATCH) == 4426
    assert close_code_for(ErrorCode.MALFORMED_FRAME) is CloseCode.POLICY_VIOLATION
    assert all(1000 <= code < 1016 or 4000 <= code < 5000 for code in CloseCode)


# --- Fuzzing: only ProtocolError, whatever arrives ---------------------------------------------


def decode_or_refuse(data: bytes, direction: Literal["to_server", "to_client"]) -> None:
    with contextlib.suppress(ProtocolError):
        decode(data, direction=direction)


@FUZZ
@given(data=st.binary(max_size=300), direction=st.sampled_from(["to_server", "to_client"]))
def test_random_bytes_only_ever_raise_protocol_error(data: bytes, direction: Any) -> None:
    decode_or_refuse(data, direction)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_after_a_map_header_only_ever_raise_protocol_error(data: bytes) -> None:
    decode_or_refuse(b"\x83" + data, "to_server")


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(value=VALUES, direction=st.sampled_from(["to_server", "to_client"]))
def test_random_msgpack_values_only_ever_raise_protocol_error(value: object, direction: Any) -> None:
    decode_or_refuse(msgpack.packb(value, use_bin_type=True), direction)


@FUZZ
@given(data=st.data())
def test_message_shaped_maps_with_random_fields_only_ever_raise_protocol_error(data: st.DataObject) -> None:
    tag = data.draw(st.sampled_from(sorted(MESSAGE_TYPES)))
    frame = wire_of(EXAMPLES[tag])
    for name in data.draw(st.lists(st.sampled_from(sorted(frame)), max_size=3)):
        frame[name] = data.draw(VALUES)
    decode_or_refuse(msgpack.packb(frame, use_bin_type=True), direction_of(tag))


@FUZZ
@given(data=st.data())
def test_mutated_frames_only_ever_raise_protocol_error(data: st.DataObject) -> None:
    tag = data.draw(st.sampled_from(sorted(MESSAGE_TYPES)))
    frame = bytearray(encode(EXAMPLES[tag]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(frame) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip":
            frame[position] = data.draw(st.integers(0, 255))
        elif action == "insert":
            frame.insert(position, data.draw(st.integers(0, 255)))
        elif len(frame) > 1:
            del frame[position]
    decode_or_refuse(bytes(frame), direction_of(tag))


# --- The public surface ------------------------------------------------------------------------


def test_the_package_exports_exactly_what_it_lists() -> None:
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
    assert {cls.__name__ for cls in MESSAGE_TYPES.values()} <= set(protocol.__all__)
    assert {"encode", "decode", "ProtocolError", "ErrorCode", "PROTOCOL_VERSION"} <= set(protocol.__all__)


# --- docs/protocol.md --------------------------------------------------------------------------

BLOCK = re.compile(
    r"(?P<open><!-- BEGIN GENERATED (?P<name>[\w:.-]+) -->\n)(?P<body>.*?)"
    r"(?P<close><!-- END GENERATED (?P=name) -->)",
    re.S,
)


def schema_classes() -> list[type]:
    """Every struct reachable from the messages, messages first."""
    seen: list[type] = list(MESSAGE_TYPES.values())

    def visit(t: mi.Type) -> None:
        t, _ = unwrap(t)
        if isinstance(t, mi.StructType) and t.cls not in seen:
            seen.append(t.cls)
        inner = {
            mi.UnionType: lambda: t.types,  # type: ignore[attr-defined]
            mi.VarTupleType: lambda: (t.item_type,),  # type: ignore[attr-defined]
            mi.DictType: lambda: (t.key_type, t.value_type),  # type: ignore[attr-defined]
        }.get(type(t), tuple)
        for item in inner():
            visit(item)

    for cls in seen:
        for spec in fields_of(cls):
            visit(spec.type)
    return seen


def declared_literal(hint: Any) -> tuple[Any, ...]:
    """The values of the Literal in annotation `hint`, in declared order (msgspec.inspect sorts them)."""
    if get_origin(hint) is Literal:
        return get_args(hint)
    return next((found for arg in get_args(hint) if (found := declared_literal(arg))), ())


def render_type(t: mi.Type, literal: tuple[Any, ...] = ()) -> str:
    t, _ = unwrap(t)
    if isinstance(t, mi.NoneType):
        return "nil"
    if isinstance(t, mi.UnionType):
        arms = [render_type(arm, literal) for arm in t.types if not isinstance(arm, mi.NoneType)]
        return " or ".join(arms + (["nil"] if any(isinstance(arm, mi.NoneType) for arm in t.types) else []))
    if isinstance(t, mi.LiteralType):
        return " or ".join(f'`"{value}"`' for value in sorted(t.values, key=literal.index))
    simple = {mi.BytesType: "bin", mi.BoolType: "bool", mi.IntType: "int", mi.FloatType: "float", mi.StrType: "str"}
    if type(t) in simple:
        return simple[type(t)]
    if isinstance(t, mi.EnumType):
        return "[ErrorCode](#error-codes)"
    if isinstance(t, mi.VarTupleType):
        return f"array of {render_type(t.item_type, literal)}"
    if isinstance(t, mi.DictType):
        return f"map of str to {render_type(t.value_type)}"
    assert isinstance(t, mi.StructType)
    return f"[{t.cls.__name__}](#{t.cls.__name__.lower()})"


def render_number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def render_rule(t: mi.Type) -> str:
    t, extra = unwrap(t)
    arms = []
    for arm in t.types if isinstance(t, mi.UnionType) else (t,):
        arm, arm_extra = unwrap(arm)
        if not isinstance(arm, mi.NoneType):
            arms.append(arm)
            extra |= arm_extra
    base = arms[0] if len(arms) == 1 else None
    parts = []
    for bound, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
        for value in dict.fromkeys(getattr(arm, bound) for arm in arms if hasattr(arm, bound)):
            if value is not None:
                parts.append(f"{symbol} {render_number(value)}")
    for sized in (arm for arm in arms if isinstance(arm, SIZED) and arm.max_length is not None):
        if base is None or isinstance(base, mi.StrType):
            unit = "chars"
        elif isinstance(base, mi.BytesType):
            unit = "bytes"
        else:
            unit = "entries" if isinstance(base, mi.DictType) else "items"
        span = f"{sized.min_length}–{sized.max_length}" if sized.min_length else f"≤ {sized.max_length}"
        parts.append(f"{span} {unit}")
    if "format" in extra:
        parts.append(f"{extra['format'].description}: `{extra['format'].regex}`")
    if extra.get("printable"):
        parts.append("printable")
    if extra.get("unique"):
        parts.append("unique")
    inner = []
    if isinstance(base, mi.VarTupleType):
        inner.append(("each", base.item_type))
    if isinstance(base, mi.DictType):
        inner += [("keys", base.key_type), ("values", base.value_type)]
    for label, item in inner:
        if rule := render_rule(item):
            parts.append(f"{label}: {rule}")
    return "; ".join(parts)


def render_fields(cls: type) -> str:
    rows = ["| Field | Type | Bounds | Meaning |", "|---|---|---|---|"]
    hints = {field.name: field.type for field in msgspec.structs.fields(cls)}
    for spec in fields_of(cls):
        assert isinstance(spec.type, mi.Metadata) and spec.type.extra_json_schema is not None
        shown = "nil" if spec.default is None else "`[]`" if spec.default == () else f"`{spec.default}`"
        optional = "" if spec.required else f" (optional, default {shown})"
        cells = [f"`{spec.name}`", render_type(spec.type, declared_literal(hints[spec.name]))]
        cells += [render_rule(spec.type) or "—", spec.type.extra_json_schema["description"] + optional]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def render_error_codes() -> str:
    rows = ["| Code | Kind | Meaning |", "|---|---|---|"]
    for code in ErrorCode:
        kind = "update verdict" if code.rejects_update else "frame or session"
        rows.append(f"| `{code.value}` | {kind} | {code.description} |")
    return "\n".join(rows) + "\n"


def render_limits() -> str:
    tree = ast.parse(Path(limits_module.__file__).read_text())
    rows = ["| Name | Value | Meaning |", "|---|---|---|"]
    body = tree.body
    for node, following in itertools.pairwise(body):
        target = node.target if isinstance(node, ast.AnnAssign) else None
        docstring = following.value if isinstance(following, ast.Expr) else None
        doc = docstring.value if isinstance(docstring, ast.Constant) else None
        if isinstance(target, ast.Name) and target.id.isupper() and isinstance(doc, str):
            value = getattr(limits_module, target.id)
            shown = render_number(value)
            for unit, size in (
                ("PiB", 1 << 50),
                ("TiB", 1 << 40),
                ("GiB", 1 << 30),
                ("MiB", 1 << 20),
                ("KiB", 1 << 10),
            ):
                if "BYTES" in target.id and value >= size and value % size == 0:
                    shown += f" ({value // size} {unit})"
                    break
            rows.append(f"| `{target.id}` | {shown} | {doc} |")
    return "\n".join(rows) + "\n"


def render_close_codes() -> str:
    rows = ["| Close code | Name | Sent after a fatal error with code |", "|---|---|---|"]
    for close in CloseCode:
        codes = [f"`{code.value}`" for code in ErrorCode if close_code_for(code) is close]
        if close is CloseCode.POLICY_VIOLATION:
            codes = ["any other"]
        rows.append(f"| {close.value} | {close.name} | {', '.join(codes) or '—'} |")
    return "\n".join(rows) + "\n"


def render_notation(message: Message) -> str:
    def show(value: object) -> object:
        if isinstance(value, bytes):
            return f"<bin {len(value)} bytes>"
        if isinstance(value, dict):
            return {key: show(item) for key, item in value.items()}
        return [show(item) for item in value] if isinstance(value, list) else value

    return f"```json\n{json.dumps(show(wire_of(message)), indent=2)}\n```\n"


def render_hex(message: Message) -> str:
    frame = encode(message)
    lines = [frame[i : i + 16].hex(" ") for i in range(0, len(frame), 16)]
    return "```\n" + "\n".join(lines) + "\n```\n"


def generated_blocks() -> dict[str, str]:
    blocks = {f"fields:{cls.__name__}": render_fields(cls) for cls in schema_classes()}
    blocks["error-codes"] = render_error_codes()
    blocks["limits"] = render_limits()
    blocks["close-codes"] = render_close_codes()
    blocks["example:progress-hex"] = render_hex(EXAMPLES["progress"])
    blocks["example:progress"] = render_notation(EXAMPLES["progress"])
    blocks["example:submit"] = render_notation(EXAMPLES["submit"])
    return blocks


def test_docs_generated_sections_match_the_code() -> None:
    text = DOCS.read_text(encoding="utf-8")
    expected = generated_blocks()
    if os.environ.get("COMMONWEIGHTS_UPDATE_DOCS"):
        text = BLOCK.sub(lambda m: m["open"] + expected.get(m["name"], m["body"]) + m["close"], text)
        DOCS.write_text(text, encoding="utf-8")
    found = {m["name"]: m["body"] for m in BLOCK.finditer(text)}
    missing = sorted(set(expected) - set(found))
    assert not missing, f"docs/protocol.md lacks the generated sections {missing}; add their markers"
    stale = sorted(name for name in expected if found[name] != expected[name])
    assert not stale, (
        f"docs/protocol.md is out of date in {stale}; run "
        "COMMONWEIGHTS_UPDATE_DOCS=1 .venv/bin/python -m pytest tests/protocol/test_messages.py -k docs"
    )


def test_docs_list_every_code_limit_message_and_close_code() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for code in ErrorCode:
        assert f"`{code.value}`" in text, code
    for name in dir(limits_module):
        if name.startswith("MAX_") or name.startswith("MIN_"):
            assert f"`{name}`" in text, name
    for tag in MESSAGE_TYPES:
        assert f"`{tag}`" in text, tag
    for close in CloseCode:
        assert str(close.value) in text, close


def test_a_submits_update_and_moments_together_stay_within_max_update_bytes() -> None:
    from protocol.limits import MAX_MOMENTS_BYTES, MAX_UPDATE_BYTES

    base = wire_of(EXAMPLES["submit"])
    big = b"\0" * (MAX_UPDATE_BYTES - 10)
    fits = base | {"update": big, "moments": b"\0" * 10}
    assert isinstance(decode(msgpack.packb(fits, use_bin_type=True), direction="to_server"), Submit)
    err = refusal(base | {"update": big, "moments": b"\0" * 11})
    assert err.code is ErrorCode.SCHEMA_VIOLATION and "moments" in err.message and "MAX_UPDATE_BYTES" in err.message
    err = refusal(base | {"moments": b"\0" * (MAX_MOMENTS_BYTES + 1)})
    assert err.code is ErrorCode.SCHEMA_VIOLATION and "moments" in err.message
