"""`bench fuzz` over a real socket: fuzzed frames to a real coordinator process, each answer judged.

    tally = fuzz_socket(5_000, seed=0, progress=update)

A coordinator runs as users run it (coordinator.local) with a `tiny` campaign. Several connections
at a time send control frames from `benchmarks.fuzz_frames` (the `to_server` ones), some before
`hello` and some after, and every answer is checked against docs/protocol.md for what the decoder
(the same code the gateway runs) says about the frame:

- a refused frame gets one `error` frame with the decoder's code; it is fatal, followed by its close
  code, for `version_mismatch`, for a frame over the limit (`frame_too_large`, 1009: before `hello`
  the limit is `MAX_HELLO_FRAME_BYTES`), and for the `MAX_PROTOCOL_ERRORS`-th refusal on one connection;
- before `hello`, a frame that decodes to another message gets a fatal `unexpected_message` (1008);
  a `hello` gets `welcome` or a fatal refusal of the handshake;
- after `hello`, a frame that decodes gets whatever the coordinator answers (every answer must be a
  valid frame, and none `internal_error`); a `blob_request` sent right after it, whose
  `blob_not_found` names a made-up sha256, marks the end of those answers.

Connections also lease units and aim `progress`, `abandon` and `submit` frames at them; a submit
carries a mutated update for the unit's shard, and its `result.code` must be the one docs/protocol.md
maps the decoder's code to, or a verdict on the values of an update that decodes.

Meanwhile a well-behaved volunteer asks for work, downloads a chunk of the unit's data and gives
the unit back, again and again; and at the end the coordinator's log must hold no traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from benchmarks.fuzz import Finding, Tally, rss_mib
from benchmarks.fuzz import Progress as ProgressBar
from benchmarks.fuzz_frames import FrameFuzzer, seed_messages
from benchmarks.fuzz_updates import TensorFrameFuzzer
from benchmarks.system import hello, spec
from coordinator.gateway import MAX_PROTOCOL_ERRORS
from coordinator.local import LocalCoordinator, start_coordinator, stop
from protocol.codecs import CodecConfig, CodecError, TensorSpec, encoded_size_bound
from protocol.codecs import decode as decode_update
from protocol.errors import UPDATE_REJECTIONS, CloseCode, ErrorCode, ProtocolError, close_code_for
from protocol.limits import MAX_FRAME_BYTES, MAX_HELLO_FRAME_BYTES
from protocol.messages import (
    Abandon,
    BlobChunk,
    BlobRequest,
    ErrorMessage,
    Goodbye,
    Hello,
    Message,
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

__all__ = ["fuzz_socket"]

ANSWER_TIMEOUT_S: Final = 30.0
FUZZ_CODECS: Final = ("topk", "int8")
# The campaign's codec: top-k keeps the `tiny` preset's updates a few KB, so many can be sent.
CAMPAIGN_CODEC: Final = {"name": "topk", "topk_fraction": 0.001}
MAX_SOCKET_FRAME_BYTES: Final = 1 << 20  # larger generated frames are left to the in-process run
HANDSHAKE_REFUSALS: Final = frozenset(
    {
        ErrorCode.UNAUTHORIZED,
        ErrorCode.UNSUPPORTED_CODEC,
        ErrorCode.BANNED,
        ErrorCode.RATE_LIMITED,
        ErrorCode.VERSION_MISMATCH,
    }
)


# docs/protocol.md, "How the coordinator checks an update": the decoder's code and the result's code.
RESULT_CODES: Final = {
    "oversized": ErrorCode.UPDATE_TOO_LARGE,
    **dict.fromkeys(("count_mismatch", "name_mismatch", "dtype_mismatch", "shape_mismatch"), ErrorCode.SHAPE_MISMATCH),
    **dict.fromkeys(("non_finite_scale", "non_finite_value"), ErrorCode.NON_FINITE),
}
DECODE_VERDICTS: Final = frozenset(
    {ErrorCode.UPDATE_TOO_LARGE, ErrorCode.CHECKSUM_MISMATCH, ErrorCode.BAD_ENCODING, ErrorCode.SHAPE_MISMATCH}
)
# What validation may answer for an update that decodes: a verdict on its values, or accepted (None).
VALUE_VERDICTS: Final[frozenset[ErrorCode | None]] = frozenset({None, *(UPDATE_REJECTIONS - DECODE_VERDICTS)})


@dataclass(frozen=True)
class Closed:
    code: int
    reason: str


class Silent:
    """No answer within ANSWER_TIMEOUT_S."""


Answer = Message | Closed | Silent | str  # str: a frame that is not a valid coordinator frame


class _Connection:
    """One WebSocket to the coordinator and what is judged on it."""

    def __init__(self, ws: Any, tally: Tally, lane: int) -> None:
        self.ws = ws
        self.tally = tally
        self.lane = lane
        self.refused = 0  # frames the coordinator refused on this connection so far
        self.closed: Closed | None = None
        self.unit: WorkUnit | None = None  # a unit leased on this connection, for frames aimed at it

    async def send(self, data: bytes | str) -> bool:
        try:
            await self.ws.send(data)
        except Exception as failure:  # the coordinator closed the connection meanwhile
            self._ended(failure)
            return False
        return True

    async def answer(self) -> Answer:
        if self.closed is not None:
            return self.closed
        try:
            data = await asyncio.wait_for(self.ws.recv(), ANSWER_TIMEOUT_S)
        except TimeoutError:
            return Silent()
        except Exception as failure:
            return self._ended(failure)
        if not isinstance(data, bytes):
            return f"a text frame {data[:80]!r}"
        try:
            return decode(data, direction="to_client")
        except ProtocolError as error:
            return f"a frame the volunteer's decoder refuses ({error}): {data[:80]!r}"

    def _ended(self, failure: Exception) -> Closed:
        if self.closed is None:
            received = getattr(failure, "rcvd", None)  # websockets' ConnectionClosed: the close frame, if any
            self.closed = Closed(1006, "no close frame") if received is None else Closed(received.code, received.reason)
            self.tally.outcomes[f"closed {self.closed.code}"] += 1
        return self.closed

    def find(self, kind: str, problem: str, frame: bytes | str = b"") -> None:
        data = frame.encode() if isinstance(frame, str) else frame
        self.tally.find(Finding("socket", kind, f"lane {self.lane}: {problem}", data))

    async def abort(self) -> None:
        transport = getattr(self.ws, "transport", None)
        if transport is not None:
            transport.abort()
        else:
            await self.ws.close()


class _Run:
    """The fuzzing connections, the well-behaved volunteer and the counts they share."""

    def __init__(
        self, coordinator: LocalCoordinator, frames: int, seed: int, progress: ProgressBar, lanes: int
    ) -> None:
        self.coordinator = coordinator
        self.url = coordinator.ws_url
        self.frames = frames
        self.progress = progress
        self.lanes = lanes
        self.rng = random.Random(seed)
        self.fuzzer = FrameFuzzer(seed, directions=("to_server",))
        self.tally = Tally()
        self.sent = 0
        self.syncs = 0
        self.done = asyncio.Event()
        self.updates: dict[tuple[tuple[str, ...], str], TensorFrameFuzzer] = {}
        self.aimable = [m for m, _ in seed_messages() if isinstance(m, Progress | Submit | Abandon)]

    # The fuzzing connections -------------------------------------------------------------------------------

    def _next_frame(self, connection: _Connection) -> tuple[bytes | str, str]:
        if connection.unit is not None and self.rng.random() < 0.2:  # about the unit: the aim is added later
            return encode(self.rng.choice(self.aimable)), "aimed"
        if self.rng.random() < 0.02:
            return self.rng.choice(('{"type": "hello", "v": 4}', "", "\x00")), "text"
        while True:
            fuzzed = self.fuzzer.next()
            if len(fuzzed.data) <= MAX_SOCKET_FRAME_BYTES:
                return fuzzed.data, fuzzed.kind

    async def lane(self, index: int) -> None:
        import websockets
        from websockets.exceptions import WebSocketException

        token: str | None = None
        while self.sent < self.frames:
            try:
                ws = await websockets.connect(self.url, max_size=MAX_FRAME_BYTES, compression=None, open_timeout=60)
            except (OSError, TimeoutError, WebSocketException) as failure:
                self.tally.find(Finding("socket", "-", f"lane {index}: connecting failed: {failure!r}"))
                return
            connection = _Connection(ws, self.tally, index)
            try:
                if self.rng.random() < 0.3:
                    self.tally.outcomes["connections before hello"] += 1
                    await self._before_hello(connection)
                else:
                    self.tally.outcomes["connections after hello"] += 1
                    # A new identity half the time: each may hold only a few leases, and a dropped
                    # connection leaves its leases held until they expire.
                    token = await self._after_hello(connection, token if self.rng.random() < 0.5 else None)
            finally:
                if connection.closed is None:
                    if self.rng.random() < 0.2:
                        self.tally.outcomes["connections dropped without closing"] += 1
                        await connection.abort()
                    else:
                        if connection.unit is not None:  # give it back, as a volunteer that stops does
                            unit = connection.unit
                            await connection.send(encode(_abandon(unit)))
                        await ws.close()

    async def _fuzz_frame(self, connection: _Connection, *, welcomed: bool) -> tuple[bool, bool]:
        """Send one fuzzed frame and judge its answers: (connection still open, welcomed by now)."""
        if self.sent >= self.frames:  # another connection sent the last one meanwhile
            return True, welcomed
        data, kind = self._next_frame(connection)
        self.sent += 1
        self.tally.frames += 1
        self.tally.by_kind[kind] += 1
        if self.sent % 50 == 0:
            self.progress(self.sent, self.frames, f"{self.tally.finding_count} findings")
        message: Message | None = None
        refusal: ProtocolError | None = None
        if isinstance(data, str):
            refusal = ProtocolError(ErrorCode.MALFORMED_FRAME, "a text frame")
        else:
            try:
                message = decode(data, direction="to_server")
            except ProtocolError as error:
                refusal = error
        verdicts: frozenset[ErrorCode | None] | None = None
        aim = isinstance(message, Progress | Submit | Abandon) and connection.unit is not None
        if welcomed and aim and (kind == "aimed" or self.rng.random() < 0.6):
            assert message is not None
            data, message, verdicts = self._aim(connection, message)
        if not await connection.send(data):
            return False, welcomed
        if refusal is not None or isinstance(data, str) or (not welcomed and len(data) > MAX_HELLO_FRAME_BYTES):
            self.tally.outcomes["frames refused by the decoder"] += 1
            code = refusal.code if refusal is not None else ErrorCode.MALFORMED_FRAME
            if isinstance(data, bytes) and not welcomed and len(data) > MAX_HELLO_FRAME_BYTES:
                code = ErrorCode.FRAME_TOO_LARGE
            return await self._refused(connection, code, kind, data), welcomed
        assert message is not None
        self.tally.outcomes["frames decoded"] += 1
        if not welcomed:
            return await self._first_message(connection, message, kind, data)
        return await self._served(connection, message, kind, data, verdicts), True

    def _aim(self, connection: _Connection, message: Message) -> tuple[bytes, Message, frozenset[ErrorCode | None]]:
        """`message` about the unit this connection leased, with a fuzzed update for a `submit`; the
        `result.code`s docs/protocol.md allows for it (None: accepted)."""
        unit = connection.unit
        assert unit is not None
        verdicts: frozenset[ErrorCode | None] = frozenset()
        changes: dict[str, object] = {"unit_id": unit.unit_id, "lease_id": unit.lease_id}
        if isinstance(message, Progress) and self.rng.random() < 0.8:  # mostly the unit's own step count
            steps = unit.recipe.steps
            changes |= {"steps_total": steps, "step": self.rng.randint(0, steps)}
        if isinstance(message, Submit):
            specs = {name: TensorSpec(tuple(unit.shard_shapes[name])) for name in unit.shard}
            config = CodecConfig.from_dict(dict(unit.codec))
            key = (tuple(unit.shard), repr(config))
            if key not in self.updates:
                self.updates[key] = TensorFrameFuzzer(self.rng.randrange(1 << 30), specs=specs, configs=(config,))
            update = self.updates[key].next().data or b"\x00"
            digest = hashlib.sha256(update).hexdigest()
            changes |= {"update": update, "update_sha256": digest if self.rng.random() < 0.9 else message.update_sha256}
            if changes["update_sha256"] != digest:
                verdicts = frozenset({ErrorCode.CHECKSUM_MISMATCH})
            else:
                try:
                    decode_update(update, specs, max_bytes=encoded_size_bound(specs, config), config=config)
                    verdicts = VALUE_VERDICTS
                except CodecError as error:
                    verdicts = frozenset({RESULT_CODES.get(error.code, ErrorCode.BAD_ENCODING)})
        try:
            aimed = msgspec.structs.replace(message, **changes)
            data = encode(aimed)
        except (ProtocolError, ValueError):  # fields that only fit the made-up unit: send it as it was
            return encode(message), message, frozenset()
        self.tally.outcomes[f"aimed {message.TYPE}"] += 1
        if isinstance(message, Abandon) or (
            isinstance(message, Submit) and ErrorCode.CHECKSUM_MISMATCH not in verdicts
        ):
            connection.unit = None  # given back, or its lease spent on the update
        return data, aimed, verdicts

    async def _lease(self, connection: _Connection) -> bool:
        """Lease a unit on this connection, for frames aimed at it; whether the connection is still open."""
        if not await connection.send(encode(RequestWork())):
            return False
        answer = await connection.answer()
        if isinstance(answer, WorkUnit):
            self.tally.outcomes["units leased by fuzzing connections"] += 1
            connection.unit = answer
        elif not isinstance(answer, NoWork | ErrorMessage) or (isinstance(answer, ErrorMessage) and answer.fatal):
            connection.find("-", f"a request_work was answered {_show(answer)}")
            return False
        return True

    async def _refused(self, connection: _Connection, code: ErrorCode, kind: str, data: bytes | str) -> bool:
        connection.refused += 1
        fatal = code in (ErrorCode.VERSION_MISMATCH, ErrorCode.FRAME_TOO_LARGE) or (
            connection.refused >= MAX_PROTOCOL_ERRORS
        )
        answer = await connection.answer()
        if isinstance(answer, ErrorMessage) and answer.code is ErrorCode.RATE_LIMITED:
            self.tally.outcomes["rejected rate_limited"] += 1
            return await self._closing(connection, answer, kind, data) if answer.fatal else True
        if not isinstance(answer, ErrorMessage) or answer.code is not code or answer.fatal is not fatal:
            connection.find(
                kind,
                f"a frame the decoder refuses with {code.value} (fatal: {fatal}) was answered {_show(answer)}",
                data,
            )
            return isinstance(answer, Message)
        self.tally.outcomes[f"rejected {code.value}"] += 1
        return await self._closing(connection, answer, kind, data) if fatal else True

    async def _closing(self, connection: _Connection, error: ErrorMessage, kind: str, data: bytes | str) -> bool:
        """After a fatal error frame: the close code that goes with its code (docs/protocol.md, close codes)."""
        answer = await connection.answer()
        expected = int(close_code_for(error.code))
        if not isinstance(answer, Closed) or answer.code != expected:
            connection.find(
                kind,
                f"a fatal {error.code.value} error was followed by {_show(answer)}, not close code {expected}",
                data,
            )
        return False

    async def _first_message(
        self, connection: _Connection, message: Message, kind: str, data: bytes | str
    ) -> tuple[bool, bool]:
        answer = await connection.answer()
        if isinstance(message, Hello):
            if isinstance(answer, Welcome):
                self.tally.outcomes["answered welcome"] += 1
                return True, True
            if isinstance(answer, ErrorMessage) and answer.fatal and answer.code in HANDSHAKE_REFUSALS:
                self.tally.outcomes[f"rejected {answer.code.value}"] += 1
                return await self._closing(connection, answer, kind, data), False
            connection.find(kind, f"a hello was answered {_show(answer)}", data)
            return False, False
        if isinstance(answer, ErrorMessage) and answer.code is ErrorCode.UNEXPECTED_MESSAGE and answer.fatal:
            self.tally.outcomes["rejected unexpected_message"] += 1
            return await self._closing(connection, answer, kind, data), False
        connection.find(kind, f"a {message.TYPE} before hello was answered {_show(answer)}", data)
        return False, False

    async def _served(
        self,
        connection: _Connection,
        message: Message,
        kind: str,
        data: bytes | str,
        verdicts: frozenset[ErrorCode | None] | None = None,
    ) -> bool:
        """A message after hello: every answer valid and none an internal error, up to the sync's answer;
        the result of a submit aimed at a leased unit has one of `verdicts` as its code."""
        if isinstance(message, Goodbye):
            answer = await connection.answer()
            if not isinstance(answer, Closed) or answer.code != CloseCode.NORMAL:
                connection.find(kind, f"goodbye was answered {_show(answer)}, not close code 1000", data)
            return False
        self.syncs += 1
        sync = f"{self.syncs:064x}"
        if not await connection.send(encode(BlobRequest(sha256=sync, offset=0, length=1))):
            return False
        while True:
            answer = await connection.answer()
            if isinstance(answer, ErrorMessage) and answer.ref_id == sync:
                if answer.code is not ErrorCode.BLOB_NOT_FOUND:
                    connection.find(kind, f"the sync blob_request was answered {_show(answer)}", data)
                return True
            if isinstance(answer, ErrorMessage) and answer.code is ErrorCode.RATE_LIMITED:
                self.tally.outcomes["rejected rate_limited"] += 1
                if answer.fatal:
                    return await self._closing(connection, answer, kind, data)
                continue
            if not isinstance(answer, Message) or (
                isinstance(answer, ErrorMessage) and (answer.fatal or answer.code is ErrorCode.INTERNAL_ERROR)
            ):
                connection.find(kind, f"a {message.TYPE} after hello was answered {_show(answer)}", data)
                return False
            if isinstance(answer, Result) and verdicts:
                if answer.code not in verdicts or (answer.code is None) != (answer.status == "accepted"):
                    wanted = ", ".join(sorted(c.value if c else "accepted" for c in verdicts))
                    connection.find(kind, f"an update the decoder judges {wanted} got {_show(answer)}", data)
                self.tally.outcomes[f"result {answer.code.value if answer.code else 'accepted'}"] += 1
                continue
            name = f"rejected {answer.code.value}" if isinstance(answer, ErrorMessage) else f"answered {answer.TYPE}"
            self.tally.outcomes[name] += 1

    async def _before_hello(self, connection: _Connection) -> None:
        for _ in range(self.rng.randrange(1, MAX_PROTOCOL_ERRORS + 5)):
            if self.sent >= self.frames:
                return
            open_, welcomed = await self._fuzz_frame(connection, welcomed=False)
            if not open_:
                return
            if welcomed:  # a fuzzed hello that was valid: carry on as that volunteer
                await self._fuzz_after_welcome(connection)
                return

    async def _after_hello(self, connection: _Connection, token: str | None) -> str | None:
        if not await connection.send(
            encode(hello(f"fuzz-{connection.lane}", codecs=FUZZ_CODECS) if token is None else _with_token(token))
        ):
            return token
        answer = await connection.answer()
        if not isinstance(answer, Welcome):
            connection.find("-", f"a valid hello was answered {_show(answer)}")
            return token
        await self._fuzz_after_welcome(connection)
        return token or answer.token

    async def _fuzz_after_welcome(self, connection: _Connection) -> None:
        for _ in range(self.rng.randrange(1, 3 * MAX_PROTOCOL_ERRORS)):
            if self.sent >= self.frames:
                return
            if connection.unit is None and self.rng.random() < 0.3 and not await self._lease(connection):
                return
            open_, _ = await self._fuzz_frame(connection, welcomed=True)
            if not open_:
                return

    # The well-behaved volunteer ---------------------------------------------------------------------------------

    async def honest(self) -> None:
        import websockets

        outcomes = self.tally.outcomes
        async with websockets.connect(self.url, max_size=MAX_FRAME_BYTES, compression=None) as ws:
            connection = _Connection(ws, self.tally, -1)
            await ws.send(encode(hello("well-behaved", codecs=("fp32", "int8", "topk", "dct"))))
            if not isinstance(welcome := await connection.answer(), Welcome):
                connection.find("honest", f"the well-behaved volunteer's hello was answered {_show(welcome)}")
                outcomes["honest errors"] += 1
                return
            last_round = False
            while not last_round:
                last_round = self.done.is_set()  # one more unit after the fuzzing ended
                began = time.perf_counter()
                await ws.send(encode(RequestWork()))
                answer = await connection.answer()
                outcomes["honest slowest ms"] = max(
                    outcomes["honest slowest ms"], int(1000 * (time.perf_counter() - began))
                )
                if isinstance(answer, NoWork):
                    outcomes["honest no_work"] += 1
                    await asyncio.sleep(0.2)
                    continue
                if not isinstance(answer, WorkUnit):
                    connection.find("honest", f"request_work was answered {_show(answer)}")
                    outcomes["honest errors"] += 1
                    return
                outcomes["honest work units"] += 1
                wanted = answer.data or answer.checkpoint  # a unit on volunteers' own data has no slice
                await ws.send(encode(BlobRequest(sha256=wanted.sha256, offset=0, length=4096)))
                chunk = await connection.answer()
                if not isinstance(chunk, BlobChunk) or chunk.sha256 != wanted.sha256:
                    connection.find("honest", f"the unit's data was answered {_show(chunk)}")
                    outcomes["honest errors"] += 1
                    return
                outcomes["honest blob chunks"] += 1
                await ws.send(encode(_abandon(answer)))
            await ws.send(encode(Goodbye(reason="bench fuzz done")))
            if not isinstance(closed := await connection.answer(), Closed) or closed.code != CloseCode.NORMAL:
                connection.find("honest", f"the well-behaved volunteer's goodbye was answered {_show(closed)}")
                outcomes["honest errors"] += 1

    async def memory(self) -> None:
        """The coordinator's resident memory: warm once a quarter of the frames went (the first leases,
        aimed submits and validations allocate what later ones reuse), then its peak."""
        pid = self.coordinator.process.pid
        samples: list[float] = []
        warm = False
        while not self.done.is_set():
            if not warm and self.sent >= self.frames // 4:
                self.tally.rss_warm_mib, warm = rss_mib(pid), True
            if warm:
                samples.append(rss_mib(pid))
            await asyncio.sleep(0.2)
        self.tally.rss_end_mib = rss_mib(pid)
        if not warm:
            self.tally.rss_warm_mib = self.tally.rss_end_mib
        self.tally.rss_peak_mib = max([*samples, self.tally.rss_end_mib])

    async def run(self) -> Tally:
        began = time.perf_counter()
        honest = asyncio.create_task(self.honest())
        memory = asyncio.create_task(self.memory())
        try:
            await asyncio.gather(*(self.lane(i) for i in range(self.lanes)))
        finally:
            self.done.set()
            await asyncio.gather(honest, memory)
        self.tally.seconds = time.perf_counter() - began
        self.progress(self.sent, self.frames, f"{self.tally.finding_count} findings")
        return self.tally


def _abandon(unit: WorkUnit) -> Abandon:
    return Abandon(unit_id=unit.unit_id, lease_id=unit.lease_id, reason="user_request", detail="bench fuzz")


def _with_token(token: str) -> Hello:
    fresh = hello("fuzz", codecs=FUZZ_CODECS)
    return Hello(
        protocol_version=fresh.protocol_version,
        client_version=fresh.client_version,
        token=token,
        name=fresh.name,
        capabilities=fresh.capabilities,
    )


def _show(answer: Answer) -> str:
    if isinstance(answer, Closed):
        return f"a close {answer.code} ({answer.reason!r})"
    if isinstance(answer, Silent):
        return f"nothing within {ANSWER_TIMEOUT_S:.0f} s"
    if isinstance(answer, str):
        return answer
    text = repr(answer)
    return text if len(text) <= 300 else text[:297] + "..."


def fuzz_socket(frames: int, seed: int, progress: ProgressBar, *, dataset: Path | None = None, lanes: int = 4) -> Tally:
    """Send `frames` fuzzed frames to a real coordinator over `lanes` connections at a time."""
    from training.data import ensure_default_dataset

    dataset = dataset or ensure_default_dataset(progress=True)
    work = Path(tempfile.mkdtemp(prefix="commonweights-bench-fuzz-"))
    log = work / "coordinator.log"
    coordinator = start_coordinator(work / "coordinator", datasets={"stdlib": dataset}, log=log)
    try:
        campaign = spec("fuzz", model="tiny", units=2000, rounds=1, steps=1, batch=1, seq=32)
        campaign["codec"] = CAMPAIGN_CODEC
        coordinator.api.post_campaign(campaign)
        tally = asyncio.run(_Run(coordinator, frames, seed, progress, lanes).run())
        if coordinator.process.poll() is not None:
            tally.find(Finding("server", "-", f"the coordinator exited with code {coordinator.process.returncode}"))
        else:
            coordinator.api.health()
    finally:
        stop(coordinator.process)
    text = log.read_text(errors="replace")
    tally.outcomes["server tracebacks"] = text.count("Traceback")
    if tally.outcomes["server tracebacks"]:
        first = text[text.index("Traceback") :][:3000]
        tally.find(
            Finding(
                "server", "-", f"the coordinator's log holds {text.count('Traceback')} tracebacks; the first:\n{first}"
            )
        )
    return tally
