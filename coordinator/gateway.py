"""The WebSocket endpoint volunteers talk to: one connection per volunteer, binary MessagePack frames.

    app.router.add_get("/ws", volunteer_socket)

A connection starts with `hello` → `welcome` (or a fatal `error` and a close code the volunteer can
act on), then serves `request_work`, `blob_request`, `progress`, `submit`, `abandon`, `keepalive`
and `goodbye` in any order. A frame that breaks the protocol costs its sender an `error` frame, and
after too many the connection; it never costs the server or any other volunteer anything.

Strangers are cheap to be, so until its `hello` succeeded a connection may send only small frames
(coordinator.volunteer_socket), must say hello within `HELLO_TIMEOUT_S`, and must come from a source
that is neither banned nor over its limits (coordinator.admission); after it, a connection that
sends nothing for `idle_timeout_s` is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import WSMessage, WSMsgType, web

from coordinator.appkeys import METRICS, SERVICE, SOCKETS
from coordinator.engine import Assignment, CampaignRuntime, Outcome, OutcomeStatus, SubmissionReport
from coordinator.engine import NoWork as NoWorkAnswer
from coordinator.evaluations import EvalLease
from coordinator.forwarding import FORWARDER, Forwarder
from coordinator.graphs import GraphBlob
from coordinator.metrics import MALFORMED_FRAME, Metrics
from coordinator.replicas import FollowerRuntime, LeaderUnavailable, Served
from coordinator.service import Coordinator, UnsupportedCodec
from coordinator.store import LeaseLost, VolunteerRow
from coordinator.store.blobs import BlobNotFound, sha256_hex
from coordinator.volunteer_socket import VolunteerSocket
from protocol.codecs import CODEC_NAMES
from protocol.errors import ErrorCode, ProtocolError, close_code_for
from protocol.limits import MAX_BLOB_CHUNK_BYTES, MAX_FRAME_BYTES, MAX_RETRY_AFTER_S
from protocol.messages import (
    Abandon,
    BlobChunk,
    BlobRef,
    BlobRequest,
    CheckpointDelta,
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
    Welcome,
    WorkUnit,
    decode,
    encode,
)
from protocol.version import RELEASE_VERSION as SERVER_VERSION
from protocol.version import check_version

__all__ = [
    "HELLO_TIMEOUT_S",
    "MAX_PROTOCOL_ERRORS",
    "SESSIONS",
    "Session",
    "Sessions",
    "add_gateway",
    "volunteer_socket",
]

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 15.0
MAX_PROTOCOL_ERRORS = 20
# Frames at least this large are decoded on a worker thread (copying a multi-MB update is not free).
DECODE_OFF_LOOP_BYTES = 256 * 1024
# How long a volunteer refused for a crowded source waits before trying again.
CROWDED_RETRY_S = 60.0
FORWARD_KINDS = ("evaluate", "check")  # unit kinds the evaluation desk serves (forward passes only)
SEEN_EVERY_S = 60.0  # a connected volunteer's last_seen is written at most this often (its account page reads it)
PAUSED = "this machine is paused from its account (resume it on the dashboard's My machines page)"
PAUSED_RETRY_S = 30.0
DECLINED_S = 3600.0  # a private campaign a volunteer gave back by its owner's choice is not offered again for this long


@dataclass
class Session:
    ws: VolunteerSocket
    service: Coordinator
    metrics: Metrics
    volunteer: VolunteerRow | None = None
    source: str = ""  # the client's network prefix (coordinator.sources); "" when unknown
    memory_bytes: int = 0
    codecs: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ("torch",)  # preferred first, as hello listed them
    unit_kinds: tuple[str, ...] = ("train",)
    own_data: bool = False  # the owner chose files for campaigns on volunteers' own data
    declined: dict[int, float] = field(default_factory=dict)  # private campaign id → monotonic time to ask again
    blobs: set[str] = field(default_factory=set)  # what this volunteer may download
    errors: int = 0
    connected_at: float = field(default_factory=time.monotonic)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # a held request_work answers from its own task
    held: asyncio.Task[None] | None = None  # the request_work waiting for a campaign to open, if any
    campaigns: CampaignSignal | None = None
    forwarder: Forwarder | None = None  # to the leaders of campaigns another replica leads
    seen_noted: float = field(default_factory=time.monotonic)  # when last_seen was last written (hello writes it)

    def leader(self) -> Forwarder:
        assert self.forwarder is not None, "a follower campaign without replicas"
        return self.forwarder


class Sessions:
    """The live, welcomed session of each volunteer (one at a time), and how many each source has."""

    def __init__(self) -> None:
        self._by_volunteer: dict[str, Session] = {}
        self._per_source: Counter[str] = Counter()

    def get(self, volunteer_id: str) -> Session | None:
        return self._by_volunteer.get(volunteer_id)

    def __len__(self) -> int:
        return len(self._by_volunteer)

    def connected_from(self, source: str, *, besides: str | None = None) -> int:
        """Volunteers connected from `source`, not counting volunteer `besides`."""
        count = self._per_source[source]
        other = self._by_volunteer.get(besides) if besides is not None else None
        return count - 1 if other is not None and other.source == source else count

    def add(self, session: Session) -> Session | None:
        """Make `session` its volunteer's live one; the one it replaces, if any."""
        assert session.volunteer is not None
        previous = self._by_volunteer.get(session.volunteer.id)
        if previous is not None:
            self._forget(previous.source)
        self._by_volunteer[session.volunteer.id] = session
        self._per_source[session.source] += 1
        return previous

    def remove(self, session: Session) -> None:
        """Forget `session` if it is still its volunteer's live one."""
        if session.volunteer is not None and self._by_volunteer.get(session.volunteer.id) is session:
            del self._by_volunteer[session.volunteer.id]
            self._forget(session.source)

    def _forget(self, source: str) -> None:
        self._per_source[source] -= 1
        if self._per_source[source] <= 0:
            del self._per_source[source]


class CampaignSignal:
    """Wakes the `request_work`s held while no campaign is training, the moment one starts or resumes.

    Without it every volunteer sleeps out its `retry_after_s` while a client that ignores it polls,
    and takes all of a new campaign's first units (seen in bench adversarial: attackers polling every
    5 s submitted the first 20 updates, and their norms set the cohort). Held requests wake in the
    order they arrived.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, service: Coordinator) -> None:
        """Listen to `service` from the running loop (its listeners are called from any thread)."""
        self._loop = asyncio.get_running_loop()
        service.campaign_listeners.append(self.notify)

    def notify(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """Whether a campaign opened within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True


SESSIONS = web.AppKey("sessions", Sessions)
CAMPAIGN_SIGNAL = web.AppKey("campaign_signal", CampaignSignal)


def add_gateway(app: web.Application) -> None:
    app[SESSIONS] = Sessions()
    app[CAMPAIGN_SIGNAL] = CampaignSignal()
    app.router.add_get("/ws", volunteer_socket)
    app.on_startup.append(_bind_signal)


async def _bind_signal(app: web.Application) -> None:
    app[CAMPAIGN_SIGNAL].bind(app[SERVICE])


async def volunteer_socket(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    metrics = request.app[METRICS]
    # No permessage-deflate: updates and checkpoints are already compact binary, and zlib over a
    # 9 MB update costs half a second of CPU on each side (measured) for almost no gain.
    ws = VolunteerSocket(heartbeat=30.0)
    await ws.prepare(request)
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    session = Session(
        ws,
        service,
        metrics,
        source=service.config.sources.source(request.remote, forwarded),
        campaigns=request.app[CAMPAIGN_SIGNAL],
        forwarder=request.app.get(FORWARDER),
    )
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
        if session.held is not None:
            session.held.cancel()
        metrics.connection_closed()
        sockets.discard(ws)
        sessions.remove(session)
        if session.volunteer is not None and "evaluate" in session.unit_kinds:
            service.evaluations.evaluator_left()
        if session.volunteer is not None and "check" in session.unit_kinds:
            service.evaluations.checker_left(session.source)
        if not ws.closed:
            await ws.close()
    return ws


async def _send(session: Session, message: Message) -> None:
    frame = encode(message)
    session.metrics.frame_sent(len(frame))
    async with session.send_lock:
        await session.ws.send_bytes(frame)


async def _fail(
    session: Session,
    error: ProtocolError,
    *,
    fatal: bool,
    ref_id: str | None = None,
    retry_after_s: float | None = None,
) -> None:
    await _send(session, ErrorMessage.from_error(error, fatal=fatal, ref_id=ref_id, retry_after_s=retry_after_s))
    if fatal:
        await session.ws.close(code=int(close_code_for(error.code)), message=error.code.value.encode())


async def _receive(session: Session, *, hello: bool) -> WSMessage | None:
    """The next WebSocket message; None once a connection that kept silent too long is closed
    (no hello within HELLO_TIMEOUT_S of connecting, or no data for idle_timeout_s after it)."""
    ws, config = session.ws, session.service.config
    while True:
        if hello:
            left = HELLO_TIMEOUT_S - (time.monotonic() - session.connected_at)
        else:
            left = config.idle_timeout_s - ws.silent_for()
        if left <= 0:
            break
        try:
            # Not receive(timeout=...): aiohttp restarts that timeout on every ping it answers, so a
            # peer that only pings would never time out.
            async with asyncio.timeout(left):
                return await ws.receive()
        except TimeoutError:
            continue  # data may have arrived meanwhile (a large frame on its way): look again
    if hello:
        reason = f"no hello within {HELLO_TIMEOUT_S:.0f} s of connecting"
    else:
        reason = (
            f"nothing received for {config.idle_timeout_s:.0f} s; a volunteer sends a frame at least every "
            f"heartbeat_interval_s ({config.heartbeat_interval_s:g} s), keepalive when it has nothing else to say"
        )
    await _fail(session, ProtocolError(ErrorCode.IDLE_TIMEOUT, reason), fatal=True)
    return None


async def _receive_frame(session: Session, *, hello: bool = False) -> Message | None:
    """The next well-formed frame; None when the connection ended. Bad frames are answered here."""
    while True:
        raw = await _receive(session, hello=hello)
        if raw is None:
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


async def _handshake(session: Session, sessions: Sessions) -> bool:
    message = await _receive_frame(session, hello=True)
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
    limited = not service.config.sources.exempt(session.source)
    if limited and await service.workers.run(service.source_banned, session.source):
        await _fail(session, _network_banned(session), fatal=True)
        return False
    capabilities = {
        "devices": [
            {"kind": d.kind, "name": d.name, "memory_bytes": d.memory_bytes} for d in message.capabilities.devices
        ],
        "memory_bytes": message.capabilities.memory_bytes,
        "threads": message.capabilities.threads,
        "codecs": list(message.capabilities.codecs),
        "platform": message.capabilities.platform,
        "runtimes": list(message.capabilities.runtimes),
        "unit_kinds": list(message.capabilities.unit_kinds),
        "client_version": message.client_version,
    }
    new_token: str | None = None
    if message.token is None:
        if limited and not await _admit_registration(session, sessions):
            return False
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
    if limited and message.token is not None and _crowded(session, sessions, volunteer.id):
        await _fail(session, _crowd_refusal(session), fatal=True, retry_after_s=CROWDED_RETRY_S)
        return False
    session.volunteer = volunteer
    session.memory_bytes = message.capabilities.memory_bytes
    session.codecs = tuple(message.capabilities.codecs)
    session.runtimes = tuple(message.capabilities.runtimes)
    session.unit_kinds = tuple(message.capabilities.unit_kinds)
    session.own_data = message.capabilities.own_data
    if "evaluate" in session.unit_kinds:
        service.evaluations.evaluator_joined()
    if "check" in session.unit_kinds:
        service.evaluations.checker_joined(session.source)
    previous = sessions.add(session)
    if previous is not None and not previous.ws.closed:
        # One live connection per volunteer: two would lease units twice over under one identity.
        replaced = ProtocolError(
            ErrorCode.SESSION_REPLACED,
            "another connection signed in with this volunteer's token, so this one was closed; "
            "is the app running twice?",
        )
        await _fail(previous, replaced, fatal=True)
    session.ws.open_frames()  # before welcome: the volunteer may send a large frame right after it
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


def _crowded(session: Session, sessions: Sessions, volunteer_id: str | None) -> bool:
    cap = session.service.config.admission.max_connected_per_source
    return cap > 0 and sessions.connected_from(session.source, besides=volunteer_id) >= cap


def _crowd_refusal(session: Session) -> ProtocolError:
    cap = session.service.config.admission.max_connected_per_source
    return ProtocolError(
        ErrorCode.RATE_LIMITED,
        f"{cap} volunteers from your network ({session.source}) are connected already, the most this "
        f"coordinator takes at once; try again in {CROWDED_RETRY_S:.0f} s",
    )


async def _admit_registration(session: Session, sessions: Sessions) -> bool:
    """Whether a new identity may register from this session's source now; refuses it otherwise."""
    if _crowded(session, sessions, None):
        await _fail(session, _crowd_refusal(session), fatal=True, retry_after_s=CROWDED_RETRY_S)
        return False
    wait = session.service.registration_wait(session.source)
    if wait <= 0:
        return True
    retry = min(float(math.ceil(wait)), MAX_RETRY_AFTER_S)
    refusal = ProtocolError(
        ErrorCode.RATE_LIMITED,
        f"too many new volunteers registered from your network ({session.source}) lately; try again in {retry:.0f} s",
    )
    await _fail(session, refusal, fatal=True, retry_after_s=retry)
    return False


def _network_banned(session: Session) -> ProtocolError:
    return ProtocolError(
        ErrorCode.BANNED,
        f"volunteers from your network ({session.source}) are banned by the coordinator's admins; "
        "ask them if you think this is a mistake",
    )


def _standing(service: Coordinator, volunteer_id: str, source: str, *, seen: bool) -> tuple[VolunteerRow | None, bool]:
    """The volunteer's row now, and whether its source is banned; `seen`: note it was heard from now."""
    if seen:
        service.store.touch_seen(volunteer_id)
    return service.store.volunteer(volunteer_id), service.source_banned(source)


async def _serve(session: Session) -> None:
    service = session.service
    while not session.ws.closed:
        message = await _receive_frame(session)
        if message is None:
            return
        assert session.volunteer is not None
        seen = time.monotonic() - session.seen_noted >= SEEN_EVERY_S
        if seen:
            session.seen_noted = time.monotonic()
        if isinstance(message, Keepalive):
            # It was heard, and the socket noted when; no reply, and no store read but last_seen's, now and then.
            if seen:
                await service.workers.run(service.store.touch_seen, session.volunteer.id)
            continue
        volunteer, network_banned = await service.workers.run(
            _standing, service, session.volunteer.id, session.source, seen=seen
        )
        if volunteer is None or volunteer.banned or network_banned:
            refusal = (
                _network_banned(session)
                if volunteer is not None and not volunteer.banned
                else ProtocolError(ErrorCode.BANNED, "this volunteer was banned by the coordinator's admins")
            )
            await _fail(session, refusal, fatal=True)
            return
        session.volunteer = volunteer
        try:
            if isinstance(message, Goodbye):
                await session.ws.close(code=1000, message=b"goodbye")
                return
            await _dispatch(session, message)
        except (LeaderUnavailable, LeaseLost) as moved:
            # The campaign is changing hands between replicas: reconnect, and resend what wasn't acknowledged.
            log.info("asking a volunteer to reconnect: %s", moved)
            reason = "the campaign is moving to another coordinator replica; reconnect and resend"
            await _fail(session, ProtocolError(ErrorCode.SERVER_SHUTTING_DOWN, reason), fatal=True)
            return
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
    if volunteer.paused and isinstance(message, RequestWork):
        await _send(session, NoWork(retry_after_s=PAUSED_RETRY_S, reason=PAUSED))
        return
    if volunteer.paused and isinstance(message, Progress):
        await _abandon(session, message.unit_id, message.lease_id)
        raise ProtocolError(ErrorCode.NOT_YOUR_LEASE, f"{PAUSED}: the unit was given back to the campaign")
    if isinstance(message, RequestWork):
        try:
            answer = await _assign_work(session, message)
        except UnsupportedCodec as refusal:
            await _refuse_codec(session, refusal)
            return
        held = session.held is not None and not session.held.done()
        if isinstance(answer, NoWorkAnswer) and answer.no_campaign and service.config.work_hold_s > 0 and not held:
            session.held = asyncio.create_task(_hold(session, message, answer))
            return
        await _answer_request(session, answer)
    elif isinstance(message, BlobRequest):
        await _send(session, await service.workers.run(_blob_chunk, session, message))
    elif isinstance(message, Progress) and service.evaluations.is_unit(message.unit_id):
        deadline = await service.workers.run(
            service.evaluations.heartbeat, volunteer.id, message.unit_id, message.lease_id
        )
        if isinstance(deadline, tuple):
            raise ProtocolError(ErrorCode(deadline[0]), deadline[1])
        await _send(session, LeaseExtended(unit_id=message.unit_id, lease_id=message.lease_id, lease_deadline=deadline))
    elif isinstance(message, Report):
        outcome = await service.workers.run(
            service.evaluations.report, volunteer.id, message.unit_id, message.lease_id, message.losses
        )
        await _send(session, _result(message.unit_id, message.lease_id, outcome))
    elif isinstance(message, Progress):
        runtime = await _runtime_for_unit(service, message.unit_id)
        if message.steps_total != runtime.spec.inner.steps or message.step > message.steps_total:
            raise ProtocolError(
                ErrorCode.SCHEMA_VIOLATION,
                f"progress.steps_total: this unit's recipe has {runtime.spec.inner.steps} steps, and step "
                f"({message.step}) may not exceed it; got steps_total {message.steps_total}",
            )
        if isinstance(runtime, FollowerRuntime):
            extended = await session.leader().heartbeat(
                runtime, volunteer.id, message.unit_id, message.lease_id, message.step
            )
        else:
            extended = await service.workers.run(
                runtime.heartbeat, volunteer.id, message.unit_id, message.lease_id, step=message.step
            )
        if isinstance(extended, tuple):
            raise ProtocolError(ErrorCode(extended[0]), extended[1])
        await _send(
            session,
            LeaseExtended(unit_id=message.unit_id, lease_id=message.lease_id, lease_deadline=extended),
        )
    elif isinstance(message, Submit):
        await _submit(session, message)
    elif isinstance(message, Abandon):
        await _abandon(session, message.unit_id, message.lease_id, message.reason)
    else:
        raise ProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{type(message).__name__} is not expected here")


async def _abandon(session: Session, unit_id: str, lease_id: str, reason: str = "user_request") -> None:
    """Give a leased unit (or a measurement) back on the volunteer's behalf, so it is reissued now. A unit on
    the volunteer's own files given back by the owner's choice (`user_request`: its privacy budget is spent,
    or the campaign asks more than the owner allows) means no more of that campaign on this connection for
    DECLINED_S, rather than a unit offered and given back at every request."""
    service = session.service
    assert session.volunteer is not None
    volunteer_id = session.volunteer.id
    if service.evaluations.is_unit(unit_id):
        await service.workers.run(service.evaluations.abandon, volunteer_id, unit_id, lease_id)
        return
    runtime = await _runtime_for_unit(service, unit_id)
    if runtime.spec.private and reason == "user_request":
        session.declined[runtime.row.id] = time.monotonic() + DECLINED_S
    if isinstance(runtime, FollowerRuntime):
        await session.leader().abandon(runtime, volunteer_id, unit_id, lease_id)
    else:
        await service.workers.run_in_order(runtime.row.id, runtime.abandon, volunteer_id, unit_id, lease_id)


async def _refuse_codec(session: Session, refusal: UnsupportedCodec) -> None:
    error = ProtocolError(ErrorCode.UNSUPPORTED_CODEC, str(refusal), ref_type=RequestWork.TYPE)
    await _send(session, ErrorMessage.from_error(error, fatal=False, retry_after_s=refusal.retry_after_s))


async def _answer_request(session: Session, answer: Assignment | Evaluation | NoWorkAnswer) -> None:
    if isinstance(answer, NoWorkAnswer):
        await _send(session, NoWork(retry_after_s=answer.retry_after_s, reason=answer.reason))
        return
    if isinstance(answer, Evaluation):
        unit = evaluate_unit_message(answer, session.service.config.eval_batch)
    else:
        unit = work_unit_message(answer)
    tokenizer = unit.private.tokenizer if unit.private is not None else None
    refs = (unit.checkpoint, unit.data, unit.graph, unit.moments, tokenizer)
    session.blobs |= {ref.sha256 for ref in refs if ref is not None}
    session.blobs |= {step.delta.sha256 for step in unit.deltas}
    await _send(session, unit)


async def _hold(session: Session, message: RequestWork, idle: NoWorkAnswer) -> None:
    """Answer a request_work made while no campaign is training when one opens, or after the
    coordinator's `work_hold_s` with `no_work` saying how much of its usual wait is left — none, by
    default (the session reads frames meanwhile)."""
    began = time.monotonic()
    try:
        assert session.campaigns is not None
        answer: Assignment | Evaluation | NoWorkAnswer
        if await session.campaigns.wait(min(session.service.config.work_hold_s, idle.retry_after_s)):
            assert session.volunteer is not None
            now = await session.service.workers.run(session.service.store.volunteer, session.volunteer.id)
            if now is not None and now.paused:  # paused from its account while the request was held
                answer = NoWorkAnswer(PAUSED, retry_after_s=PAUSED_RETRY_S)
            else:
                answer = await _assign_work(session, message)
        else:
            answer = NoWorkAnswer(idle.reason, retry_after_s=max(0.0, idle.retry_after_s - (time.monotonic() - began)))
        await _answer_request(session, answer)
    except UnsupportedCodec as refusal:
        await _refuse_codec(session, refusal)
    except (ConnectionError, RuntimeError):
        pass  # the socket closed while the request was held


async def _assign_work(session: Session, message: RequestWork) -> Assignment | Evaluation | NoWorkAnswer:
    """An evaluate unit, for a volunteer that offers them and a version that waits for one; else a unit
    from the first active campaign with one for this volunteer. Each campaign leases training units in
    its own lane, where the lease is committed together with that campaign's other commits."""
    service, volunteer = session.service, session.volunteer
    assert volunteer is not None
    candidates = await service.workers.run(
        service.work_candidates, preferred=message.preferred_campaign, codecs=session.codecs
    )
    if isinstance(candidates, NoWorkAnswer):
        return candidates
    reasons = []
    forward = [kind for kind in session.unit_kinds if kind in FORWARD_KINDS]
    if forward:
        for runtime in candidates:
            # Evaluations are the leader's: it opened them, and only it hears their reports.
            if isinstance(runtime, FollowerRuntime) or not service.evaluations.offers(runtime.row.id, forward):
                continue
            choice = await service.workers.run(service.evaluation_choice, runtime, session.runtimes)
            if isinstance(choice, NoWorkAnswer):
                reasons.append(choice)
                continue
            lease = await service.workers.run(
                service.evaluations.lease, volunteer.id, session.source, [runtime.row.id], forward
            )
            if lease is not None:
                return Evaluation(lease, runtime, choice.name, choice.graphs[0] if choice.graphs else None)
    if "train" not in session.unit_kinds:
        waiting = NoWorkAnswer("no version or update is waiting for a holdout loss to be measured", retry_after_s=10)
        return min([*reasons, waiting], key=lambda r: r.retry_after_s)
    for runtime in candidates:
        if runtime.spec.private and session.declined.get(runtime.row.id, 0.0) > time.monotonic():
            reasons.append(
                NoWorkAnswer(
                    f"this volunteer gave back campaign {runtime.row.name}'s units on its own files (its privacy "
                    "budget there is spent, or the campaign asks more than its owner allows)",
                    retry_after_s=DECLINED_S,
                )
            )
            continue
        if runtime.spec.private and not session.own_data:
            reasons.append(
                NoWorkAnswer(
                    f"campaign {runtime.row.name} trains on volunteers' own files, which never leave their "
                    "computers; choose files in the app's settings (or 'commonweights volunteer data add') to join it",
                    retry_after_s=300,
                )
            )
            continue
        choice = await service.workers.run(service.runtime_choice, runtime, session.runtimes)
        if isinstance(choice, NoWorkAnswer):
            reasons.append(choice)
            continue
        if isinstance(runtime, FollowerRuntime):
            answer = await session.leader().lease(runtime, volunteer.id, session.memory_bytes)
        else:
            answer = await service.workers.commit_in_order(
                runtime.row.id,
                runtime.lease,
                volunteer.id,
                memory_bytes=session.memory_bytes,
                trust=service.trust_of(volunteer),
            )
        if isinstance(answer, Assignment):
            if not choice.graphs:
                return answer
            graph = choice.graphs[answer.unit.shard_index]
            return dataclasses.replace(answer, runtime=choice.name, graph=(graph.sha256, graph.size))
        reasons.append(answer)
    return min(reasons, key=lambda r: r.retry_after_s)


def _ref_id(message: Message) -> str | None:
    if isinstance(message, BlobRequest):
        return message.sha256
    unit_id = getattr(message, "unit_id", None)
    return unit_id if isinstance(unit_id, str) else None


async def _runtime_for_unit(service: Coordinator, unit_id: str) -> Served:
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
        outcome = await _judge(session, runtime, message, digest, report)
    await _send(session, _result(message.unit_id, message.lease_id, outcome))


async def _judge(session: Session, runtime: Served, message: Submit, digest: str, report: SubmissionReport) -> Outcome:
    """The verdict on an update, here where the campaign is led, or from its leader."""
    service, volunteer = session.service, session.volunteer
    assert volunteer is not None
    if isinstance(runtime, FollowerRuntime):
        return await session.leader().submit(
            runtime, volunteer.id, message.unit_id, message.lease_id, message.update, digest, message.moments, report
        )
    prepared = await service.workers.run(
        runtime.prepare,
        volunteer.id,
        message.unit_id,
        message.lease_id,
        message.update,
        sha256=digest,
        moments=message.moments,
    )
    outcome = await service.workers.commit_in_order(
        runtime.row.id, runtime.commit, volunteer.id, message.lease_id, prepared, report
    )
    if runtime.close_due is not None:
        await service.workers.run_in_order(runtime.row.id, runtime.close_if_due)
    return outcome


def _result(unit_id: str, lease_id: str, outcome: Outcome) -> Result:
    code = ErrorCode(outcome.code) if outcome.code else None
    if outcome.status == OutcomeStatus.DUPLICATE:
        code = ErrorCode.DUPLICATE_SUBMISSION
    return Result(
        unit_id=unit_id,
        lease_id=lease_id,
        status=outcome.status.value,
        code=code,
        message=outcome.message,
        credit=outcome.credit,
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


@dataclass(frozen=True)
class Evaluation:
    """An evaluate or check unit leased to a volunteer, with the runtime (and loss graph) it runs with."""

    lease: EvalLease
    campaign: CampaignRuntime
    runtime: str
    graph: GraphBlob | None


def evaluate_unit_message(e: Evaluation, batch: int) -> WorkUnit:
    """The work_unit of an evaluate or check unit: every parameter, `lease.batches` batches of `batch`
    sequences; a check unit's checkpoint is θ_v − η·Δ, its model_version θ_v's."""
    campaign, lease = e.campaign, e.lease
    recipe = dataclasses.asdict(campaign.inner_config) | {"steps": lease.batches, "batch_size": batch, "grad_accum": 1}
    return WorkUnit(
        kind=lease.kind,  # type: ignore[arg-type]  # "evaluate" or "check"
        runtime=e.runtime,  # type: ignore[arg-type]  # "torch" or "onnxruntime", chosen by evaluation_choice
        unit_id=lease.unit_id,
        lease_id=lease.lease_id,
        lease_deadline=lease.deadline,
        campaign_id=str(lease.campaign_id),
        campaign_name=campaign.row.name,
        model_version=lease.version,
        model=ModelSpec(preset=campaign.spec.model, config=ModelConfig(**dataclasses.asdict(campaign.model_config))),
        checkpoint=BlobRef(sha256=lease.checkpoint[0], size=lease.checkpoint[1]),
        checkpoint_format="safetensors",
        data=BlobRef(sha256=lease.data[0], size=lease.data[1]),
        data_dtype=campaign.state.data_dtype(),  # type: ignore[arg-type]
        data_tokens=lease.data[2],
        shard=tuple(campaign.shapes),
        shard_shapes=campaign.shapes,
        recipe=InnerRecipe(**recipe, global_step=0),
        seed=0,
        codec=campaign.spec.codec.to_dict(),  # type: ignore[arg-type]
        max_update_bytes=1,
        graph=BlobRef(sha256=e.graph.sha256, size=e.graph.size) if e.graph is not None else None,
    )


def work_unit_message(a: Assignment) -> WorkUnit:
    return WorkUnit(
        kind="train",
        runtime=a.runtime,  # type: ignore[arg-type]  # "torch" or "onnxruntime", chosen by runtime_choice
        unit_id=a.unit.id,
        lease_id=a.lease_id,
        lease_deadline=a.lease_deadline,
        campaign_id=str(a.campaign.id),
        campaign_name=a.campaign.name,
        model_version=a.unit.version,
        model=ModelSpec(preset=a.spec.model, config=ModelConfig(**dataclasses.asdict(a.model_config))),
        checkpoint=BlobRef(sha256=a.checkpoint.checkpoint_sha, size=a.checkpoint.checkpoint_size),
        checkpoint_format="safetensors",
        data=None if a.tokenizer is not None else BlobRef(sha256=a.unit.data_sha, size=a.data_size),
        data_dtype=a.data_dtype,  # type: ignore[arg-type]
        data_tokens=a.unit.data_tokens,
        shard=tuple(a.unit.shard),
        shard_shapes=a.shard_shapes,
        recipe=InnerRecipe(**dataclasses.asdict(a.inner), global_step=a.global_step),
        seed=a.unit.seed,
        codec=a.spec.codec.to_dict(),  # type: ignore[arg-type]
        max_update_bytes=a.max_update_bytes,
        graph=BlobRef(sha256=a.graph[0], size=a.graph[1]) if a.graph is not None else None,
        deltas=tuple(
            CheckpointDelta(base=d.base, delta=BlobRef(sha256=d.delta_sha, size=d.delta_size), result=d.result)
            for d in a.deltas
        ),
        moments=_moments_ref(a),
        private=_private_recipe(a),
    )


def _private_recipe(a: Assignment) -> PrivateRecipe | None:
    """What a unit on volunteers' own data is trained and protected with; None for other units."""
    if a.tokenizer is None:
        return None
    privacy = a.spec.privacy
    return PrivateRecipe(
        tokenizer=BlobRef(sha256=a.tokenizer[0], size=a.tokenizer[1]),
        file_kinds=privacy.kinds,
        max_file_bytes=privacy.max_file_bytes,
        max_total_bytes=privacy.max_total_bytes,
        min_tokens=a.spec.private_min_tokens,
        clip_norm=privacy.clip_norm,
        noise_multiplier=privacy.noise_multiplier,
        delta=privacy.delta,
        epsilon_budget=privacy.epsilon_budget,
    )


def _moments_ref(a: Assignment) -> BlobRef | None:
    """The shared second moment of the unit's version, where the campaign shares them and has one yet."""
    version = a.checkpoint
    if not a.inner.shared_moments or version.moments_sha is None or version.moments_size is None:
        return None
    return BlobRef(sha256=version.moments_sha, size=version.moments_size)
