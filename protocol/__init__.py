"""The wire contract between the coordinator and volunteers; imports nothing else of ours.

    >>> from protocol import Goodbye, decode, encode
    >>> decode(encode(Goodbye(reason="user quit")), direction="to_server")
    Goodbye(reason='user quit')

Control channel: `messages` (one msgspec Struct per frame type, `encode` / `decode`), `frame_scan`
(the pre-scan of raw frame bytes), `field_rules` (the rules msgspec cannot state, and how refusals
are worded), `errors` (error codes, `ProtocolError`, close codes), `limits` (every size limit),
`version` (the protocol version and compatibility rule; the release version peers report).
docs/protocol.md is the spec.
Tensor frames: `codecs` (`encode` / `decode` of named tensors; byte format in codecs/frame.py) and `tensors`.
"""

from __future__ import annotations

from protocol.errors import UPDATE_REJECTIONS, CloseCode, ErrorCode, ProtocolError, close_code_for
from protocol.messages import (
    MESSAGE_TYPES,
    Abandon,
    BlobChunk,
    BlobRef,
    BlobRequest,
    Capabilities,
    CheckpointDelta,
    Device,
    Direction,
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
    Report,
    RequestWork,
    Result,
    Submit,
    ToClientMessage,
    ToServerMessage,
    TrainMetrics,
    Welcome,
    WorkUnit,
    decode,
    encode,
)
from protocol.version import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    RELEASE_VERSION,
    SUPPORTED_PROTOCOL_VERSIONS,
    check_version,
    is_supported,
)

# --- Tensor codecs (protocol/codecs/, protocol/tensors.py) --------------------------------------
# Reserved for the codecs' exports. Their encode/decode clash with the message encode/decode
# above, so re-export them under distinct names (or leave them at protocol.codecs), and extend
# __all__ below.

__all__ = [
    "MESSAGE_TYPES",
    "MIN_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "RELEASE_VERSION",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "UPDATE_REJECTIONS",
    "Abandon",
    "BlobChunk",
    "BlobRef",
    "BlobRequest",
    "Capabilities",
    "CheckpointDelta",
    "CloseCode",
    "Device",
    "Direction",
    "ErrorCode",
    "ErrorMessage",
    "Goodbye",
    "Hello",
    "InnerRecipe",
    "Keepalive",
    "LeaseExtended",
    "Message",
    "ModelConfig",
    "ModelSpec",
    "NoWork",
    "PrivateRecipe",
    "Progress",
    "ProtocolError",
    "Report",
    "RequestWork",
    "Result",
    "Submit",
    "ToClientMessage",
    "ToServerMessage",
    "TrainMetrics",
    "Welcome",
    "WorkUnit",
    "check_version",
    "close_code_for",
    "decode",
    "encode",
    "is_supported",
]
