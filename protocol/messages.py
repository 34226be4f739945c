"""The control-channel messages, one frozen msgspec Struct per frame type, and their wire encoding.

A frame is one binary WebSocket message holding one MessagePack map: `type` (the tag below), `v`
(the protocol version) and the message's fields, in that order. Bounds are `msgspec.Meta`
constraints on each field's `Annotated` type, and the field tables of docs/protocol.md are generated
from them. `decode` treats its input as hostile: it checks the size before anything else, walks
the MessagePack structure before building it (protocol.frame_scan), has msgspec decode and validate
the message, then checks what msgspec cannot (protocol.field_rules) and the rules that span
fields, raising only `ProtocolError`.

    >>> frame = encode(RequestWork(preferred_campaign="tinystories"))
    >>> frame[:19]
    b'\\x83\\xa4type\\xacrequest_work'
    >>> decode(frame, direction="to_server")
    RequestWork(preferred_campaign='tinystories')
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from functools import reduce
from typing import Annotated, Any, ClassVar, Final, Literal, overload

import msgspec
from msgspec import Meta, Struct

from protocol.errors import ErrorCode, ProtocolError
from protocol.field_rules import PRINTABLE, UNIQUE, FieldError, Reader, TextFormat, check_declared
from protocol.frame_scan import scan
from protocol.limits import (
    FRAME_OVERHEAD_BYTES,
    MAX_BATCH,
    MAX_BLOB_BYTES,
    MAX_BLOB_CHUNK_BYTES,
    MAX_CHECKPOINT_DELTAS,
    MAX_CODEC_PARAMS,
    MAX_CODECS,
    MAX_CREDIT,
    MAX_DEVICES,
    MAX_DURATION_S,
    MAX_EPSILON_BUDGET,
    MAX_FILE_KINDS,
    MAX_FRAME_BYTES,
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
    MAX_MOMENTS_BYTES,
    MAX_NAME_LEN,
    MAX_NOISE_MULTIPLIER,
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
    MAX_TOKENIZER_BYTES,
    MAX_UPDATE_BYTES,
    MAX_URL_LEN,
    MAX_VERSION_LEN,
    MAX_VOCAB_SIZE,
    MIN_HEARTBEAT_INTERVAL_S,
)
from protocol.version import PROTOCOL_VERSION, check_version, is_supported

Direction = Literal["to_server", "to_client"]
FrameData = bytes | bytearray | memoryview

# --- Formats and field types ---------------------------------------------------------------------

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
FILE_KIND: Final = TextFormat(r"\.[a-z0-9]+", "a lowercase file name ending with its dot, such as .txt")
URL: Final = TextFormat(r"https?://[!-~]+", "an http:// or https:// URL of printable ASCII")

Id = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LEN), IDENTIFIER.meta]
Sha256 = Annotated[str, Meta(max_length=64), SHA256.meta]
Token = Annotated[str, Meta(min_length=1, max_length=MAX_TOKEN_LEN), TOKEN.meta]
Key = Annotated[str, Meta(min_length=1, max_length=MAX_KEY_LEN), KEY.meta]
Version = Annotated[str, Meta(min_length=1, max_length=MAX_VERSION_LEN), VERSION.meta]
ParamName = Annotated[str, Meta(min_length=1, max_length=MAX_PARAM_NAME_LEN), PARAM_NAME.meta]
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LEN), PRINTABLE]
Text = Annotated[str, Meta(max_length=MAX_TEXT_LEN)]
Count = Annotated[int, Meta(ge=0, le=MAX_SAFE_INTEGER)]
Deadline = Annotated[float, Meta(ge=0.0, le=MAX_TIMESTAMP_S)]
Shape = Annotated[tuple[Annotated[int, Meta(ge=1, le=MAX_TENSOR_DIM)], ...], Meta(max_length=MAX_TENSOR_RANK)]
CodecValue = (
    Annotated[str, Meta(max_length=MAX_NAME_LEN), PRINTABLE]
    | Annotated[int, Meta(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
    | Annotated[float, Meta(ge=-MAX_SAFE_INTEGER, le=MAX_SAFE_INTEGER)]
)

DeviceKind = Literal["cpu", "cuda", "mps"]
TokenDtype = Literal["uint16", "uint32"]
Phase = Literal["downloading", "training", "paused"]
Runtime = Literal["torch", "onnxruntime"]
RUNTIMES: Final[tuple[Runtime, ...]] = ("torch", "onnxruntime")
UnitKind = Literal["train", "evaluate", "check"]
UNIT_KINDS: Final[tuple[UnitKind, ...]] = ("train", "evaluate", "check")
AbandonReason = Literal["user_request", "out_of_memory", "diverged", "download_failed", "deadline", "error"]
ResultStatus = Literal["accepted", "rejected", "duplicate"]
ToServerType = Literal[
    "hello", "request_work", "blob_request", "progress", "submit", "report", "abandon", "goodbye", "keepalive"
]

_DTYPE_BYTES: Final = {"uint16": 2, "uint32": 4}


# --- Shared structures --------------------------------------------------------------------------


class Device(Struct, frozen=True, forbid_unknown_fields=True):
    """One compute device a volunteer offers."""

    kind: Annotated[DeviceKind, Meta(description="Device family.")]
    name: Annotated[Name, Meta(description="Human-readable model, e.g. NVIDIA GeForce RTX 3060.")]
    memory_bytes: Annotated[
        int, Meta(ge=0, le=MAX_MEMORY_BYTES, description="Memory of the device (system RAM for cpu) in bytes.")
    ]


class Capabilities(Struct, frozen=True, forbid_unknown_fields=True):
    """What a volunteer's machine can do and what its owner allows."""

    devices: Annotated[
        tuple[Device, ...],
        Meta(
            min_length=1,
            max_length=MAX_DEVICES,
            description="Devices, preferred first; a cpu entry is always present.",
        ),
    ]
    memory_bytes: Annotated[
        int, Meta(ge=0, le=MAX_MEMORY_BYTES, description="System memory the owner lets training use, in bytes.")
    ]
    threads: Annotated[int, Meta(ge=1, le=MAX_THREADS, description="CPU threads the owner lets training use.")]
    codecs: Annotated[
        tuple[Key, ...],
        Meta(
            min_length=1,
            max_length=MAX_CODECS,
            description="Update codecs the client can encode, by name (see protocol.codecs).",
        ),
        UNIQUE,
    ]
    platform: Annotated[Name, Meta(description="Operating system and architecture, e.g. linux-x86_64.")]
    runtimes: Annotated[
        tuple[Runtime, ...],
        Meta(
            min_length=1,
            max_length=2,
            description=(
                "Runtimes the client trains with, preferred first: torch (the reference training core) or "
                "onnxruntime (runs the ONNX step graph the unit names)."
            ),
        ),
        UNIQUE,
    ]
    unit_kinds: Annotated[
        tuple[UnitKind, ...],
        Meta(
            min_length=1,
            max_length=3,
            description=(
                "Kinds of work unit the client does: train, evaluate and check (both forward only, answered "
                "with report)."
            ),
        ),
        UNIQUE,
    ]
    own_data: Annotated[
        bool,
        Meta(
            description=(
                "The owner chose files of their own for campaigns that train on volunteers' data: the client "
                "takes train units with work_unit.private (they carry no data)."
            )
        ),
    ] = False


class BlobRef(Struct, frozen=True, forbid_unknown_fields=True):
    """A content-addressed blob the volunteer fetches with blob_request (or finds in its cache)."""

    sha256: Annotated[Sha256, Meta(description="SHA-256 of the blob's bytes; verify it before use.")]
    size: Annotated[int, Meta(ge=0, le=MAX_BLOB_BYTES, description="Size of the blob in bytes.")]


class CheckpointDelta(Struct, frozen=True, forbid_unknown_fields=True):
    """One step of a checkpoint's delta chain: the blob that turns checkpoint `base` into checkpoint `result`."""

    base: Annotated[Sha256, Meta(description="SHA-256 of the checkpoint the delta applies to.")]
    delta: Annotated[BlobRef, Meta(description="A tensor frame of one tensor per checkpoint tensor, added in float32.")]
    result: Annotated[Sha256, Meta(description="SHA-256 of the checkpoint the sum makes, byte for byte.")]


class ModelConfig(Struct, frozen=True, forbid_unknown_fields=True):
    """GPT hyper-parameters (the fields of training.model.ModelConfig)."""

    vocab_size: Annotated[int, Meta(ge=1, le=MAX_VOCAB_SIZE, description="Vocabulary size.")]
    d_model: Annotated[int, Meta(ge=1, le=MAX_MODEL_WIDTH, description="Residual stream width.")]
    n_layer: Annotated[int, Meta(ge=1, le=MAX_LAYERS, description="Transformer blocks.")]
    n_head: Annotated[int, Meta(ge=1, le=MAX_LAYERS, description="Attention heads; d_model / n_head must be even.")]
    d_ff: Annotated[int, Meta(ge=1, le=MAX_MODEL_WIDTH, description="Feed-forward hidden width.")]
    max_seq_len: Annotated[int, Meta(ge=1, le=MAX_SEQ_LEN, description="Longest context the model supports.")]
    rope_theta: Annotated[float, Meta(gt=0.0, le=MAX_ROPE_THETA, description="RoPE base.")]
    norm_eps: Annotated[float, Meta(gt=0.0, le=1.0, description="RMSNorm epsilon.")]

    def __post_init__(self) -> None:
        if self.d_model % self.n_head:
            raise FieldError("n_head", f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise FieldError("n_head", "the head dimension d_model / n_head must be even for RoPE")


class ModelSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """Which model the unit trains."""

    preset: Annotated[Key, Meta(description="Preset name the config derives from, e.g. tiny.")]
    config: Annotated[ModelConfig, Meta(description="The exact hyper-parameters; they win over the preset.")]


class InnerRecipe(Struct, frozen=True, forbid_unknown_fields=True):
    """The inner loop: AdamW with linear warmup and cosine decay (training.inner.InnerConfig)."""

    steps: Annotated[int, Meta(ge=1, le=MAX_INNER_STEPS, description="Inner optimizer steps (H) in this unit.")]
    batch_size: Annotated[int, Meta(ge=1, le=MAX_BATCH, description="Sequences per micro-batch.")]
    seq_len: Annotated[
        int, Meta(ge=1, le=MAX_SEQ_LEN, description="Tokens per sequence; at most model.config.max_seq_len.")
    ]
    grad_accum: Annotated[int, Meta(ge=1, le=MAX_BATCH, description="Micro-batches accumulated per step.")]
    lr: Annotated[float, Meta(gt=0.0, le=MAX_LR, description="Peak learning rate.")]
    min_lr_ratio: Annotated[float, Meta(ge=0.0, le=1.0, description="Floor of the cosine decay, as a fraction of lr.")]
    warmup_steps: Annotated[Count, Meta(description="Linear warmup length in global steps.")]
    total_steps: Annotated[Count, Meta(description="Cosine schedule length in global steps; 0: constant after warmup.")]
    global_step: Annotated[Count, Meta(description="Global step at the unit's first inner step (for the schedule).")]
    weight_decay: Annotated[float, Meta(ge=0.0, le=MAX_LR, description="AdamW decoupled weight decay.")]
    grad_clip: Annotated[float, Meta(ge=0.0, le=MAX_GRAD_CLIP, description="Gradient-norm clip; 0 disables clipping.")]
    beta1: Annotated[float, Meta(ge=0.0, lt=1.0, description="AdamW beta1.")]
    beta2: Annotated[float, Meta(ge=0.0, lt=1.0, description="AdamW beta2.")]
    eps: Annotated[float, Meta(gt=0.0, le=1.0, description="AdamW epsilon.")]
    unit_warmup_steps: Annotated[
        int,
        Meta(
            ge=0,
            le=MAX_INNER_STEPS,
            description="The unit's own warm-up: its first steps' rates are ramped linearly over this many steps.",
        ),
    ] = 0
    shared_moments: Annotated[
        bool,
        Meta(
            description=(
                "The campaign shares AdamW second moments: v starts from work_unit.moments when it is given, "
                "and submit.moments returns the unit's final v."
            )
        ),
    ] = False

    @property
    def tokens_needed(self) -> int:
        """Tokens the unit reads: every sequence of every micro-batch, plus one final target."""
        return self.steps * self.grad_accum * self.batch_size * self.seq_len + 1


class PrivateRecipe(Struct, frozen=True, forbid_unknown_fields=True):
    """How a unit of a campaign on volunteers' own data is trained and protected: the client tokenizes its
    owner's files with `tokenizer` under the rules, trains on them, clips the update and adds noise."""

    tokenizer: Annotated[
        BlobRef, Meta(description="The campaign's tokenizer: a Hugging Face tokenizers JSON file (tokenizer.json).")
    ]
    file_kinds: Annotated[
        tuple[Annotated[str, Meta(min_length=2, max_length=16), FILE_KIND.meta], ...],
        Meta(
            min_length=1,
            max_length=MAX_FILE_KINDS,
            description="File name endings the campaign takes, lowercase with the dot, e.g. .txt, .md, .jsonl.",
        ),
        UNIQUE,
    ]
    max_file_bytes: Annotated[int, Meta(ge=1, le=MAX_BLOB_BYTES, description="Files larger than this are left out.")]
    max_total_bytes: Annotated[
        int, Meta(ge=1, le=MAX_BLOB_BYTES, description="The files used hold at most this many bytes in all.")
    ]
    min_tokens: Annotated[
        Count,
        Meta(
            description=(
                "Least training tokens the owner's files must hold after tokenizing (the client's own holdout "
                "taken out); with fewer the client abandons the unit (reason error)."
            )
        ),
    ]
    clip_norm: Annotated[
        float,
        Meta(gt=0.0, le=MAX_GRAD_CLIP, description="C: the update's whole L2 norm is clipped to this before noise."),
    ]
    noise_multiplier: Annotated[
        float,
        Meta(
            ge=0.0,
            le=MAX_NOISE_MULTIPLIER,
            description="z: Gaussian noise of standard deviation z·2C is added to every coordinate; 0: no noise.",
        ),
    ]
    delta: Annotated[float, Meta(gt=0.0, lt=1.0, description="The δ of the (ε, δ) the campaign accounts privacy with.")]
    epsilon_budget: Annotated[
        Annotated[float, Meta(gt=0.0, le=MAX_EPSILON_BUDGET)] | None,
        Meta(
            description=(
                "The ε one volunteer's updates to this campaign may add up to; null: no limit. A client refuses a "
                "unit whose update would take it past this."
            )
        ),
    ]


class TrainMetrics(Struct, frozen=True, forbid_unknown_fields=True):
    """What the volunteer measured while training the unit."""

    losses: Annotated[
        tuple[Annotated[float, Meta(ge=0.0, le=MAX_LOSS)], ...],
        Meta(
            max_length=MAX_INNER_STEPS,
            description=(
                "Training loss of each inner step, in order (recipe.steps of them); empty for a unit with "
                "private, whose losses are of the owner's data and stay on the device."
            ),
        ),
    ]
    tokens: Annotated[Count, Meta(description="Tokens trained on.")]
    seconds: Annotated[float, Meta(ge=0.0, le=MAX_DURATION_S, description="Wall-clock training time.")]
    device: Annotated[DeviceKind, Meta(description="Device family the unit trained on.")]
    device_name: Annotated[Name, Meta(description="Device model, as in hello.capabilities.devices.")]
    runtime: Annotated[Runtime, Meta(description="Runtime the unit trained with, as in work_unit.runtime.")]
    peak_memory_bytes: Annotated[
        Annotated[int, Meta(ge=0, le=MAX_MEMORY_BYTES)] | None,
        Meta(description="Peak device memory used, when the device reports it."),
    ] = None


# --- Volunteer -> coordinator -------------------------------------------------------------------


class Hello(Struct, frozen=True, forbid_unknown_fields=True):
    """First frame of every connection: who the volunteer is and what it can do. Reply: welcome."""

    TYPE: ClassVar[str] = "hello"

    protocol_version: Annotated[
        int, Meta(ge=1, le=MAX_SAFE_INTEGER, description="The client's protocol version; equals the frame's v.")
    ]
    client_version: Annotated[Version, Meta(description="App release, e.g. 0.3.1.")]
    token: Annotated[
        Token | None,
        Meta(
            description=(
                "Token from an earlier welcome; null on first contact (the coordinator registers the volunteer)."
            )
        ),
    ]
    name: Annotated[Name, Meta(description="Display name for dashboards and leaderboards.")]
    capabilities: Annotated[Capabilities, Meta(description="Devices, limits and codecs.")]


class RequestWork(Struct, frozen=True, forbid_unknown_fields=True):
    """Ask for a unit. Reply: work_unit or no_work."""

    TYPE: ClassVar[str] = "request_work"

    preferred_campaign: Annotated[
        Id | None, Meta(description="Campaign the volunteer would rather work on; a hint, not a demand.")
    ] = None


class BlobRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """Ask for one chunk of a blob; resume a download by asking from the first missing byte."""

    TYPE: ClassVar[str] = "blob_request"

    sha256: Annotated[Sha256, Meta(description="The blob, as named by a BlobRef.")]
    offset: Annotated[int, Meta(ge=0, le=MAX_BLOB_BYTES, description="First byte wanted.")]
    length: Annotated[int, Meta(ge=1, le=MAX_BLOB_CHUNK_BYTES, description="Bytes wanted; the reply may hold fewer.")]


class Progress(Struct, frozen=True, forbid_unknown_fields=True):
    """Heartbeat while a unit is leased; extends the lease. Reply: lease_extended (or error)."""

    TYPE: ClassVar[str] = "progress"

    unit_id: Annotated[Id, Meta(description="The unit, as in work_unit.")]
    lease_id: Annotated[Id, Meta(description="The lease, as in work_unit.")]
    step: Annotated[int, Meta(ge=0, le=MAX_INNER_STEPS, description="Inner steps completed.")]
    steps_total: Annotated[int, Meta(ge=1, le=MAX_INNER_STEPS, description="Inner steps in the unit (recipe.steps).")]
    loss: Annotated[
        Annotated[float, Meta(ge=0.0, le=MAX_LOSS)] | None,
        Meta(description="Loss of the latest step; null before the first, and always for a unit with private."),
    ]
    tokens: Annotated[Count, Meta(description="Tokens trained so far in this unit.")]
    phase: Annotated[Phase, Meta(description="What the volunteer is doing: downloading blobs, training, or paused.")]

    def __post_init__(self) -> None:
        if self.step > self.steps_total:
            raise FieldError("step", f"{self.step} is more than steps_total {self.steps_total}")


class Submit(Struct, frozen=True, forbid_unknown_fields=True):
    """The finished unit's update. Reply: result. Resending the same update is harmless."""

    TYPE: ClassVar[str] = "submit"

    unit_id: Annotated[Id, Meta(description="The unit, as in work_unit.")]
    lease_id: Annotated[Id, Meta(description="The lease, as in work_unit.")]
    update: Annotated[
        bytes,
        Meta(
            min_length=1,
            max_length=MAX_UPDATE_BYTES,
            description="The pseudo-gradient (start minus end weights) of the shard, encoded with the unit's codec.",
        ),
    ]
    update_sha256: Annotated[Sha256, Meta(description="SHA-256 of update; keys idempotent resubmission.")]
    metrics: Annotated[TrainMetrics, Meta(description="Losses, tokens, time and device.")]
    moments: Annotated[
        bytes,
        Meta(
            max_length=MAX_MOMENTS_BYTES,
            description=(
                "When the unit's recipe.shared_moments: the shard's AdamW second moment after the last step, "
                "as a moments frame; empty otherwise. With update, at most MAX_UPDATE_BYTES."
            ),
        ),
    ] = b""

    def __post_init__(self) -> None:
        if len(self.update) + len(self.moments) > MAX_UPDATE_BYTES:
            raise FieldError("moments", f"update and moments together exceed MAX_UPDATE_BYTES ({MAX_UPDATE_BYTES})")


class Report(Struct, frozen=True, forbid_unknown_fields=True):
    """The finished evaluate or check unit's losses. Reply: result."""

    TYPE: ClassVar[str] = "report"

    unit_id: Annotated[Id, Meta(description="The unit, as in work_unit.")]
    lease_id: Annotated[Id, Meta(description="The lease, as in work_unit.")]
    losses: Annotated[
        tuple[Annotated[float, Meta(ge=0.0, le=MAX_LOSS)], ...],
        Meta(
            min_length=1,
            max_length=MAX_INNER_STEPS,
            description="Mean loss of each batch, in order: recipe.steps of them.",
        ),
    ]
    seconds: Annotated[float, Meta(ge=0.0, le=MAX_DURATION_S, description="Wall-clock time of the evaluation.")]
    device: Annotated[DeviceKind, Meta(description="Device family it ran on.")]
    device_name: Annotated[Name, Meta(description="Device model, as in hello.capabilities.devices.")]
    runtime: Annotated[Runtime, Meta(description="Runtime it ran with, as in work_unit.runtime.")]


class Abandon(Struct, frozen=True, forbid_unknown_fields=True):
    """Give a leased unit back early so it is reissued now rather than when the lease expires."""

    TYPE: ClassVar[str] = "abandon"

    unit_id: Annotated[Id, Meta(description="The unit, as in work_unit.")]
    lease_id: Annotated[Id, Meta(description="The lease, as in work_unit.")]
    reason: Annotated[AbandonReason, Meta(description="Why, for the coordinator's statistics.")]
    detail: Annotated[Text, Meta(description="Free text for logs, e.g. the exception message.")]


class Goodbye(Struct, frozen=True, forbid_unknown_fields=True):
    """The volunteer is closing the connection on purpose; leases stay valid until they expire."""

    TYPE: ClassVar[str] = "goodbye"

    reason: Annotated[Text, Meta(description="Free text, e.g. user quit, idle period ended.")]


class Keepalive(Struct, frozen=True, forbid_unknown_fields=True):
    """Still here, with nothing else to say: keeps the connection open while the volunteer sends no other
    frame (waiting for work, paused, training with no lease to report). No reply."""

    TYPE: ClassVar[str] = "keepalive"


# --- Coordinator -> volunteer -------------------------------------------------------------------


class Welcome(Struct, frozen=True, forbid_unknown_fields=True):
    """Reply to hello: the volunteer is in. Keep the token (if new) for every later hello."""

    TYPE: ClassVar[str] = "welcome"

    volunteer_id: Annotated[Id, Meta(description="The volunteer's public id (shown on dashboards).")]
    token: Annotated[
        Token | None,
        Meta(description="New secret token when hello registered the volunteer; null otherwise. Store it safely."),
    ]
    server_version: Annotated[Version, Meta(description="Coordinator release.")]
    heartbeat_interval_s: Annotated[
        float,
        Meta(
            ge=MIN_HEARTBEAT_INTERVAL_S,
            le=MAX_HEARTBEAT_INTERVAL_S,
            description="Send progress at least this often while a unit is leased.",
        ),
    ]
    max_frame_bytes: Annotated[
        int, Meta(ge=FRAME_OVERHEAD_BYTES, le=MAX_FRAME_BYTES, description="Largest frame the coordinator accepts.")
    ]
    dashboard_url: Annotated[
        Annotated[str, Meta(max_length=MAX_URL_LEN), URL.meta] | None,
        Meta(description="Page showing this volunteer's statistics."),
    ]
    credit_total: Annotated[float, Meta(ge=0.0, le=MAX_CREDIT, description="Credit earned so far, all campaigns.")]


class WorkUnit(Struct, frozen=True, forbid_unknown_fields=True):
    """A leased unit: train `shard` of the model for `recipe.steps` steps on `data`, then submit."""

    TYPE: ClassVar[str] = "work_unit"

    kind: Annotated[
        UnitKind,
        Meta(
            description=(
                "train: train the shard and submit the update; evaluate and check: the loss of the checkpoint "
                "on each of recipe.steps batches of data (forward only), answered with report (a check unit's "
                "checkpoint is another volunteer's update applied to a version, to test it)."
            )
        ),
    ]
    runtime: Annotated[
        Runtime, Meta(description="Runtime to train with: one the client listed in hello.capabilities.runtimes.")
    ]
    unit_id: Annotated[Id, Meta(description="The unit.")]
    lease_id: Annotated[Id, Meta(description="This lease of the unit; a reissued unit gets a new one.")]
    lease_deadline: Annotated[Deadline, Meta(description="Unix time the lease ends unless progress extends it.")]
    campaign_id: Annotated[Id, Meta(description="The campaign.")]
    campaign_name: Annotated[Name, Meta(description="The campaign's display name.")]
    model_version: Annotated[Count, Meta(description="Version of the model the checkpoint holds.")]
    model: Annotated[ModelSpec, Meta(description="Architecture.")]
    checkpoint: Annotated[BlobRef, Meta(description="The weights to start from.")]
    checkpoint_format: Annotated[Literal["safetensors"], Meta(description="Serialization of the checkpoint blob.")]
    data: Annotated[
        BlobRef | None,
        Meta(
            description=(
                "The data slice: raw little-endian token ids, data_tokens of them. Null for a unit with private: "
                "the client trains on its owner's files."
            )
        ),
    ]
    data_dtype: Annotated[TokenDtype, Meta(description="Element type of the data slice.")]
    data_tokens: Annotated[
        Count, Meta(description="Token ids in the slice; at least recipe.tokens_needed (0 when data is null).")
    ]
    shard: Annotated[
        tuple[ParamName, ...],
        Meta(
            min_length=1,
            max_length=MAX_SHARD_PARAMS,
            description="Parameters to train, in update order; all others stay frozen.",
        ),
        UNIQUE,
    ]
    shard_shapes: Annotated[
        Mapping[ParamName, Shape],
        Meta(
            max_length=MAX_SHARD_PARAMS,
            description="Declared shape of every shard parameter; the update must match exactly.",
        ),
    ]
    recipe: Annotated[InnerRecipe, Meta(description="The inner loop.")]
    seed: Annotated[
        int, Meta(ge=0, le=MAX_SEED, description="Seed for data order and dropout; same seed, same update.")
    ]
    codec: Annotated[
        Mapping[Key, CodecValue],
        Meta(
            min_length=1,
            max_length=MAX_CODEC_PARAMS,
            description="Codec for the update: name plus parameters (protocol.codecs.CodecConfig.from_dict).",
        ),
    ]
    max_update_bytes: Annotated[
        int, Meta(ge=1, le=MAX_UPDATE_BYTES, description="Largest update the coordinator accepts.")
    ]
    graph: Annotated[
        BlobRef | None,
        Meta(
            description=(
                "When runtime is onnxruntime: the ONNX step graph of this model and shard (train), or the loss "
                "graph of the model (evaluate, check); null for torch."
            )
        ),
    ] = None
    deltas: Annotated[
        tuple[CheckpointDelta, ...],
        Meta(
            max_length=MAX_CHECKPOINT_DELTAS,
            description=(
                "Deltas from earlier checkpoints to this one, oldest first, each result the next one's base and "
                "the last result the checkpoint: a client holding a base rebuilds the checkpoint from the deltas "
                "after it instead of downloading it. Empty when there are none."
            ),
        ),
    ] = ()
    moments: Annotated[
        BlobRef | None,
        Meta(
            description=(
                "A moments frame of every checkpoint tensor: the shared AdamW second moment a train unit's v starts "
                "from. Null: v starts at zero. Only when recipe.shared_moments."
            )
        ),
    ] = None
    private: Annotated[
        PrivateRecipe | None,
        Meta(
            description=(
                "Set for a train unit of a campaign on volunteers' own data: data is null, and the client trains "
                "on its owner's files under these rules, then clips and noises the update (see protocol.md, "
                "units on volunteers' own data). Null otherwise."
            )
        ),
    ] = None

    def __post_init__(self) -> None:
        if self.moments is not None and not (self.kind == "train" and self.recipe.shared_moments):
            raise FieldError("moments", "must be null unless a train unit's recipe.shared_moments is true")
        if (self.graph is None) != (self.runtime == "torch"):
            raise FieldError("graph", "must be a blob when runtime is onnxruntime and null when it is torch")
        for i, step in enumerate(self.deltas):
            following = self.deltas[i + 1].base if i + 1 < len(self.deltas) else self.checkpoint.sha256
            if step.result != following:
                raise FieldError(
                    "deltas", f"entry {i}'s result must be the base of the next entry, or the last one the checkpoint"
                )
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
        if self.private is not None:
            if self.kind != "train" or self.data is not None or self.data_tokens != 0:
                raise FieldError("private", "is only for train units, whose data is then null and data_tokens 0")
            if self.recipe.shared_moments:
                raise FieldError("private", "a unit on the owner's data can't share moments (they'd leak it)")
            if self.private.tokenizer.size > MAX_TOKENIZER_BYTES:
                raise FieldError("private.tokenizer.size", f"a tokenizer may hold at most {MAX_TOKENIZER_BYTES} bytes")
        elif self.data is None:
            raise FieldError("data", "must be a blob unless the unit has private")
        width = _DTYPE_BYTES[self.data_dtype]
        if self.model.config.vocab_size > 1 << (8 * width):
            raise FieldError(
                "data_dtype",
                f"{self.data_dtype} cannot hold token ids of vocab_size {self.model.config.vocab_size}",
            )
        if self.data is None:
            return
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


class NoWork(Struct, frozen=True, forbid_unknown_fields=True):
    """Reply to request_work when nothing is available; ask again after retry_after_s."""

    TYPE: ClassVar[str] = "no_work"

    retry_after_s: Annotated[
        float, Meta(ge=0.0, le=MAX_RETRY_AFTER_S, description="Wait at least this long before asking again.")
    ]
    reason: Annotated[Text, Meta(description="Why, for the volunteer: e.g. no active campaign, campaign paused.")]


class BlobChunk(Struct, frozen=True, forbid_unknown_fields=True):
    """Reply to blob_request: bytes [offset, offset + len(data)) of the blob."""

    TYPE: ClassVar[str] = "blob_chunk"

    sha256: Annotated[Sha256, Meta(description="The blob.")]
    offset: Annotated[int, Meta(ge=0, le=MAX_BLOB_BYTES, description="Position of data[0] in the blob.")]
    total_size: Annotated[int, Meta(ge=0, le=MAX_BLOB_BYTES, description="Size of the whole blob.")]
    data: Annotated[bytes, Meta(max_length=MAX_BLOB_CHUNK_BYTES, description="The bytes; may be fewer than asked for.")]

    def __post_init__(self) -> None:
        if self.offset + len(self.data) > self.total_size:
            raise FieldError("data", f"runs past total_size {self.total_size} (offset {self.offset})")
        if not self.data and self.offset < self.total_size:
            raise FieldError("data", "is empty although the blob continues past offset")

    @property
    def is_last(self) -> bool:
        """Whether this chunk reaches the end of the blob."""
        return self.offset + len(self.data) == self.total_size


class LeaseExtended(Struct, frozen=True, forbid_unknown_fields=True):
    """Reply to progress: the lease's new deadline."""

    TYPE: ClassVar[str] = "lease_extended"

    unit_id: Annotated[Id, Meta(description="The unit.")]
    lease_id: Annotated[Id, Meta(description="The lease.")]
    lease_deadline: Annotated[Deadline, Meta(description="New Unix time the lease ends.")]


class Result(Struct, frozen=True, forbid_unknown_fields=True):
    """Reply to submit: the verdict on the update, sent only once it is durably recorded."""

    TYPE: ClassVar[str] = "result"

    unit_id: Annotated[Id, Meta(description="The unit.")]
    lease_id: Annotated[Id, Meta(description="The lease the update was submitted under.")]
    status: Annotated[
        ResultStatus,
        Meta(description="accepted; rejected (see code); duplicate (a different update was already recorded)."),
    ]
    code: Annotated[
        ErrorCode | None,
        Meta(description="Why it was rejected; duplicate_submission for duplicate; null when accepted."),
    ]
    message: Annotated[Text, Meta(description="Explanation for the volunteer.")]
    credit: Annotated[float, Meta(ge=0.0, le=MAX_CREDIT, description="Credit granted for this update.")]

    def __post_init__(self) -> None:
        expected = {"accepted": "null", "rejected": "an error code", "duplicate": "duplicate_submission"}
        if (
            (self.status == "accepted" and self.code is not None)
            or (self.status == "rejected" and self.code is None)
            or (self.status == "duplicate" and self.code is not ErrorCode.DUPLICATE_SUBMISSION)
        ):
            raise FieldError("code", f"must be {expected[self.status]} when status is {self.status}")


class ErrorMessage(Struct, frozen=True, forbid_unknown_fields=True):
    """A frame was refused (or the connection is ending). Its shape is the same in every version."""

    TYPE: ClassVar[str] = "error"

    code: Annotated[ErrorCode, Meta(description="What went wrong.")]
    message: Annotated[
        str, Meta(min_length=1, max_length=MAX_TEXT_LEN, description="What to do about it, for a person.")
    ]
    fatal: Annotated[bool, Meta(description="The coordinator closes the connection after this frame.")]
    ref_type: Annotated[ToServerType | None, Meta(description="Type of the refused frame, if known.")] = None
    ref_id: Annotated[Id | None, Meta(description="The unit_id or blob sha256 the error is about, if any.")] = None
    retry_after_s: Annotated[
        Annotated[float, Meta(ge=0.0, le=MAX_RETRY_AFTER_S)] | None,
        Meta(description="Wait at least this long before retrying."),
    ] = None

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


ToServerMessage = Hello | RequestWork | BlobRequest | Progress | Submit | Report | Abandon | Goodbye | Keepalive
ToClientMessage = Welcome | WorkUnit | NoWork | BlobChunk | LeaseExtended | Result | ErrorMessage
Message = ToServerMessage | ToClientMessage

_TO_SERVER: Final[dict[str, type[ToServerMessage]]] = {
    cls.TYPE: cls for cls in (Hello, RequestWork, BlobRequest, Progress, Submit, Report, Abandon, Goodbye, Keepalive)
}
_TO_CLIENT: Final[dict[str, type[ToClientMessage]]] = {
    cls.TYPE: cls for cls in (Welcome, WorkUnit, NoWork, BlobChunk, LeaseExtended, Result, ErrorMessage)
}
MESSAGE_TYPES: Final[Mapping[str, type[Message]]] = {**_TO_SERVER, **_TO_CLIENT}
"""Every message class by its wire type tag."""

for _cls in MESSAGE_TYPES.values():
    check_declared(_cls)  # a field declared without bounds fails at import, not on the first frame


# --- The frame: type, v, then the message's fields ------------------------------------------------


def _frame_type(cls: type[Message]) -> type[Struct]:
    """The struct `cls` travels as: tagged `type`, then the protocol version `v`, then its own fields.

    Messages do not carry `v` themselves: an error frame reads the same whatever its version.
    """
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [("v", int)]
    for field in msgspec.structs.fields(cls):
        fields.append((field.name, field.type) if field.required else (field.name, field.type, field.default))
    return msgspec.defstruct(
        f"{cls.__name__}Frame",
        fields,
        module=__name__,
        tag_field="type",
        tag=cls.TYPE,
        frozen=True,
        forbid_unknown_fields=True,
    )


_FRAME_TYPES: Final[dict[type[Message], type[Struct]]] = {cls: _frame_type(cls) for cls in MESSAGE_TYPES.values()}
_ENVELOPE: Final = frozenset({"v"})
_READERS: Final[dict[Direction, Reader]] = {
    # msgspec picks the frame type by its tag: a union of the frame types each side receives.
    "to_server": Reader(reduce(operator.or_, (_FRAME_TYPES[cls] for cls in _TO_SERVER.values())), hidden=_ENVELOPE),
    "to_client": Reader(reduce(operator.or_, (_FRAME_TYPES[cls] for cls in _TO_CLIENT.values())), hidden=_ENVELOPE),
}
_ENCODER: Final = msgspec.msgpack.Encoder()


class _Envelope(Struct):
    """A frame read for its `type` and `v` alone: msgspec skips the other fields without building them."""

    type: Any = None
    v: Any = None


_ENVELOPE_READER: Final = Reader(_Envelope)


# --- Encoding -----------------------------------------------------------------------------------


def encode(message: Message, *, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """The frame for `message`. Raises `ProtocolError` if the peer would refuse it.

    The frame is decoded again exactly as the peer will decode it, so a sender's bug surfaces at
    the sender (`schema_violation`), and a frame over `max_bytes` is `frame_too_large`.
    """
    cls = type(message)
    frame_type = _FRAME_TYPES.get(cls)
    if frame_type is None:
        raise TypeError(f"{cls.__name__} is not a protocol message")
    try:
        data = _ENCODER.encode(frame_type(PROTOCOL_VERSION, *msgspec.structs.astuple(message)))
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as err:  # a value MessagePack cannot hold
        raise ProtocolError(ErrorCode.SCHEMA_VIOLATION, f"{cls.TYPE}: {err}", ref_type=cls.TYPE) from None
    if len(data) > max_bytes:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"The {cls.TYPE} frame is {len(data)} bytes; the limit is {max_bytes} bytes.",
            ref_type=cls.TYPE,
        )
    decode(data, direction="to_server" if cls.TYPE in _TO_SERVER else "to_client", max_bytes=len(data))
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
    scan(data if type(data) is bytes else bytes(view))
    envelope = _ENVELOPE_READER.read(view, path="frame")  # only invalid UTF-8 is left to refuse here
    tag = envelope.type
    if type(tag) is not str:
        raise _malformed("The frame has no 'type' string naming its message.")
    ref_type = tag if tag in MESSAGE_TYPES else None
    version = envelope.v
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
    try:
        frame = _READERS[direction].read(view, path=tag)
        try:
            message = cls(*msgspec.structs.astuple(frame)[1:])  # less v; runs the checks across fields
        except FieldError as err:
            raise ProtocolError(ErrorCode.SCHEMA_VIOLATION, f"{tag}.{err.field}: {err.reason}") from None
        return _check_envelope(message, version)
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


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED_FRAME, message)
