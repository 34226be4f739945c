"""Error codes of the control channel, the exception that carries them, and WebSocket close codes.

Every refusal on the wire names an `ErrorCode`: in an `error` frame (the frame was refused) or in a
`result` frame (an update was rejected). Codes are stable strings; the one-line descriptions here
are what docs/protocol.md and the volunteer UI show.

    >>> err = ProtocolError(ErrorCode.LEASE_EXPIRED, "Lease l-7 ended at 12:00; the unit was reissued.")
    >>> str(err)
    'lease_expired: Lease l-7 ended at 12:00; the unit was reissued.'
    >>> err.code.description
    "The lease's deadline passed; the unit has been or will be reissued."
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """Why a frame was refused or an update rejected. The value is what travels on the wire."""

    # The frame itself.
    MALFORMED_FRAME = "malformed_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_TYPE = "unknown_type"
    SCHEMA_VIOLATION = "schema_violation"
    VERSION_MISMATCH = "version_mismatch"
    UNEXPECTED_MESSAGE = "unexpected_message"
    IDLE_TIMEOUT = "idle_timeout"
    # Who is asking.
    UNAUTHORIZED = "unauthorized"
    BANNED = "banned"
    SESSION_REPLACED = "session_replaced"
    UNSUPPORTED_CODEC = "unsupported_codec"
    # Units, leases and blobs.
    UNKNOWN_UNIT = "unknown_unit"
    LEASE_EXPIRED = "lease_expired"
    NOT_YOUR_LEASE = "not_your_lease"
    DUPLICATE_SUBMISSION = "duplicate_submission"
    BLOB_NOT_FOUND = "blob_not_found"
    BAD_RANGE = "bad_range"
    # The coordinator.
    RATE_LIMITED = "rate_limited"
    SERVER_SHUTTING_DOWN = "server_shutting_down"
    INTERNAL_ERROR = "internal_error"
    # Update rejections, cheapest check first (the order validation runs in).
    UPDATE_TOO_LARGE = "update_too_large"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    BAD_ENCODING = "bad_encoding"
    SHAPE_MISMATCH = "shape_mismatch"
    NON_FINITE = "non_finite"
    NORM_OUTLIER = "norm_outlier"
    DIRECTION_OUTLIER = "direction_outlier"
    IMPLAUSIBLE_LOSS = "implausible_loss"
    REPLICATION_MISMATCH = "replication_mismatch"
    HOLDOUT_REGRESSION = "holdout_regression"
    NOT_FROM_UNIT = "not_from_unit"
    STALE_UPDATE = "stale_update"
    CAMPAIGN_CLOSED = "campaign_closed"
    INCONCLUSIVE = "inconclusive"

    @property
    def description(self) -> str:
        """One sentence saying what went wrong, for docs and UIs."""
        return _DESCRIPTIONS[self]

    @property
    def rejects_update(self) -> bool:
        """Whether this code is a verdict of update validation (as opposed to a frame or lease problem)."""
        return self in UPDATE_REJECTIONS


_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.MALFORMED_FRAME: (
        "The frame is not a MessagePack map of this protocol: a text frame, truncated or trailing "
        "bytes, an extension type, a duplicate key, nesting too deep, too many values, or no type or v."
    ),
    ErrorCode.FRAME_TOO_LARGE: "The frame is larger than the receiver accepts (see welcome.max_frame_bytes).",
    ErrorCode.UNKNOWN_TYPE: "The frame's type tag is not a message this side of the connection accepts.",
    ErrorCode.SCHEMA_VIOLATION: (
        "A field is missing, unknown, of the wrong type or out of bounds; the message names the field."
    ),
    ErrorCode.VERSION_MISMATCH: (
        "The peer speaks a protocol version this side does not support; update the app (or the coordinator)."
    ),
    ErrorCode.UNEXPECTED_MESSAGE: (
        "A well-formed message arrived at the wrong moment, such as request_work before hello."
    ),
    ErrorCode.IDLE_TIMEOUT: (
        "The connection sent no hello in time, or nothing at all for too long; send a frame (keepalive when "
        "there is nothing else) at least every welcome.heartbeat_interval_s, and reconnect."
    ),
    ErrorCode.UNAUTHORIZED: ("The token is unknown or revoked; register again by sending hello with a null token."),
    ErrorCode.BANNED: "The coordinator's admins have banned this volunteer; it must not reconnect.",
    ErrorCode.SESSION_REPLACED: ("A newer connection presented the same token, so this older connection was closed."),
    ErrorCode.UNSUPPORTED_CODEC: "None of the codecs the volunteer offered is acceptable to the coordinator.",
    ErrorCode.UNKNOWN_UNIT: "The unit_id does not name a work unit the coordinator knows.",
    ErrorCode.LEASE_EXPIRED: "The lease's deadline passed; the unit has been or will be reissued.",
    ErrorCode.NOT_YOUR_LEASE: (
        "This volunteer holds no such lease on the unit: it belongs to another volunteer, was replaced by a "
        "newer lease, or was never granted."
    ),
    ErrorCode.DUPLICATE_SUBMISSION: (
        "An update was already recorded under this lease; the coordinator kept the first one."
    ),
    ErrorCode.BLOB_NOT_FOUND: "The coordinator has no blob with this sha256.",
    ErrorCode.BAD_RANGE: "The requested offset lies beyond the end of the blob.",
    ErrorCode.RATE_LIMITED: "Too many frames or requests; wait retry_after_s seconds before trying again.",
    ErrorCode.SERVER_SHUTTING_DOWN: (
        "The coordinator is shutting down, or the campaign is moving to another of its replicas; reconnect with "
        "backoff."
    ),
    ErrorCode.INTERNAL_ERROR: (
        "The coordinator failed while handling the frame; nothing was recorded, so retrying is safe."
    ),
    ErrorCode.UPDATE_TOO_LARGE: "The update is larger than the unit's max_update_bytes.",
    ErrorCode.CHECKSUM_MISMATCH: "update_sha256 is not the SHA-256 of the update bytes.",
    ErrorCode.BAD_ENCODING: "The update bytes do not decode with the unit's codec.",
    ErrorCode.SHAPE_MISMATCH: "The decoded update's tensors do not match the unit's shard and shard_shapes.",
    ErrorCode.NON_FINITE: "The update contains NaN or infinite values.",
    ErrorCode.NORM_OUTLIER: (
        "The update's norm lies outside the robust bounds of accepted updates (of the campaign's recent "
        "ones, and of those trained from the same model version)."
    ),
    ErrorCode.DIRECTION_OUTLIER: "The update's direction disagrees with the cohort of updates for the round.",
    ErrorCode.IMPLAUSIBLE_LOSS: (
        "The reported losses don't fit this unit and update: the first differs from the coordinator's "
        "own measurement, or the trained model does worse on the unit's batches than reported."
    ),
    ErrorCode.REPLICATION_MISMATCH: (
        "Another volunteer computed the same unit, the two updates differ beyond tolerance, and the "
        "coordinator's own measurements can't tell which is right."
    ),
    ErrorCode.HOLDOUT_REGRESSION: (
        "A small step along the update raises the holdout loss by more than the tolerance: it does not "
        "point downhill (a flipped or random update)."
    ),
    ErrorCode.NOT_FROM_UNIT: (
        "The update helps the unit's own batches no more than the tokens beside them, and an unrelated "
        "volunteer's replica disagrees: not trained on this unit (replayed, copied, or untrained)."
    ),
    ErrorCode.STALE_UPDATE: "The update was computed against a model version too old to use.",
    ErrorCode.CAMPAIGN_CLOSED: "The campaign finished or was stopped before the update could be used.",
    ErrorCode.INCONCLUSIVE: (
        "The update and its replica agree, but neither shows it was trained on this unit's data: no "
        "credit, and no mark against the volunteer."
    ),
}

UPDATE_REJECTIONS: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.UPDATE_TOO_LARGE,
        ErrorCode.CHECKSUM_MISMATCH,
        ErrorCode.BAD_ENCODING,
        ErrorCode.SHAPE_MISMATCH,
        ErrorCode.NON_FINITE,
        ErrorCode.NORM_OUTLIER,
        ErrorCode.DIRECTION_OUTLIER,
        ErrorCode.IMPLAUSIBLE_LOSS,
        ErrorCode.REPLICATION_MISMATCH,
        ErrorCode.HOLDOUT_REGRESSION,
        ErrorCode.NOT_FROM_UNIT,
        ErrorCode.STALE_UPDATE,
        ErrorCode.CAMPAIGN_CLOSED,
        ErrorCode.INCONCLUSIVE,
    }
)
"""The verdicts of update validation. A `result` may also carry a lease or unit code (lease_expired, ...)."""


class CloseCode(IntEnum):
    """WebSocket close codes the coordinator uses (RFC 6455 section 7.4).

    The application codes are 4000 plus the HTTP status that means the same thing, so a client can
    decide whether to reconnect from the close code alone.
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    UNAUTHORIZED = 4401
    BANNED = 4403
    IDLE_TIMEOUT = 4408
    SESSION_REPLACED = 4409
    VERSION_MISMATCH = 4426
    RATE_LIMITED = 4429


_CLOSE_CODES: dict[ErrorCode, CloseCode] = {
    ErrorCode.FRAME_TOO_LARGE: CloseCode.MESSAGE_TOO_BIG,
    ErrorCode.VERSION_MISMATCH: CloseCode.VERSION_MISMATCH,
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
    ErrorCode.BANNED: CloseCode.BANNED,
    ErrorCode.IDLE_TIMEOUT: CloseCode.IDLE_TIMEOUT,
    ErrorCode.SESSION_REPLACED: CloseCode.SESSION_REPLACED,
    ErrorCode.RATE_LIMITED: CloseCode.RATE_LIMITED,
    ErrorCode.SERVER_SHUTTING_DOWN: CloseCode.GOING_AWAY,
    ErrorCode.INTERNAL_ERROR: CloseCode.INTERNAL_ERROR,
}


def close_code_for(code: ErrorCode) -> CloseCode:
    """The close code that follows a fatal `error` frame carrying `code` (1008 unless more specific)."""
    return _CLOSE_CODES.get(code, CloseCode.POLICY_VIOLATION)


class ProtocolError(Exception):
    """A frame or message that breaks the contract, with a code and a sentence a person can act on.

    `ref_type` is the type tag of the offending frame when it could be read, so the receiver can
    echo it in the `error` frame it sends back.
    """

    def __init__(self, code: ErrorCode, message: str, *, ref_type: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.ref_type = ref_type

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive the default exception pickling, and a worker's
        # child process may hand this error to its parent.
        return (_rebuild, (self.code, self.message, self.ref_type))


def _rebuild(code: ErrorCode, message: str, ref_type: str | None) -> ProtocolError:
    return ProtocolError(code, message, ref_type=ref_type)
