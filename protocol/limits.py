"""Every size limit and sanity range of the control channel, by name.

The message schemas in `protocol.messages` refer to these names; docs/protocol.md lists them (a
test keeps the table in step with this file). Each constant's docstring says what it bounds.
String lengths count Unicode code points; byte sizes count bytes.

Integers on the wire never exceed `MAX_SAFE_INTEGER`, so a JavaScript client reads every one exactly.
"""

from __future__ import annotations

from typing import Final

MiB: Final = 1 << 20

# --- Frames -------------------------------------------------------------------------------------

MAX_UPDATE_BYTES: Final = 64 * MiB
"""Largest encoded update a `submit` may carry; a unit's `max_update_bytes` may be lower."""

MAX_MOMENTS_BYTES: Final = 8 * MiB
"""Largest `submit.moments`; a `submit`'s `update` and `moments` together never exceed `MAX_UPDATE_BYTES`."""

FRAME_OVERHEAD_BYTES: Final = 1 * MiB
"""Room in a frame for everything besides its large binary fields (at most `MAX_UPDATE_BYTES` together)."""

MAX_FRAME_BYTES: Final = MAX_UPDATE_BYTES + FRAME_OVERHEAD_BYTES
"""Largest frame either side accepts; a coordinator may announce less in `welcome.max_frame_bytes`."""

MAX_HELLO_FRAME_BYTES: Final = 64 * 1024
"""Largest frame the coordinator accepts until a `hello` succeeded (the largest valid `hello` is
about 12 KiB); a bigger one is refused from its header with `frame_too_large`."""

MAX_FRAME_DEPTH: Final = 8
"""Deepest nesting of maps and arrays in a frame (the frame's own map is depth 1)."""

MAX_FRAME_VALUES: Final = 65_536
"""Most MessagePack values (maps, arrays, scalars, map keys included) in one frame."""

# --- Blobs --------------------------------------------------------------------------------------

MAX_BLOB_CHUNK_BYTES: Final = 4 * MiB
"""Largest `blob_request.length` and `blob_chunk.data`."""

MAX_BLOB_BYTES: Final = 1 << 40
"""Largest blob (checkpoint or data slice) a `BlobRef` may describe: 1 TiB."""

MAX_INFLIGHT_BLOB_REQUESTS: Final = 8
"""Most `blob_request` frames a volunteer may have unanswered at once."""

MAX_CHECKPOINT_DELTAS: Final = 16
"""Most entries in `work_unit.deltas`: a client this many versions behind can still skip the checkpoint."""

# --- Collections --------------------------------------------------------------------------------

MAX_INNER_STEPS: Final = 10_000
"""Most inner steps in one unit, and so most entries in `submit.metrics.losses`."""

MAX_SHARD_PARAMS: Final = 4096
"""Most parameter tensors in one unit's shard."""

MAX_TENSOR_RANK: Final = 8
"""Most dimensions of one declared tensor shape."""

MAX_TENSOR_DIM: Final = (1 << 32) - 1
"""Largest size of one dimension of a declared tensor shape (dimensions travel as uint32 in update frames)."""

MAX_DEVICES: Final = 16
"""Most compute devices a volunteer may declare."""

MAX_CODECS: Final = 32
"""Most codec names a volunteer may offer."""

MAX_CODEC_PARAMS: Final = 32
"""Most entries in a codec mapping (its name included)."""

# --- Strings ------------------------------------------------------------------------------------

MAX_ID_LEN: Final = 128
"""Longest identifier: unit, lease, campaign and volunteer ids."""

MAX_TOKEN_LEN: Final = 256
"""Longest volunteer auth token."""

MAX_KEY_LEN: Final = 64
"""Longest machine-readable key: codec names, codec parameter names, model preset names."""

MAX_NAME_LEN: Final = 128
"""Longest human-readable name: display, campaign and device names, platform, codec string values."""

MAX_VERSION_LEN: Final = 64
"""Longest client or server version string."""

MAX_PARAM_NAME_LEN: Final = 256
"""Longest parameter name in a shard (a PyTorch state-dict key)."""

MAX_TEXT_LEN: Final = 1024
"""Longest free-text field: error messages and reasons."""

MAX_URL_LEN: Final = 2048
"""Longest URL."""

# --- Numbers ------------------------------------------------------------------------------------

MAX_SAFE_INTEGER: Final = (1 << 53) - 1
"""Largest integer any field may carry (JavaScript's Number.MAX_SAFE_INTEGER)."""

MAX_SEED: Final = (1 << 32) - 1
"""Largest unit seed."""

MAX_MEMORY_BYTES: Final = 1 << 50
"""Largest memory size a volunteer may declare: 1 PiB."""

MAX_THREADS: Final = 4096
"""Most CPU threads a volunteer may declare."""

MAX_VOCAB_SIZE: Final = 1 << 24
"""Largest model vocabulary."""

MAX_MODEL_WIDTH: Final = 1 << 18
"""Largest d_model or d_ff."""

MAX_LAYERS: Final = 1024
"""Most transformer blocks (n_layer) and most attention heads (n_head)."""

MAX_SEQ_LEN: Final = 1 << 20
"""Longest sequence (max_seq_len, seq_len)."""

MAX_BATCH: Final = 1 << 16
"""Largest batch_size and grad_accum."""

MAX_ROPE_THETA: Final = 1e9
"""Largest RoPE base."""

MAX_LR: Final = 10.0
"""Largest learning rate, weight decay."""

MAX_GRAD_CLIP: Final = 1e6
"""Largest gradient-clipping norm."""

MAX_FILE_KINDS: Final = 32
"""Most file name endings a campaign on volunteers' own data may take."""

MAX_TOKENIZER_BYTES: Final = 64 * 1024 * 1024
"""Largest tokenizer file a campaign on volunteers' own data may send (the largest public tokenizer.json
files are about 20 MB); the client parses it whole."""

MAX_NOISE_MULTIPLIER: Final = 1e3
"""Largest noise multiplier a campaign may state."""

MAX_EPSILON_BUDGET: Final = 1e4
"""Largest finite ε budget a campaign may state (beyond it an ε means nothing)."""

MAX_LOSS: Final = 1e6
"""Largest loss a volunteer may report (a bigger one is treated as divergence, not as a number)."""

MAX_CREDIT: Final = 1e15
"""Largest credit in a `result` or `welcome`."""

MAX_TIMESTAMP_S: Final = 1e11
"""Latest Unix time (seconds) a deadline may name."""

MAX_DURATION_S: Final = 1e7
"""Longest duration a volunteer may report (about 115 days)."""

MAX_RETRY_AFTER_S: Final = 86_400.0
"""Longest wait a coordinator may ask for: one day."""

MIN_HEARTBEAT_INTERVAL_S: Final = 1.0
"""Shortest heartbeat interval a coordinator may ask for."""

MAX_HEARTBEAT_INTERVAL_S: Final = 3600.0
"""Longest heartbeat interval a coordinator may ask for."""

# --- Reconnection (what a well-behaved client does) ---------------------------------------------

RECONNECT_BASE_DELAY_S: Final = 1.0
"""First reconnect delay; it doubles on each failed attempt, with full jitter."""

RECONNECT_MAX_DELAY_S: Final = 300.0
"""Cap on the reconnect delay."""
