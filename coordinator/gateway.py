"""The WebSocket endpoint volunteers talk to: one connection per volunteer, binary MessagePack frames.

    app.router.add_get("/ws", volunteer_socket)

A connection starts with `hello` → `welcome` (or a fatal `error` and a close code the volunteer can
act on), then serves `request_work`, `blob_request`, `progress`, `submit`, `abandon` and `goodbye`
in any order. A frame that breaks the protocol costs its sender an `error` frame, and after too many
the connection; it never costs the server or any other volunteer anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, field

from aiohttp import WSCloseCode, WSMsgType, web

from coordinator.appkeys import METRICS, SERVICE, SOCKETS
from coordinator.blobs import BlobNotFound, sha256_hex
from coordinator.engine import Assignment, CampaignRuntime, Outcome, OutcomeStatus, SubmissionReport
from coordinator.engine import NoWork as NoWorkAnswer
from coordinator.metrics import MALFORMED_FRAME, Metrics
from coordinator.service import Coordinator, UnsupportedCodec
from coordinator.store import VolunteerRow
from protocol.codecs import CODEC_NAMES
from protocol.errors import ErrorCode, ProtocolError, close_code_for
from protocol.limits import MAX_BLOB_CHUNK_BYTES, MAX_FRAME_BYTES
from protocol.messages import (
    Abandon,
    BlobChunk,
    BlobRef,
    BlobRequest,
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
    RequestWork,
    Result,
    Submit,
    Welcome,
    WorkUnit,
    decode,
    encode,
)
from protocol.version import RELEASE_VERSION as SERVER_VERSION
from protocol.version import check_version

__all__ = ["HELLO_TIMEOUT_S", "MAX_PROTOCOL_ERRORS", "add_gateway", "volunteer_socket"]

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 15.0
MAX_PROTOCOL_ERRORS = 20
# Frames at least this large are decoded on a worker thread (copying a multi-MB update is not free).
DECODE_OFF_LOOP_BYTES = 256 * 1024


class VolunteerSocket(web.WebSocketResponse):
    """aiohttp refuses an over-sized frame by closing with 1009 and no reason; this socket sends the
    documented fatal `frame_too_large` error frame first."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed:
            refusal = ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"a frame was larger than this coordinator accepts ({MAX_FRAME_BYTES} bytes); "
                "see welcome.max_frame_bytes and the unit's max_update_bytes",
            )
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send_bytes(encode(ErrorMessage.from_error(refusal, fatal=True)))
            message = message or ErrorCode.FRAME_TOO_LARGE.value.encode()
        return await super().close(code=code, message=message, drain=drain)


@dataclass
class Session:
    ws: web.WebSocketResponse
    service: Coordinator
    metrics: Metrics
    volunteer: VolunteerRow | None = None
    source: str = ""  # the client's network prefix (coordinator.sources); "" when unknown
    memory_bytes: int = 0
    codecs: tuple[str, ...] = ()
    blobs: set[str] = field(default_factory=set)  # what this volunteer may download
    errors: int = 0


SESSIONS = web.AppKey("sessions", dict[str, Session])  # the live session of each volunteer id


def add_gateway(app: web.Application) -> None:
    app[SESSIONS] = {}
    app.router.add_get("/ws", volunteer_socket)


async def volunteer_socket(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    metrics = request.app[METRICS]
    # No permessage-deflate: updates and checkpoints are already compact binary, and zlib over a
    # 9 MB update costs half a second of CPU on each side (measured) for almost no gain.
    ws = VolunteerSocket(max_msg_size=MAX_FRAME_BYTES, heartbeat=30.0, compress=False)
    await ws.prepare(request)
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    session = Session(ws, service, metrics, source=service.config.sources.source(request.remote, forwarded))
    sockets = request.app[SOCKETS]
    sessions = request.app[SESSIONS]
    sockets.add(ws)
    metrics.connection_opened()
    try:
        if await _handshake(session, sessions):
            await _serve(session)
    except ConnectionResetError:
        pass
    finally:
        metrics.connection_closed()
        sockets.discard(ws)
        if session.volunteer is not None and sessions.get(session.volunteer.id) is session:
            del sessions[session.volunteer.id]
        if not ws.closed:
            await ws.close()
    return ws


async def _send(session: Session, message: Message) -> None:
    frame = encode(message)
    session.metrics.frame_sent(len(frame))
    await session.ws.send_bytes(frame)


async def _fail(session: Session, error: ProtocolError, *, fatal: bool, ref_id: str | None = None) -> None:
    await _send(session, ErrorMessage.from_error(error, fatal=fatal, ref_id=ref_id))
    if fatal:
        await session.ws.close(code=int(close_code_for(error.code)), message=error.code.value.encode())


async def _receive_frame(session: Session, timeout: float | None = None) -> Message | None:
    """The next well-formed frame; None when the connection ended. Bad frames are answered here."""
    while True:
        try:
            raw = await session.ws.receive(timeout=timeout)
        except TimeoutError:
            await _fail(
                session,
                ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"no hello within {HELLO_TIMEOUT_S:.0f} s of connecting"),
                fatal=True,
            )
            return None
        if raw.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return None
        if raw.type == WSMsgType.ERROR:
            # aiohttp reports an over-sized frame this way, after which the socket is unusable.
            log.info("websocket error: %s", session.ws.exception())
            return None
        size = len(raw.data) if isinstance(raw.data, bytes | str) else 0
        if raw.type != WSMsgType.BINARY:
            error = ProtocolError(ErrorCode.MALFORMED_FRAME, "frames must be binary MessagePack; got a text frame")
        else:
            try:
                if size >= DECODE_OFF_LOOP_BYTES:
                    message = await session.service.workers.run(decode, raw.data, direction="to_server")
                else:
                    message = decode(raw.data, direction="to_server")
            except ProtocolError as caught:
                error = caught
            else:
                session.metrics.frame_received(type(message).__name__, size)
                return message
        session.metrics.frame_received(MALFORMED_FRAME, size)
        session.errors += 1
        # A peer speaking another protocol version can't be understood at all: refuse it for good.
        fatal = session.errors >= MAX_PROTOCOL_ERRORS or error.code is ErrorCode.VERSION_MISMATCH
        if session.errors >= MAX_PROTOCOL_ERRORS:
            error = ProtocolError(
                error.code, f"{error.message} (too many bad frames: closing)", ref_type=error.ref_type
            )
        await _fail(session, error, fatal=fatal)
        if fatal:
            return None


async def _handshake(session: Session, sessions: dict[str, Session]) -> bool:
    message = await _receive_frame(session, timeout=HELLO_TIMEOUT_S)
    if message is None:
        return False
    if not isinstance(message, Hello):
        await _fail(session, ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "the first frame must be hello"), fatal=True)
        return False
    try:
        check_version(message.protocol_version)
    except ProtocolError as error:
        await _fail(session, error, fatal=True)
        return False
    if not set(message.capabilities.codecs) & set(CODEC_NAMES):
        no_codec = ProtocolError(
            ErrorCode.UNSUPPORTED_CODEC,
            f"this coordinator encodes updates with {', '.join(CODEC_NAMES)}; the app offered none of them. "
            "Update the app.",
        )
        await _fail(session, no_codec, fatal=True)
        return False
    service = session.service
    capabilities = {
        "devices": [
            {"kind": d.kind, "name": d.name, "memory_bytes": d.memory_bytes} for d in message.capabilities.devices
        ],
        "memory_bytes": message.capabilities.memory_bytes,
        "threads": message.capabilities.threads,
        "codecs": list(message.capabilities.codecs),
        "platform": message.capabilities.platform,
        "client_version": message.client_version,
    }
    new_token: str | None = None
    if message.token is None:
        volunteer, new_token = await service.workers.run(
            service.register_volunteer, message.name, capabilities, source=session.source
        )
    else:
        found = await service.workers.run(service.volunteer_for_token, message.token)
        if found is None:
            await _fail(
                session,
                ProtocolError(
                    ErrorCode.UNAUTHORIZED,
                    "this coordinator doesn't know your token; delete the saved credentials to register again",
                ),
                fatal=True,
            )
            return False
        volunteer = found
        await service.workers.run(
            service.store.touch_volunteer, volunteer.id, message.name, capabilities, source=session.source
        )
    if volunteer.banned:
        await _fail(
            session,
            ProtocolError(ErrorCode.BANNED, "this volunteer is banned by the coordinator's admins"),
            fatal=True,
        )
        return False
    session.volunteer = volunteer
    session.memory_bytes = message.capabilities.memory_bytes
    session.codecs = tuple(message.capabilities.codecs)
    previous = sessions.get(volunteer.id)
    sessions[volunteer.id] = session
    if previous is not None and not previous.ws.closed:
        # One live connection per volunteer: two would lease units twice over under one identity.
        replaced = ProtocolError(
            ErrorCode.SESSION_REPLACED,
            "another connection signed in with this volunteer's token, so this one was closed; "
            "is the app running twice?",
        )
        await _fail(previous, replaced, fatal=True)
    await _send(
        session,
        Welcome(
            volunteer_id=volunteer.id,
            token=new_token,
            server_version=SERVER_VERSION,
            heartbeat_interval_s=service.config.heartbeat_interval_s,
            max_frame_bytes=MAX_FRAME_BYTES,
            dashboard_url=f"{service.config.public_url}/volunteers/{volunteer.id}"
            if service.config.public_url
            else None,
            credit_total=min(volunteer.credit, 1e15),
        ),
    )
    return True


async def _serve(session: Session) -> None:
    while not session.ws.closed:
        message = await _receive_frame(session)
        if message is None:
            return
        volunteer = (
            await session.service.workers.run(session.service.store.volunteer, session.volunteer.id)
            if session.volunteer
            else None
        )
        if volunteer is None or volunteer.banned:
            await _fail(
                session,
                ProtocolError(ErrorCode.BANNED, "this volunteer was banned by the coordinator's admins"),
                fatal=True,
            )
            return
        session.volunteer = volunteer
        try:
            if isinstance(message, Goodbye):
                await session.ws.close(code=1000, message=b"goodbye")
                return
            await _dispatch(session, message)
        except ProtocolError as error:
            # Name the frame and the unit or blob it was about, so a client with several requests
            # outstanding knows which one failed.
            error.ref_type = error.ref_type or message.TYPE
            await _fail(session, error, fatal=False, ref_id=_ref_id(message))
        except Exception:  # one volunteer's bad luck must not take the server down
            log.exception("internal error serving %s", type(message).__name__)
            await _fail(
                session,
                ProtocolError(ErrorCode.INTERNAL_ERROR, "the coordinator hit an internal error; try again shortly"),
                fatal=False,
            )


async def _dispatch(session: Session, message: Message) -> None:
    service = session.service
    volunteer = session.volunteer
    assert volunteer is not None
    if isinstance(message, RequestWork):
        try:
            answer = await _assign_work(session, message)
        except UnsupportedCodec as refusal:
            await _send(
                session,
                ErrorMessage.from_error(
                    ProtocolError(ErrorCode.UNSUPPORTED_CODEC, str(refusal), ref_type=message.TYPE),
                    fatal=False,
                    retry_after_s=refusal.retry_after_s,
                ),
            )
            return
        if isinstance(answer, Assignment):
            unit = work_unit_message(answer)
            session.blobs |= {unit.checkpoint.sha256, unit.data.sha256}
            await _send(session, unit)
        else:
            await _send(session, NoWork(retry_after_s=answer.retry_after_s, reason=answer.reason))
    elif isinstance(message, BlobRequest):
        await _send(session, await service.workers.run(_blob_chunk, session, message))
    elif isinstance(message, Progress):
        runtime = await _runtime_for_unit(service, message.unit_id)
        if message.steps_total != runtime.spec.inner.steps or message.step > message.steps_total:
            raise ProtocolError(
                ErrorCode.SCHEMA_VIOLATION,
                f"progress.steps_total: this unit's recipe has {runtime.spec.inner.steps} steps, and step "
                f"({message.step}) may not exceed it; got steps_total {message.steps_total}",
            )
        extended = await service.workers.run(runtime.heartbeat, volunteer.id, message.unit_id, message.lease_id)
        if isinstance(extended, tuple):
            raise ProtocolError(ErrorCode(extended[0]), extended[1])
        await _send(
            session,
            LeaseExtended(unit_id=message.unit_id, lease_id=message.lease_id, lease_deadline=extended),
        )
    elif isinstance(message, Submit):
        await _submit(session, message)
    elif isinstance(message, Abandon):
        runtime = await _runtime_for_unit(service, message.unit_id)
        await service.workers.run_in_order(
            runtime.row.id, runtime.abandon, volunteer.id, message.unit_id, message.lease_id
        )
    else:
        raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{type(message).__name__} is not expected here")


async def _assign_work(session: Session, message: RequestWork) -> Assignment | NoWorkAnswer:
    """A unit from the first active campaign with one for this volunteer; each campaign leases in its
    own lane, where the lease is committed together with that campaign's other commits."""
    service, volunteer = session.service, session.volunteer
    assert volunteer is not None
    candidates = await service.workers.run(
        service.work_candidates, preferred=message.preferred_campaign, codecs=session.codecs
    )
    if isinstance(candidates, NoWorkAnswer):
        return candidates
    reasons = []
    for runtime in candidates:
        answer = await service.workers.commit_in_order(
            runtime.row.id,
            runtime.lease,
            volunteer.id,
            memory_bytes=session.memory_bytes,
            trust=service.trust_of(volunteer),
        )
        if isinstance(answer, Assignment):
            return answer
        reasons.append(answer)
    return min(reasons, key=lambda r: r.retry_after_s)


def _ref_id(message: Message) -> str | None:
    if isinstance(message, BlobRequest):
        return message.sha256
    unit_id = getattr(message, "unit_id", None)
    return unit_id if isinstance(unit_id, str) else None


async def _runtime_for_unit(service: Coordinator, unit_id: str) -> CampaignRuntime:
    runtime = await service.workers.run(service.runtime_for_unit, unit_id)
    if runtime is None:
        raise ProtocolError(ErrorCode.UNKNOWN_UNIT, f"no work unit {unit_id} in a running campaign")
    return runtime


async def _submit(session: Session, message: Submit) -> None:
    """Every submit is answered with a `result`; the heavy half runs on the pool, the verdict in the
    campaign's lane, so the event loop keeps serving other volunteers meanwhile."""
    volunteer = session.volunteer
    assert volunteer is not None
    service = session.service
    runtime = await service.workers.run(service.runtime_for_unit, message.unit_id)
    digest = await service.workers.run(sha256_hex, message.update)
    if runtime is None:
        outcome = Outcome(
            OutcomeStatus.REJECTED,
            ErrorCode.UNKNOWN_UNIT.value,
            f"no work unit {message.unit_id} in a running campaign",
        )
    elif digest != message.update_sha256:
        outcome = Outcome(
            OutcomeStatus.REJECTED,
            ErrorCode.CHECKSUM_MISMATCH.value,
            "the update's bytes don't match update_sha256 (corrupted on the way?); nothing was recorded: resend it",
        )
    else:
        report = SubmissionReport(
            losses=list(message.metrics.losses),
            tokens=message.metrics.tokens,
            seconds=message.metrics.seconds,
            device=message.metrics.device,
        )
        prepared = await service.workers.run(
            runtime.prepare, volunteer.id, message.unit_id, message.lease_id, message.update, sha256=digest
        )
        outcome = await service.workers.commit_in_order(
            runtime.row.id, runtime.commit, volunteer.id, message.lease_id, prepared, report
        )
        if runtime.close_due is not None:
            await service.workers.run_in_order(runtime.row.id, runtime.close_if_due)
    code = ErrorCode(outcome.code) if outcome.code else None
    if outcome.status == OutcomeStatus.DUPLICATE:
        code = ErrorCode.DUPLICATE_SUBMISSION
    await _send(
        session,
        Result(
            unit_id=message.unit_id,
            lease_id=message.lease_id,
            status=outcome.status.value,
            code=code,
            message=outcome.message,
            credit=outcome.credit,
        ),
    )


def _blob_chunk(session: Session, request: BlobRequest) -> BlobChunk:
    service = session.service
    volunteer = session.volunteer
    assert volunteer is not None
    if request.sha256 not in session.blobs and not service.volunteer_may_read(volunteer.id, request.sha256):
        raise ProtocolError(ErrorCode.BLOB_NOT_FOUND, "no such blob for you: request blobs named in your work units")
    try:
        size = service.blobs.size(request.sha256)
    except BlobNotFound:
        raise ProtocolError(ErrorCode.BLOB_NOT_FOUND, "the coordinator no longer has this blob") from None
    if request.offset > size:
        raise ProtocolError(ErrorCode.BAD_RANGE, f"offset {request.offset} is past the blob's end ({size} bytes)")
    length = min(request.length, MAX_BLOB_CHUNK_BYTES, size - request.offset)
    data = service.blobs.read(request.sha256, request.offset, length)
    return BlobChunk(sha256=request.sha256, offset=request.offset, total_size=size, data=data)


def work_unit_message(a: Assignment) -> WorkUnit:
    return WorkUnit(
        unit_id=a.unit.id,
        lease_id=a.lease_id,
        lease_deadline=a.lease_deadline,
        campaign_id=str(a.campaign.id),
        campaign_name=a.campaign.name,
        model_version=a.unit.version,
        model=ModelSpec(preset=a.spec.model, config=ModelConfig(**dataclasses.asdict(a.model_config))),
        checkpoint=BlobRef(sha256=a.checkpoint.checkpoint_sha, size=a.checkpoint.checkpoint_size),
        checkpoint_format="safetensors",
        data=BlobRef(sha256=a.unit.data_sha, size=a.data_size),
        data_dtype=a.data_dtype,  # type: ignore[arg-type]
        data_tokens=a.unit.data_tokens,
        shard=tuple(a.unit.shard),
        shard_shapes=a.shard_shapes,
        recipe=InnerRecipe(**dataclasses.asdict(a.inner), global_step=a.global_step),
        seed=a.unit.seed,
        codec=a.spec.codec.to_dict(),  # type: ignore[arg-type]
        max_update_bytes=a.max_update_bytes,
    )
