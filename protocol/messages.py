"""The control-channel messages, one frozen dataclass per frame type, and their wire encoding.

A frame is one binary WebSocket message holding one MessagePack map: `type` (the tag below), `v`
(the protocol version) and the message's fields. `decode` treats its input as hostile: it checks
the size before unpacking, walks the MessagePack structure before building it, and validates every
field against the dataclasses here, raising only `ProtocolError`.

    >>> frame = encode(RequestWork(preferred_campaign="tinystories"))
    >>> frame[:19]
    b'\\x83\\xa4type\\xacrequest_work'
    >>> decode(frame, direction="to_server")
    RequestWork(preferred_campaign='tinystories')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal, overload

import msgpack

from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import (
    FRAME_OVERHEAD_BYTES,
    MAX_BATCH,
    MAX_BLOB_BYTES,
    MAX_BLOB_CHUNK_BYTES,
    MAX_CODEC_PARAMS,
    MAX_CODECS,
    MAX_CREDIT,
    MAX_DEVICES,
    MAX_DURATION_S,
    MAX_FRAME_BYTES,
    MAX_FRAME_DEPTH,
    MAX_FRAME_VALUES,
    MAX_GRAD_CLIP,
    MAX_HEARTBEAT_INTERVAL_S,
    MAX_ID_LEN,
    MAX_INNER_STEPS,
    MAX_KEY_LEN,
    MAX_LAYERS,
    MAX_LOSS,
    MAX_LR,
    MAX_MEMORY_BYTES,
    MAX_MODEL_WIDTH,
    MAX_NAME_LEN,
    MAX_PARAM_NAME_LEN,
    MAX_RETRY_AFTER_S,
    MAX_ROPE_THETA,
    MAX_SAFE_INTEGER,
    MAX_SEED,
    MAX_SEQ_LEN,
    MAX_SHARD_PARAMS,
    MAX_TENSOR_DIM,
    MAX_TENSOR_RANK,
    MAX_TEXT_LEN,
    MAX_THREADS,
    MAX_TIMESTAMP_S,
    MAX_TOKEN_LEN,
    MAX_UPDATE_BYTES,
    MAX_URL_LEN,
    MAX_VERSION_LEN,
    MAX_VOCAB_SIZE,
    MIN_HEARTBEAT_INTERVAL_S,
)
from protocol.schema import FieldError, Rule, TextFormat, fields_of, from_wire, spec, to_wire
from protocol.version import PROTOCOL_VERSION, check_version, is_supported

Direction = Literal["to_server", "to_client"]
FrameData = bytes | bytearray | memoryview

# --- Formats ------------------------------------------------------------------------------------

SHA256: Final = TextFormat(r"[0-9a-f]{64}", "64 lowercase hex characters (a SHA-256 digest)")
IDENTIFIER: Final = TextFormat(
    r"[A-Za-z0-9][A-Za-z0-9._:-]*", "an id of ASCII letters, digits and . _ : - (not starting with a symbol)"
)
TOKEN: Final = TextFormat(r"[A-Za-z0-9._~+/=-]+", "a token of ASCII letters, digits and . _ ~ + / = -")
KEY: Final = TextFormat(r"[a-z0-9][a-z0-9_.-]*", "a lowercase key of a-z, 0-9 and _ . - such as int8")
VERSION: Final = TextFormat(r"[0-9A-Za-z][0-9A-Za-z.+_-]*", "a version string such as 1.4.2 or 2.0.0rc1+local")
PARAM_NAME: Final = TextFormat(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", "a parameter name such as blocks.0.attn.qkv.weight"
)
URL: Final = TextFormat(r"https?://[!-~]+", "an http:// or https:// URL of printable ASCII")

DeviceKind = Literal["cpu", "cuda", "mps"]
TokenDtype = Literal["uint16", "uint32"]
Phase = Literal["downloading", "training", "paused"]
AbandonReason = Literal["user_request", "out_of_memory", "diverged", "download_failed", "deadline", "error"]
ResultStatus = Literal["accepted", "rejected", "duplicate"]
ToServerType = Literal["hello", "request_work", "blob_request", "progress", "submit", "abandon", "goodbye"]

_DTYPE_BYTES: Final = {"uint16": 2, "uint32": 4}


def _id(doc: str) -> dict[str, object]:
    return spec(doc, min_len=1, max_len=MAX_ID_LEN, pattern=IDENTIFIER)


def _sha256(doc: str) -> dict[str, object]:
    return spec(doc, max_len=64, pattern=SHA256)


def _name(doc: str) -> dict[str, object]:
    return spec(doc, min_len=1, max_len=MAX_NAME_LEN, printable=True)


def _text(doc: str) -> dict[str, object]:
    return spec(doc, max_len=MAX_TEXT_LEN)


def _deadline(doc: str) -> dict[str, object]:
    return spec(doc, ge=0.0, le=MAX_TIMESTAMP_S)


def _count(doc: str, high: int = MAX_SAFE_INTEGER, low: int = 0) -> dict[str, object]:
    return spec(doc, ge=low, le=high)


# --- Shared structures --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    """One compute device a volunteer offers."""

    kind: DeviceKind = field(metadata=spec("Device family."))
    name: str = field(metadata=_name("Human-readable model, e.g. NVIDIA GeForce RTX 3060."))
    memory_bytes: int = field(metadata=_count("Memory of the device (system RAM for cpu) in bytes.", MAX_MEMORY_BYTES))


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a volunteer's machine can do and what its owner allows."""

    devices: tuple[Device, ...] = field(
        metadata=spec("Devices, preferred first; a cpu entry is always present.", min_len=1, max_len=MAX_DEVICES)
    )
    memory_bytes: int = field(metadata=_count("System memory the owner lets training use, in bytes.", MAX_MEMORY_BYTES))
    threads: int = field(metadata=_count("CPU threads the owner lets training use.", MAX_THREADS, 1))
    codecs: tuple[str, ...] = field(
        metadata=spec(
            "Update codecs the client can encode, by name (see protocol.codecs).",
            min_len=1,
            max_len=MAX_CODECS,
            unique=True,
            item=Rule(min_len=1, max_len=MAX_KEY_LEN, pattern=KEY),
        )
    )
    platform: str = field(metadata=_name("Operating system and architecture, e.g. linux-x86_64."))


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A content-addressed blob the volunteer fetches with blob_request (or finds in its cache)."""

    sha256: str = field(metadata=_sha256("SHA-256 of the blob's bytes; verify it before use."))
    size: int = field(metadata=_count("Size of the blob in bytes.", MAX_BLOB_BYTES))


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """GPT hyper-parameters (the fields of training.model.ModelConfig)."""

    vocab_size: int = field(metadata=_count("Vocabulary size.", MAX_VOCAB_SIZE, 1))
    d_model: int = field(metadata=_count("Residual stream width.", MAX_MODEL_WIDTH, 1))
    n_layer: int = field(metadata=_count("Transformer blocks.", MAX_LAYERS, 1))
    n_head: int = field(metadata=_count("Attention heads; d_model / n_head must be even.", MAX_LAYERS, 1))
    d_ff: int = field(metadata=_count("Feed-forward hidden width.", MAX_MODEL_WIDTH, 1))
    max_seq_len: int = field(metadata=_count("Longest context the model supports.", MAX_SEQ_LEN, 1))
    rope_theta: float = field(metadata=spec("RoPE base.", gt=0.0, le=MAX_ROPE_THETA))
    norm_eps: float = field(metadata=spec("RMSNorm epsilon.", gt=0.0, le=1.0))

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise FieldError("n_head", f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise FieldError("n_head", "the head dimension d_model / n_head must be even for RoPE")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Which model the unit trains."""

    preset: str = field(
        metadata=spec("Preset name the config derives from, e.g. tiny.", min_len=1, max_len=MAX_KEY_LEN, pattern=KEY)
    )
    config: ModelConfig = field(metadata=spec("The exact hyper-parameters; they win over the preset."))


@dataclass(frozen=True, slots=True)
class InnerRecipe:
    """The inner loop: AdamW with linear warmup and cosine decay (training.inner.InnerConfig)."""

    steps: int = field(metadata=_count("Inner optimizer steps (H) in this unit.", MAX_INNER_STEPS, 1))
    batch_size: int = field(metadata=_count("Sequences per micro-batch.", MAX_BATCH, 1))
    seq_len: int = field(metadata=_count("Tokens per sequence; at most model.config.max_seq_len.", MAX_SEQ_LEN, 1))
    grad_accum: int = field(metadata=_count("Micro-batches accumulated per step.", MAX_BATCH, 1))
    lr: float = field(metadata=spec("Peak learning rate.", gt=0.0, le=MAX_LR))
    min_lr_ratio: float = field(metadata=spec("Floor of the cosine decay, as a fraction of lr.", ge=0.0, le=1.0))
    warmup_steps: int = field(metadata=_count("Linear warmup length in global steps."))
    total_steps: int = field(metadata=_count("Cosine schedule length in global steps; 0: constant after warmup."))
    global_step: int = field(metadata=_count("Global step at the unit's first inner step (for the schedule)."))
    weight_decay: float = field(metadata=spec("AdamW decoupled weight decay.", ge=0.0, le=MAX_LR))
    grad_clip: float = field(metadata=spec("Gradient-norm clip; 0 disables clipping.", ge=0.0, le=MAX_GRAD_CLIP))
    beta1: float = field(metadata=spec("AdamW beta1.", ge=0.0, lt=1.0))
    beta2: float = field(metadata=spec("AdamW beta2.", ge=0.0, lt=1.0))
    eps: float = field(metadata=spec("AdamW epsilon.", gt=0.0, le=1.0))

    @property
    def tokens_needed(self) -> int:
        """Tokens the unit reads: every sequence of every micro-batch, plus one final target."""
        return self.steps * self.grad_accum * self.batch_size * self.seq_len + 1


@dataclass(frozen=True, slots=True)
class TrainMetrics:
    """What the volunteer measured while training the unit."""

    losses: tuple[float, ...] = field(
        metadata=spec(
            "Training loss of each inner step, in order.",
            min_len=1,
            max_len=MAX_INNER_STEPS,
            item=Rule(ge=0.0, le=MAX_LOSS),
        )
    )
    tokens: int = field(metadata=_count("Tokens trained on."))
    seconds: float = field(metadata=spec("Wall-clock training time.", ge=0.0, le=MAX_DURATION_S))
    device: DeviceKind = field(metadata=spec("Device family the unit trained on."))
    device_name: str = field(metadata=_name("Device model, as in hello.capabilities.devices."))
    peak_memory_bytes: int | None = field(
        default=None,
        metadata=_count("Peak device memory used, when the device reports it.", MAX_MEMORY_BYTES),
    )


# --- Volunteer -> coordinator -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame of every connection: who the volunteer is and what it can do. Reply: welcome."""

    TYPE: ClassVar[str] = "hello"

    protocol_version: int = field(metadata=_count("The client's protocol version; equals the frame's v.", low=1))
    client_version: str = field(
        metadata=spec("App release, e.g. 0.3.1.", min_len=1, max_len=MAX_VERSION_LEN, pattern=VERSION)
    )
    token: str | None = field(
        metadata=spec(
            "Token from an earlier welcome; null on first contact (the coordinator registers the volunteer).",
            min_len=1,
            max_len=MAX_TOKEN_LEN,
            pattern=TOKEN,
        )
    )
    name: str = field(metadata=_name("Display name for dashboards and leaderboards."))
    capabilities: Capabilities = field(metadata=spec("Devices, limits and codecs."))


@dataclass(frozen=True, slots=True)
class RequestWork:
    """Ask for a unit. Reply: work_unit or no_work."""

    TYPE: ClassVar[str] = "request_work"

    preferred_campaign: str | None = field(
        default=None,
        metadata=spec(
            "Campaign the volunteer would rather work on; a hint, not a demand.",
            min_len=1,
            max_len=MAX_ID_LEN,
            pattern=IDENTIFIER,
        ),
    )


@dataclass(frozen=True, slots=True)
class BlobRequest:
    """Ask for one chunk of a blob; resume a download by asking from the first missing byte."""

    TYPE: ClassVar[str] = "blob_request"

    sha256: str = field(metadata=_sha256("The blob, as named by a BlobRef."))
    offset: int = field(metadata=_count("First byte wanted.", MAX_BLOB_BYTES))
    length: int = field(metadata=_count("Bytes wanted; the reply may hold fewer.", MAX_BLOB_CHUNK_BYTES, 1))


@dataclass(frozen=True, slots=True)
class Progress:
    """Heartbeat while a unit is leased; extends the lease. Reply: lease_extended (or error)."""

    TYPE: ClassVar[str] = "progress"

    unit_id: str = field(metadata=_id("The unit, as in work_unit."))
    lease_id: str = field(metadata=_id("The lease, as in work_unit."))
    step: int = field(metadata=_count("Inner steps completed.", MAX_INNER_STEPS))
    steps_total: int = field(metadata=_count("Inner steps in the unit (recipe.steps).", MAX_INNER_STEPS, 1))
    loss: float | None = field(metadata=spec("Loss of the latest step; null before the first.", ge=0.0, le=MAX_LOSS))
    tokens: int = field(metadata=_count("Tokens trained so far in this unit."))
    phase: Phase = field(metadata=spec("What the volunteer is doing: downloading blobs, training, or paused."))

    def __post_init__(self) -> None:
        if self.step > self.steps_total:
            raise FieldError("step", f"{self.step} is more than steps_total {self.steps_total}")


@dataclass(frozen=True, slots=True)
class Submit:
    """The finished unit's update. Reply: result. Resending the same update is harmless."""

    TYPE: ClassVar[str] = "submit"

    unit_id: str = field(metadata=_id("The unit, as in work_unit."))
    lease_id: str = field(metadata=_id("The lease, as in work_unit."))
    update: bytes = field(
        metadata=spec(
            "The pseudo-gradient (start minus end weights) of the shard, encoded with the unit's codec.",
            min_len=1,
            max_len=MAX_UPDATE_BYTES,
        )
    )
    update_sha256: str = field(metadata=_sha256("SHA-256 of update; keys idempotent resubmission."))
    metrics: TrainMetrics = field(metadata=spec("Losses, tokens, time and device."))


@dataclass(frozen=True, slots=True)
class Abandon:
    """Give a leased unit back early so it is reissued now rather than when the lease expires."""

    TYPE: ClassVar[str] = "abandon"

    unit_id: str = field(metadata=_id("The unit, as in work_unit."))
    lease_id: str = field(metadata=_id("The lease, as in work_unit."))
    reason: AbandonReason = field(metadata=spec("Why, for the coordinator's statistics."))
    detail: str = field(metadata=_text("Free text for logs, e.g. the exception message."))


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The volunteer is closing the connection on purpose; leases stay valid until they expire."""

    TYPE: ClassVar[str] = "goodbye"

    reason: str = field(metadata=_text("Free text, e.g. user quit, idle period ended."))


# --- Coordinator -> volunteer -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """Reply to hello: the volunteer is in. Keep the token (if new) for every later hello."""

    TYPE: ClassVar[str] = "welcome"

    volunteer_id: str = field(metadata=_id("The volunteer's public id (shown on dashboards)."))
    token: str | None = field(
        metadata=spec(
            "New secret token when hello registered the volunteer; null otherwise. Store it safely.",
            min_len=1,
            max_len=MAX_TOKEN_LEN,
            pattern=TOKEN,
        )
    )
    server_version: str = field(
        metadata=spec("Coordinator release.", min_len=1, max_len=MAX_VERSION_LEN, pattern=VERSION)
    )
    heartbeat_interval_s: float = field(
        metadata=spec(
            "Send progress at least this often while a unit is leased.",
            ge=MIN_HEARTBEAT_INTERVAL_S,
            le=MAX_HEARTBEAT_INTERVAL_S,
        )
    )
    max_frame_bytes: int = field(
        metadata=_count("Largest frame the coordinator accepts.", MAX_FRAME_BYTES, FRAME_OVERHEAD_BYTES)
    )
    dashboard_url: str | None = field(
        metadata=spec("Page showing this volunteer's statistics.", max_len=MAX_URL_LEN, pattern=URL)
    )
    credit_total: float = field(metadata=spec("Credit earned so far, all campaigns.", ge=0.0, le=MAX_CREDIT))


@dataclass(frozen=True, slots=True)
class WorkUnit:
    """A leased unit: train `shard` of the model for `recipe.steps` steps on `data`, then submit."""

    TYPE: ClassVar[str] = "work_unit"

    unit_id: str = field(metadata=_id("The unit."))
    lease_id: str = field(metadata=_id("This lease of the unit; a reissued unit gets a new one."))
    lease_deadline: float = field(metadata=_deadline("Unix time the lease ends unless progress extends it."))
    campaign_id: str = field(metadata=_id("The campaign."))
    campaign_name: str = field(metadata=_name("The campaign's display name."))
    model_version: int = field(metadata=_count("Version of the model the checkpoint holds."))
    model: ModelSpec = field(metadata=spec("Architecture."))
    checkpoint: BlobRef = field(metadata=spec("The weights to start from."))
    checkpoint_format: Literal["safetensors"] = field(metadata=spec("Serialization of the checkpoint blob."))
    data: BlobRef = field(metadata=spec("The data slice: raw little-endian token ids, data_tokens of them."))
    data_dtype: TokenDtype = field(metadata=spec("Element type of the data slice."))
    data_tokens: int = field(metadata=_count("Token ids in the slice; at least recipe.tokens_needed."))
    shard: tuple[str, ...] = field(
        metadata=spec(
            "Parameters to train, in update order; all others stay frozen.",
            min_len=1,
            max_len=MAX_SHARD_PARAMS,
            unique=True,
            item=Rule(min_len=1, max_len=MAX_PARAM_NAME_LEN, pattern=PARAM_NAME),
        )
    )
    shard_shapes: Mapping[str, tuple[int, ...]] = field(
        metadata=spec(
            "Declared shape of every shard parameter; the update must match exactly.",
            max_len=MAX_SHARD_PARAMS,
            key=Rule(min_len=1, max_len=MAX_PARAM_NAME_LEN, pattern=PARAM_NAME),
            value=Rule(max_len=MAX_TENSOR_RANK, item=Rule(ge=1, le=MAX_TENSOR_DIM)),
        )
    )
    recipe: InnerRecipe = field(metadata=spec("The inner loop."))
    seed: int = field(metadata=_count("Seed for data order and dropout; same seed, same update.", MAX_SEED))
    codec: Mapping[str, str | int | float] = field(
        metadata=spec(
            "Codec for the update: name plus parameters (protocol.codecs.CodecConfig.from_dict).",
            min_len=1,
            max_len=MAX_CODEC_PARAMS,
            key=Rule(min_len=1, max_len=MAX_KEY_LEN, pattern=KEY),
            value=Rule(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER, max_len=MAX_NAME_LEN, printable=True),
        )
    )
    max_update_bytes: int = field(metadata=_count("Largest update the coordinator accepts.", MAX_UPDATE_BYTES, 1))

    def __post_init__(self) -> None:
        if set(self.shard) != set(self.shard_shapes):
            missing = sorted(set(self.shard) - set(self.shard_shapes))
            extra = sorted(set(self.shard_shapes) - set(self.shard))
            raise FieldError(
                "shard_shapes",
                f"must name exactly the shard's parameters; missing: {_few(missing)}; extra: {_few(extra)}",
            )
        name = self.codec.get("name")
        if not isinstance(name, str) or not KEY.matches(name):
            raise FieldError("codec.name", "the codec mapping needs a 'name' string such as int8")
        if self.recipe.seq_len > self.model.config.max_seq_len:
            raise FieldError(
                "recipe.seq_len",
                f"{self.recipe.seq_len} exceeds model.config.max_seq_len {self.model.config.max_seq_len}",
            )
        width = _DTYPE_BYTES[self.data_dtype]
        if self.model.config.vocab_size > 1 << (8 * width):
            raise FieldError(
                "data_dtype",
                f"{self.data_dtype} cannot hold token ids of vocab_size {self.model.config.vocab_size}",
            )
        if self.data.size != self.data_tokens * width:
            raise FieldError(
                "data.size",
                f"{self.data.size} bytes is not data_tokens {self.data_tokens} x {width} bytes ({self.data_dtype})",
            )
        if self.data_tokens < self.recipe.tokens_needed:
            raise FieldError(
                "data_tokens",
                f"{self.data_tokens} is fewer than the recipe needs ({self.recipe.tokens_needed})",
            )


@dataclass(frozen=True, slots=True)
class NoWork:
    """Reply to request_work when nothing is available; ask again after retry_after_s."""

    TYPE: ClassVar[str] = "no_work"

    retry_after_s: float = field(
        metadata=spec("Wait at least this long before asking again.", ge=0.0, le=MAX_RETRY_AFTER_S)
    )
    reason: str = field(metadata=_text("Why, for the volunteer: e.g. no active campaign, campaign paused."))


@dataclass(frozen=True, slots=True)
class BlobChunk:
    """Reply to blob_request: bytes [offset, offset + len(data)) of the blob."""

    TYPE: ClassVar[str] = "blob_chunk"

    sha256: str = field(metadata=_sha256("The blob."))
    offset: int = field(metadata=_count("Position of data[0] in the blob.", MAX_BLOB_BYTES))
    total_size: int = field(metadata=_count("Size of the whole blob.", MAX_BLOB_BYTES))
    data: bytes = field(metadata=spec("The bytes; may be fewer than asked for.", max_len=MAX_BLOB_CHUNK_BYTES))

    def __post_init__(self) -> None:
        if self.offset + len(self.data) > self.total_size:
            raise FieldError("data", f"runs past total_size {self.total_size} (offset {self.offset})")
        if not self.data and self.offset < self.total_size:
            raise FieldError("data", "is empty although the blob continues past offset")

    @property
    def is_last(self) -> bool:
        """Whether this chunk reaches the end of the blob."""
        return self.offset + len(self.data) == self.total_size


@dataclass(frozen=True, slots=True)
class LeaseExtended:
    """Reply to progress: the lease's new deadline."""

    TYPE: ClassVar[str] = "lease_extended"

    unit_id: str = field(metadata=_id("The unit."))
    lease_id: str = field(metadata=_id("The lease."))
    lease_deadline: float = field(metadata=_deadline("New Unix time the lease ends."))


@dataclass(frozen=True, slots=True)
class Result:
    """Reply to submit: the verdict on the update, sent only once it is durably recorded."""

    TYPE: ClassVar[str] = "result"

    unit_id: str = field(metadata=_id("The unit."))
    lease_id: str = field(metadata=_id("The lease the update was submitted under."))
    status: ResultStatus = field(
        metadata=spec("accepted; rejected (see code); duplicate (a different update was already recorded).")
    )
    code: ErrorCode | None = field(
        metadata=spec("Why it was rejected; duplicate_submission for duplicate; null when accepted.")
    )
    message: str = field(metadata=_text("Explanation for the volunteer."))
    credit: float = field(metadata=spec("Credit granted for this update.", ge=0.0, le=MAX_CREDIT))

    def __post_init__(self) -> None:
        expected = {"accepted": "null", "rejected": "an error code", "duplicate": "duplicate_submission"}
        if (
            (self.status == "accepted" and self.code is not None)
            or (self.status == "rejected" and self.code is None)
            or (self.status == "duplicate" and self.code is not ErrorCode.DUPLICATE_SUBMISSION)
        ):
            raise FieldError("code", f"must be {expected[self.status]} when status is {self.status}")


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """A frame was refused (or the connection is ending). Its shape is the same in every version."""

    TYPE: ClassVar[str] = "error"

    code: ErrorCode = field(metadata=spec("What went wrong."))
    message: str = field(metadata=spec("What to do about it, for a person.", min_len=1, max_len=MAX_TEXT_LEN))
    fatal: bool = field(metadata=spec("The coordinator closes the connection after this frame."))
    ref_type: ToServerType | None = field(default=None, metadata=spec("Type of the refused frame, if known."))
    ref_id: str | None = field(
        default=None,
        metadata=spec(
            "The unit_id or blob sha256 the error is about, if any.",
            min_len=1,
            max_len=MAX_ID_LEN,
            pattern=IDENTIFIER,
        ),
    )
    retry_after_s: float | None = field(
        default=None, metadata=spec("Wait at least this long before retrying.", ge=0.0, le=MAX_RETRY_AFTER_S)
    )

    @classmethod
    def from_error(
        cls,
        error: ProtocolError,
        *,
        fatal: bool,
        ref_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> ErrorMessage:
        """The frame that reports `error` to the volunteer."""
        ref_type = error.ref_type if error.ref_type in _TO_SERVER else None
        return cls(
            code=error.code,
            message=_clip(error.message or error.code.description, MAX_TEXT_LEN),
            fatal=fatal,
            ref_type=ref_type,  # type: ignore[arg-type]  # checked against _TO_SERVER just above
            ref_id=ref_id,
            retry_after_s=retry_after_s,
        )


ToServerMessage = Hello | RequestWork | BlobRequest | Progress | Submit | Abandon | Goodbye
ToClientMessage = Welcome | WorkUnit | NoWork | BlobChunk | LeaseExtended | Result | ErrorMessage
Message = ToServerMessage | ToClientMessage

_TO_SERVER: Final[dict[str, type[ToServerMessage]]] = {
    cls.TYPE: cls for cls in (Hello, RequestWork, BlobRequest, Progress, Submit, Abandon, Goodbye)
}
_TO_CLIENT: Final[dict[str, type[ToClientMessage]]] = {
    cls.TYPE: cls for cls in (Welcome, WorkUnit, NoWork, BlobChunk, LeaseExtended, Result, ErrorMessage)
}
MESSAGE_TYPES: Final[Mapping[str, type[Message]]] = {**_TO_SERVER, **_TO_CLIENT}
"""Every message class by its wire type tag."""

for _cls in MESSAGE_TYPES.values():
    fields_of(_cls)  # a field declared without bounds fails at import, not on the first frame


# --- Encoding -----------------------------------------------------------------------------------


def encode(message: Message, *, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """The frame for `message`. Raises `ProtocolError` if the peer would refuse it.

    The message is validated exactly as `decode` will validate it, so a sender's bug surfaces at
    the sender (`schema_violation`), and a frame over `max_bytes` is `frame_too_large`.
    """
    cls = type(message)
    if MESSAGE_TYPES.get(getattr(cls, "TYPE", "")) is not cls:
        raise TypeError(f"{cls.__name__} is not a protocol message")
    body = to_wire(message)
    assert isinstance(body, dict)
    _check_envelope(from_wire(cls, body, path=cls.TYPE), PROTOCOL_VERSION)
    frame: dict[str, object] = {"type": cls.TYPE, "v": PROTOCOL_VERSION}
    frame.update(body)
    data: bytes = msgpack.packb(frame, use_bin_type=True)
    if len(data) > max_bytes:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"The {cls.TYPE} frame is {len(data)} bytes; the limit is {max_bytes} bytes.",
            ref_type=cls.TYPE,
        )
    return data


@overload
def decode(data: FrameData, *, direction: Literal["to_server"], max_bytes: int = ...) -> ToServerMessage: ...
@overload
def decode(data: FrameData, *, direction: Literal["to_client"], max_bytes: int = ...) -> ToClientMessage: ...
@overload
def decode(data: FrameData, *, direction: Direction, max_bytes: int = ...) -> Message: ...
def decode(data: FrameData, *, direction: Direction, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """The message in frame `data`, received by the coordinator (`to_server`) or a volunteer.

    Raises `ProtocolError` and nothing else, whatever `data` holds: `frame_too_large`,
    `malformed_frame`, `version_mismatch`, `unknown_type` or `schema_violation`. The error's
    `ref_type` is the frame's type tag when it could be read.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(
            ErrorCode.MALFORMED_FRAME,
            f"Expected a binary frame, got {type(data).__name__}; send MessagePack in binary WebSocket frames.",
        )
    try:
        view = memoryview(data).cast("B")
    except TypeError:  # a strided or multi-dimensional view
        raise _malformed("The frame is not one contiguous run of bytes.") from None
    if view.nbytes > max_bytes:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"The frame is {view.nbytes} bytes; the limit is {max_bytes} bytes."
        )
    if not view or not (0x80 <= view[0] <= 0x8F or view[0] in (0xDE, 0xDF)):
        raise _malformed("A frame must be one MessagePack map.")
    _scan(view)
    frame = _unpack(view, max_bytes)
    assert type(frame) is dict  # the first byte said so and _scan saw exactly one value
    tag = frame.get("type")
    if type(tag) is not str:
        raise ProtocolError(ErrorCode.MALFORMED_FRAME, "The frame has no 'type' string naming its message.")
    ref_type = tag if tag in MESSAGE_TYPES else None
    version = frame.get("v")
    if type(version) is not int:
        raise ProtocolError(
            ErrorCode.MALFORMED_FRAME, "The frame has no integer 'v' (protocol version).", ref_type=ref_type
        )
    accepted: Mapping[str, type[Message]] = _TO_SERVER if direction == "to_server" else _TO_CLIENT
    # An error frame has the same shape in every version, so it is read whatever its v says.
    if not is_supported(version) and not (tag == ErrorMessage.TYPE and tag in accepted):
        try:
            check_version(version, peer="volunteer" if direction == "to_server" else "coordinator")
        except ProtocolError as err:
            err.ref_type = ref_type
            raise
    cls = accepted.get(tag)
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, _unknown_type_message(tag, accepted), ref_type=ref_type)
    body = {key: value for key, value in frame.items() if key != "type" and key != "v"}
    try:
        return _check_envelope(from_wire(cls, body, path=tag), version)
    except ProtocolError as err:
        err.ref_type = ref_type
        raise


def _check_envelope(message: Message, version: int) -> Message:
    if isinstance(message, Hello) and message.protocol_version != version:
        raise ProtocolError(
            ErrorCode.SCHEMA_VIOLATION,
            f"hello.protocol_version: {message.protocol_version} differs from the frame's v {version}",
        )
    return message


def _unknown_type_message(tag: str, accepted: Mapping[str, type[Message]]) -> str:
    if tag in MESSAGE_TYPES:
        sender = "coordinator" if tag in _TO_CLIENT else "volunteer"
        return f"'{tag}' is a message the {sender} sends, not one it receives."
    return f"Unknown message type {_clip(repr(tag), 40)}; expected one of: {', '.join(accepted)}."


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _few(names: list[str]) -> str:
    return (", ".join(names[:3]) + (", ..." if len(names) > 3 else "")) or "none"


# --- Hostile-input guards -----------------------------------------------------------------------

# Type bytes followed by a fixed-size payload, by payload size (nil, bools, floats, ints).
_FIXED_SIZE: Final = {
    0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8,
    0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8,
}  # fmt: skip
# bin and str: the size of their big-endian length prefix.
_LENGTH_PREFIX: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}
# array and map: the size of their count prefix, and values per counted entry.
_COUNT_PREFIX: Final = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
_EXTENSIONS: Final = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})


def _scan(view: memoryview) -> None:
    """Walk the MessagePack structure without building it, refusing what unpacking would regret.

    Unpacking allocates a Python object per value: a few bytes of empty maps would become gigabytes
    of dicts. Counting values and depth first bounds that work by the frame's size, not its shape.
    """
    end = len(view)
    pos = 0
    values = 0
    open_containers: list[int] = []  # values still expected by each open array or map
    while True:
        if pos >= end:
            raise _malformed("The frame ends in the middle of a value.")
        start = pos
        byte = view[pos]
        pos += 1
        values += 1
        if values > MAX_FRAME_VALUES:
            raise _malformed(f"The frame holds more than {MAX_FRAME_VALUES} values.")
        children = -1  # stays -1 for scalars
        if byte < 0x80 or byte >= 0xE0:  # positive and negative fixint
            pass
        elif byte < 0x90:  # fixmap
            children = 2 * (byte & 0x0F)
        elif byte < 0xA0:  # fixarray
            children = byte & 0x0F
        elif byte < 0xC0:  # fixstr
            pos += byte & 0x1F
        elif byte in _FIXED_SIZE:
            pos += _FIXED_SIZE[byte]
        elif byte in _LENGTH_PREFIX:
            width = _LENGTH_PREFIX[byte]
            pos += width + int.from_bytes(view[pos : pos + width], "big")
        elif byte in _COUNT_PREFIX:
            width, per_entry = _COUNT_PREFIX[byte]
            children = per_entry * int.from_bytes(view[pos : pos + width], "big")
            pos += width
        elif byte in _EXTENSIONS:
            raise _malformed(f"MessagePack extension types are not allowed (byte {start}).")
        else:
            raise _malformed(f"Byte {start} is 0xc1, which MessagePack never uses.")
        if pos > end:
            raise _malformed(f"The frame ends in the middle of the value at byte {start}.")
        if children >= 0 and len(open_containers) >= MAX_FRAME_DEPTH:
            raise _malformed(f"The frame nests maps and arrays deeper than {MAX_FRAME_DEPTH} levels.")
        if children > 0:
            open_containers.append(children)
            continue
        # A value just ended: close every container it completes.
        while open_containers:
            open_containers[-1] -= 1
            if open_containers[-1]:
                break
            open_containers.pop()
        if not open_containers:
            break
    if pos != end:
        raise _malformed(f"{end - pos} bytes follow the frame's map.")


def _unpack(view: memoryview, max_bytes: int) -> object:
    try:
        return msgpack.unpackb(
            view,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=MAX_FRAME_VALUES,
            max_map_len=MAX_FRAME_VALUES,
            max_ext_len=0,
            ext_hook=_refuse_extension,
            object_pairs_hook=_map_without_duplicates,
        )
    except ProtocolError:
        raise
    except Exception as err:  # msgpack raises a zoo of types (ValueError, StackError, ...)
        raise _malformed(f"Not valid MessagePack: {_clip(str(err), 200)}") from None


def _refuse_extension(code: int, data: bytes) -> object:
    raise _malformed("MessagePack extension types are not allowed.")


def _map_without_duplicates(pairs: list[tuple[object, object]]) -> dict[object, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[object] = set()
        for key, _ in pairs:
            if key in seen:
                raise _malformed(f"The key {_clip(repr(key), 40)} appears twice in one map.")
            seen.add(key)
    return result


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED_FRAME, message)
