"""The volunteer's worker core: connect, register, fetch work, train, submit, repeat. No Qt here.

    >>> worker = Worker(WorkerConfig("ws://127.0.0.1:8470/ws", max_units=1), events=print)
    >>> summary = asyncio.run(worker.run())    # until stop(), max_units, or a fatal refusal
    >>> summary.units, summary.error
    (1, None)

`pause()`, `resume()` and `stop()` may be called from any thread (the tray app calls them from Qt's).
Training runs on a worker thread and stops only at step boundaries: pausing checkpoints the unit
locally and frees the GPU; stopping does the same and then says goodbye. Everything a user should
see arrives through `events` as typed `WorkerEvent`s, on the event loop's thread.

Two loops run side by side. The *link* keeps one WebSocket to the coordinator: hello → welcome
(saving a new token), then it waits for the connection to end and reconnects with exponential
backoff and full jitter (`reconnect_delay`). The *work loop* asks for units and does them; it uses
whatever connection is up and retries a request on the next one when a connection drops. So
training goes on while the network is away, a download resumes from its partial file, and a
finished update stays on disk (`UnitStore`) until a `result` arrives for it, however many
reconnects or restarts that takes — resending it is harmless, the coordinator answers an identical
`submit` with its first verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import ipaddress
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
import platformdirs
import torch
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from protocol.checkpoints import CheckpointFormatError, apply_delta
from protocol.codecs import CODEC_NAMES
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.limits import MAX_FRAME_BYTES, MAX_LOSS, RECONNECT_BASE_DELAY_S, RECONNECT_MAX_DELAY_S
from protocol.messages import (
    RUNTIMES,
    UNIT_KINDS,
    Abandon,
    AbandonReason,
    BlobChunk,
    BlobRef,
    BlobRequest,
    Capabilities,
    Device,
    ErrorMessage,
    Goodbye,
    Hello,
    Keepalive,
    LeaseExtended,
    Message,
    NoWork,
    Phase,
    PrivateRecipe,
    Progress,
    Report,
    RequestWork,
    Result,
    Runtime,
    Submit,
    ToClientMessage,
    ToServerType,
    UnitKind,
    Welcome,
    WorkUnit,
    decode,
    encode,
)
from protocol.version import PROTOCOL_VERSION, RELEASE_VERSION
from training.atomic_write import write_atomically
from training.data import TokenDataset
from training.inner import StepReport
from volunteer_app.blob_cache import DEFAULT_CACHE_BYTES, BlobCache, BlobError, DownloadProgress
from volunteer_app.credentials import CredentialError, CredentialStore, coordinator_websocket, volunteer_data_dir
from volunteer_app.devices import DeviceInfo, choose_device, detect_devices, platform_tag, system_memory_bytes
from volunteer_app.events import (
    Connected,
    Downloading,
    Notice,
    StateChanged,
    TrainingProgress,
    UnitResult,
    UnitStarted,
    WorkerEvent,
    WorkerState,
)
from volunteer_app.local_data import DataRules, LocalData, LocalDataError
from volunteer_app.privacy_ledger import (
    LEDGER_FILE,
    BeyondOwnersLimit,
    BudgetSpent,
    LedgerError,
    PrivacyLedger,
    PrivacyTerms,
    TermsChanged,
)
from volunteer_app.unit_runner import Fault, RunnerError, TrainedUnit, UnitRunner, UnitStore

__all__ = [
    "Connected",
    "Downloading",
    "Notice",
    "RunSummary",
    "StateChanged",
    "Throttle",
    "TrainingProgress",
    "UnitResult",
    "UnitStarted",
    "Worker",
    "WorkerConfig",
    "WorkerError",
    "WorkerEvent",
    "WorkerState",
    "default_data_dir",
    "reconnect_delay",
    "websocket_url",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

APP_NAME: Final = "commonweights"
HANDSHAKE_TIMEOUT_S: Final = 30.0
REPLY_TIMEOUT_S: Final = 300.0  # a submit is answered once durable, which can take a while
GOODBYE_TIMEOUT_S: Final = 3.0
# After these the coordinator wants no automatic reconnect (docs/protocol.md, "Close codes").
_FINAL_CODES: Final = frozenset({ErrorCode.BANNED, ErrorCode.VERSION_MISMATCH, ErrorCode.SESSION_REPLACED})
_FINAL_CLOSES: Final = frozenset(
    {int(CloseCode.BANNED), int(CloseCode.SESSION_REPLACED), int(CloseCode.VERSION_MISMATCH)}
)
_LEASE_GONE: Final = frozenset({ErrorCode.LEASE_EXPIRED, ErrorCode.NOT_YOUR_LEASE, ErrorCode.UNKNOWN_UNIT})
_TRANSIENT: Final = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.INTERNAL_ERROR, ErrorCode.SERVER_SHUTTING_DOWN})
_REQUEST_OF_REPLY: Final[dict[str, ToServerType]] = {
    "work_unit": "request_work",
    "no_work": "request_work",
    "blob_chunk": "blob_request",
    "lease_extended": "progress",
    "result": "submit",
}


# --- Configuration and events -------------------------------------------------------------------


def _default_name() -> str:
    return (socket.gethostname() or "volunteer")[:128]


class Throttle:
    """Keeps training to `percent` of wall time, as BOINC's "use at most X% of CPU time" does: after
    each step it rests for the step's time × (100 − percent) / percent, waking early to stop.

        >>> throttle = Throttle(25, clock=clock, sleep=sleep)
        >>> throttle.rest(should_stop)      # after a 1 s step: rests 3 s, in slices of at most `slice_s`
    """

    def __init__(
        self,
        percent: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        slice_s: float = 0.1,
    ) -> None:
        self.percent = percent
        self.clock = clock
        self.sleep = sleep
        self.slice_s = slice_s
        self.rested_s = 0.0
        self._since = clock()

    def restart(self) -> None:
        """Training (re)starts now: the next step's time counts from here."""
        self._since = self.clock()

    def rest(self, should_stop: Callable[[], bool]) -> None:
        """Rest after the step that just ended; returns early once `should_stop()` says so."""
        now = self.clock()
        if self.percent < 100:
            until = now + (now - self._since) * (100 - self.percent) / self.percent
            while not should_stop() and (left := until - self.clock()) > 0:
                self.sleep(min(left, self.slice_s))
            self.rested_s += self.clock() - now
        self._since = self.clock()


@dataclass(frozen=True)
class WorkerConfig:
    """What `commonweights volunteer run` passes in; every path defaults to the platformdirs one."""

    coordinator_url: str
    name: str = field(default_factory=_default_name)
    device: str = "auto"
    threads: int | None = None
    cpu_percent: int = 100  # share of wall time spent training (BOINC's "use at most X% of CPU time")
    runtime: Runtime = "torch"  # or onnxruntime: train with the step graph the coordinator serves
    # add "evaluate" to also measure versions' holdout loss, "check" other volunteers' updates' (forward only)
    unit_kinds: tuple[UnitKind, ...] = ("train",)
    memory_limit: int | None = None  # bytes training may use; default: half the RAM, 90 % of a GPU
    config_dir: Path | None = None  # credentials.toml
    cache_dir: Path | None = None  # blobs
    data_dir: Path | None = None  # units in progress, error feedback; default: config_dir/data or user data
    cache_max_bytes: int = DEFAULT_CACHE_BYTES
    max_units: int | None = None  # stop after this many units got a result
    max_retries: int | None = None  # give up after this many failed connects in a row
    preferred_campaign: str | None = None
    bind_address: str | None = None  # local IP address to connect from; None: the system's choice
    inject_fault: Fault | None = None  # testing: submit a corrupted update (see unit_runner)
    checkpoint_every_s: float = 120.0

    def __post_init__(self) -> None:
        websocket_url(self.coordinator_url)  # raises WorkerError for a URL we can't use
        if self.runtime not in RUNTIMES:
            raise WorkerError("bad_runtime", f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if not self.unit_kinds or not set(self.unit_kinds) <= set(UNIT_KINDS):
            raise WorkerError("bad_config", f"unit kinds must be some of {', '.join(UNIT_KINDS)}")
        if self.runtime == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
            raise WorkerError(
                "bad_runtime", "--runtime onnxruntime needs ONNX Runtime: pip install 'commonweights[onnx]'"
            )
        if self.threads is not None and self.threads < 1:
            raise WorkerError("bad_config", f"threads must be at least 1, got {self.threads}")
        if not 1 <= self.cpu_percent <= 100:
            raise WorkerError("bad_config", f"cpu_percent must be from 1 to 100, got {self.cpu_percent}")
        if self.max_units is not None and self.max_units < 1:
            raise WorkerError("bad_config", f"max_units must be at least 1, got {self.max_units}")
        if self.max_retries is not None and self.max_retries < 0:
            raise WorkerError("bad_config", f"max_retries must not be negative, got {self.max_retries}")
        if not self.name or len(self.name) > 128 or not self.name.isprintable():
            raise WorkerError("bad_config", "the volunteer name must be 1-128 printable characters")
        if self.bind_address is not None:
            try:
                ipaddress.ip_address(self.bind_address)
            except ValueError:
                raise WorkerError(
                    "bad_config", f"the bind address must be an IP address of this machine, got {self.bind_address!r}"
                ) from None


class WorkerError(Exception):
    """Why the worker can't go on: a bad config, a refusal to obey, or an unreachable coordinator."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RunSummary:
    units: int  # units that got a result
    credit: float  # credit granted during this run
    error: WorkerError | None  # why it stopped, when it was not asked to
    rested_s: float = 0.0  # seconds training rested to keep to cpu_percent


def reconnect_delay(
    attempt: int,
    *,
    rng: random.Random | None = None,
    base: float = RECONNECT_BASE_DELAY_S,
    cap: float = RECONNECT_MAX_DELAY_S,
) -> float:
    """Seconds to wait before reconnect `attempt` (0 first): uniform in [0, min(cap, base · 2^attempt)]."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 0), 62))
    return (rng or random).uniform(0.0, ceiling)


def websocket_url(url: str) -> str:
    """The WebSocket URL for what a user typed: http(s) becomes ws(s), and a bare host gets /ws."""
    try:
        return coordinator_websocket(url)
    except ValueError as error:
        raise WorkerError("bad_url", str(error)) from None


def default_data_dir() -> Path:
    return volunteer_data_dir()


# --- One connection -----------------------------------------------------------------------------


class _ConnectionLost(Exception):
    pass


class _Stopping(Exception):
    pass


class _Refused(Exception):
    """A non-fatal error frame answering one of our requests."""

    def __init__(self, error: ErrorMessage) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


@dataclass
class _Waiter:
    kind: ToServerType
    ref_id: str | None
    accepts: Callable[[ToClientMessage], bool]
    future: asyncio.Future[tuple[ToClientMessage, bytes]]


class _Connection:
    """A live, welcomed WebSocket: sends frames and routes replies to whoever asked. When nothing else
    went out for `welcome.heartbeat_interval_s` it sends a `keepalive`, or the coordinator would close
    the connection as silent (docs/protocol.md, "Staying connected")."""

    def __init__(self, ws: ClientConnection, welcome: Welcome, notify: Callable[[WorkerEvent], None]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.notify = notify
        self.waiters: list[_Waiter] = []
        self.fatal: ErrorMessage | None = None
        self.closed = asyncio.Event()
        self.last_sent = time.monotonic()
        self.reader = asyncio.create_task(self._read())
        self.keepalive = asyncio.create_task(self._keep_alive())

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, message: Message | bytes) -> None:
        frame = message if isinstance(message, bytes) else encode(message, max_bytes=self.welcome.max_frame_bytes)
        try:
            await self.ws.send(frame)
        except ConnectionClosed:
            raise _ConnectionLost() from None
        self.last_sent = time.monotonic()

    async def _keep_alive(self) -> None:
        interval = self.welcome.heartbeat_interval_s
        with contextlib.suppress(_ConnectionLost):
            while not self.closed.is_set():
                quiet = time.monotonic() - self.last_sent
                if quiet >= interval:
                    await self.send(Keepalive())
                else:
                    await asyncio.sleep(interval - quiet)

    async def request(
        self,
        message: Message | bytes,
        kind: ToServerType,
        ref_id: str | None,
        accepts: Callable[[ToClientMessage], bool],
    ) -> tuple[ToClientMessage, bytes]:
        """Send and wait for the reply `accepts` picks (or the error frame about it)."""
        if self.closed.is_set():
            raise _ConnectionLost()
        waiter = _Waiter(kind, ref_id, accepts, asyncio.get_running_loop().create_future())
        self.waiters.append(waiter)
        try:
            await self.send(message)
            try:
                return await asyncio.wait_for(waiter.future, REPLY_TIMEOUT_S)
            except TimeoutError:
                # A coordinator that stopped answering: drop the connection; the request is sent
                # again on the next one.
                await self.ws.close(code=1011, reason="no reply")
                raise _ConnectionLost() from None
        finally:
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                if isinstance(raw, str):
                    self.notify(Notice("the coordinator sent a text frame; ignored"))
                    continue
                try:
                    message = decode(raw, direction="to_client")
                except ProtocolError as error:
                    self._unreadable(error)
                    continue
                self._route(message, raw)
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            for waiter in self.waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(_ConnectionLost())

    def _route(self, message: ToClientMessage, raw: bytes) -> None:
        if isinstance(message, ErrorMessage):
            if message.fatal:
                self.fatal = message  # the close follows; the link decides what it means
                return
            waiter = self._waiter_for_error(message)
            if waiter is None and message.code is ErrorCode.UNKNOWN_TYPE and message.ref_type in (None, "keepalive"):
                # A coordinator from before keepalive: it doesn't close quiet connections either.
                self.keepalive.cancel()
            elif waiter is None:
                self.notify(Notice(f"the coordinator refused a frame: {message.message}", message.code.value))
            else:
                waiter.future.set_exception(_Refused(message))
            return
        for waiter in self.waiters:
            if not waiter.future.done() and waiter.accepts(message):
                waiter.future.set_result((message, raw))
                return

    def _unreadable(self, error: ProtocolError) -> None:
        """A reply we can't read still ends the request it answers (when its type tag says which)."""
        tag = error.ref_type
        self.notify(Notice(f"the coordinator sent a frame this app can't read ({tag}): {error.message}", error.code))
        kind = _REQUEST_OF_REPLY.get(tag or "")
        waiter = next((w for w in self.waiters if w.kind == kind and not w.future.done()), None)
        if waiter is not None:
            text = f"the coordinator's {tag} frame can't be read: {error.message}"
            refusal = ErrorMessage(code=error.code, message=text[:1024], fatal=False, ref_type=kind)
            waiter.future.set_exception(_Refused(refusal))

    def _waiter_for_error(self, error: ErrorMessage) -> _Waiter | None:
        pending = [w for w in self.waiters if not w.future.done()]
        if error.ref_type is not None:
            pending = [w for w in pending if w.kind == error.ref_type]
            if error.ref_id is not None:
                pending = [w for w in pending if w.ref_id == error.ref_id] or pending[:0]
            return pending[0] if pending else None
        # No reference (an older coordinator): it answers frames in order, so the oldest it is.
        return pending[0] if pending else None

    async def close(self, reason: str | None) -> None:
        if reason is not None and not self.closed.is_set():
            with contextlib.suppress(_ConnectionLost, ProtocolError):
                await self.send(Goodbye(reason=reason))
            # The coordinator closes with 1000 on goodbye; don't wait long for it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), GOODBYE_TIMEOUT_S)
        await self.ws.close()
        for task in (self.keepalive, self.reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- The worker ---------------------------------------------------------------------------------


@dataclass
class _UnitProgress:
    unit: WorkUnit
    phase: Phase = "downloading"
    step: int = 0
    loss: float | None = None
    tokens: int = 0
    lease_lost: str | None = None


class Worker:
    """Volunteer work for one coordinator; see the module docstring."""

    def __init__(self, config: WorkerConfig, events: Callable[[WorkerEvent], None] | None = None) -> None:
        self.config = config
        self.url = websocket_url(config.coordinator_url)
        self._events = events
        self.credentials = CredentialStore(config.config_dir)
        cache_root = config.cache_dir or platformdirs.user_cache_path(APP_NAME, appauthor=False)
        self.cache = BlobCache(cache_root / "blobs", max_bytes=config.cache_max_bytes)
        slug = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        # Units in progress belong to the identity holding their leases, so an install with its own
        # config dir (the demo runs several) keeps them next to its credentials by default.
        data_root = volunteer_data_dir(config.config_dir, config.data_dir)
        self.store = UnitStore(data_root / f"coordinator-{slug}")
        self.data_root = data_root
        self.ledger = PrivacyLedger(data_root / LEDGER_FILE)  # the privacy spent on the owner's own files
        self.device: DeviceInfo | None = None
        self.devices: list[DeviceInfo] = []
        self.units_done = 0
        self.credit = 0.0
        # Flags the training thread reads at step boundaries, and their asyncio twins.
        self._stop_flag = threading.Event()
        self.rested_s = 0.0  # seconds training rested to keep to cpu_percent (Throttle)
        self._pause_flag = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._online = asyncio.Event()
        self._welcomed = asyncio.Event()  # set on each welcome; heartbeats go out right after
        self._conn: _Connection | None = None
        self._error: WorkerError | None = None
        self._activity: tuple[WorkerState, str] | None = None
        self._link: tuple[WorkerState, str] | None = (WorkerState.CONNECTING, self.url)
        self._shown: tuple[WorkerState, str] | None = None
        self._final: tuple[WorkerState, str] | None = None

    # control, from any thread ------------------------------------------------------------------

    def pause(self) -> None:
        """Stop training at the next step boundary, checkpoint, free the GPU; keep the lease alive."""
        self._pause_flag.set()
        self._threadsafe(self._unpaused.clear)

    def resume(self) -> None:
        self._pause_flag.clear()
        self._threadsafe(self._unpaused.set)

    def stop(self) -> None:
        """Finish the current step, checkpoint the unit, say goodbye and return from `run`."""
        self._stop_flag.set()
        self._threadsafe(self._stopping.set)

    @property
    def paused(self) -> bool:
        return self._pause_flag.is_set()

    @property
    def state(self) -> WorkerState | None:
        return self._shown[0] if self._shown else None

    def _threadsafe(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            callback()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            callback()
        else:
            loop.call_soon_threadsafe(callback)

    # the run -------------------------------------------------------------------------------

    async def run(self) -> RunSummary:
        """Work until `stop()`, `max_units` results, or a refusal the worker must obey."""
        self._loop = asyncio.get_running_loop()
        if self._stop_flag.is_set():
            self._stopping.set()
        if self._pause_flag.is_set():
            self._unpaused.clear()
        try:
            self._setup_device()
        except WorkerError as error:
            self._finish(error)
            return RunSummary(0, 0.0, error)
        self._publish()
        link = asyncio.create_task(self._maintain_link(), name="commonweights-link")
        work = asyncio.create_task(self._work_loop(), name="commonweights-work")
        try:
            await asyncio.wait({link, work}, return_when=asyncio.FIRST_COMPLETED)
            if link.done():  # a fatal refusal: the work loop winds down at a step boundary
                self._stop_flag.set()
                self._stopping.set()
            await work
        except BaseException:
            self._stop_flag.set()
            self._stopping.set()
            raise
        finally:
            if not link.done():
                link.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await link
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close("volunteer stopped" if self._error is None else None)
        self._finish(self._error)
        return RunSummary(self.units_done, self.credit, self._error, self.rested_s)

    def _setup_device(self) -> None:
        from volunteer_app.devices import DeviceError

        config = self.config
        try:
            self.devices = detect_devices()
            self.device = choose_device(config.device, self.devices)
        except DeviceError as error:
            raise WorkerError(error.code, str(error)) from None
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        device = self.device
        if device.kind == "cuda" and config.memory_limit is not None and device.memory_bytes:
            fraction = min(1.0, config.memory_limit / device.memory_bytes)
            torch.cuda.set_per_process_memory_fraction(fraction, device.index)

    def _memory_allowance(self) -> int:
        device = self.device
        assert device is not None
        share = 0.5 if device.kind == "cpu" else 0.9
        available = device.memory_bytes or system_memory_bytes()
        allowance = int(available * share)
        if self.config.memory_limit is not None:
            allowance = min(self.config.memory_limit, available) if available else self.config.memory_limit
        return max(0, min(allowance, 1 << 50))

    def _hello(self, token: str | None) -> Hello:
        device = self.device
        assert device is not None
        ordered = [device, *(d for d in self.devices if d != device)]
        if not any(d.kind == "cpu" for d in ordered):
            ordered.append(DeviceInfo("cpu", "CPU", system_memory_bytes()))
        return Hello(
            protocol_version=PROTOCOL_VERSION,
            client_version=RELEASE_VERSION,
            token=token,
            name=self.config.name,
            capabilities=Capabilities(
                devices=tuple(Device(d.kind, d.name, min(d.memory_bytes, 1 << 50)) for d in ordered[:16]),
                memory_bytes=self._memory_allowance(),
                threads=max(1, min(self.config.threads or torch.get_num_threads(), 4096)),
                codecs=CODEC_NAMES,
                platform=platform_tag(),
                runtimes=(self.config.runtime,),
                unit_kinds=self.config.unit_kinds,
                own_data=self._has_own_data(),
            ),
        )

    def _local_data(self) -> LocalData:
        return LocalData(self.credentials.config_dir, self.data_root)

    def _has_own_data(self) -> bool:
        """Whether the owner chose files for campaigns on volunteers' own data (read at each hello)."""
        try:
            return bool(self._local_data().sources)
        except LocalDataError as error:
            self._notify(Notice(f"your chosen files can't be read: {error}", error.code))
            return False

    # the link --------------------------------------------------------------------------------

    async def _maintain_link(self) -> None:
        try:
            await self._link_loop()
        except CredentialError as error:  # a credentials file we can't read or write
            self._error = WorkerError(error.code, str(error))

    async def _link_loop(self) -> None:
        attempt = 0  # failures since the last welcome
        reregistered = False
        while not self._stopping.is_set():
            self._set_link(WorkerState.CONNECTING, self.url)
            try:
                conn = await self._open()
            except _Unauthorized as refusal:
                self.credentials.forget(self.url)
                if reregistered:
                    self._error = WorkerError("unauthorized", refusal.message)
                    return
                reregistered = True  # once: a coordinator that refuses a fresh registration too is final
                self._notify(Notice("the coordinator doesn't know our token; registering again", "unauthorized"))
                continue
            except WorkerError as error:
                self._error = error
                return
            except _Unreachable as problem:
                wait_at_least, reason = problem.retry_after, problem.reason
            else:
                attempt, reregistered = 0, False
                self._conn = conn
                self._set_link(None, "")
                self._online.set()
                self._welcomed.set()
                with contextlib.suppress(_Stopping):
                    await self._first(conn.closed.wait())
                if self._stopping.is_set():
                    return  # run() says goodbye on this connection
                self._online.clear()
                self._conn = None
                outcome = self._after_close(conn)
                if isinstance(outcome, WorkerError):
                    self._error = outcome
                    return
                wait_at_least, reason = outcome
                if reason == "unauthorized":
                    self.credentials.forget(self.url)
                    continue
                self._notify(Notice(f"disconnected: {reason}"))
            attempt += 1
            if self.config.max_retries is not None and attempt > self.config.max_retries:
                self._error = WorkerError(
                    "unreachable", f"can't reach the coordinator at {self.url} after {attempt} tries: {reason}"
                )
                return
            delay = max(wait_at_least, reconnect_delay(attempt - 1))
            self._set_link(WorkerState.BACKOFF, f"{reason}; reconnecting in {delay:.0f} s")
            await self._sleep(delay)

    async def _open(self) -> _Connection:
        """Connect and shake hands; raises _Unreachable, _Unauthorized or WorkerError (final)."""
        token = self.credentials.token_for(self.url)
        try:
            local: dict[str, Any] = {"local_addr": (self.config.bind_address, 0)} if self.config.bind_address else {}
            ws = await connect(
                self.url, max_size=MAX_FRAME_BYTES, compression=None, open_timeout=HANDSHAKE_TIMEOUT_S, **local
            )
        except InvalidURI as error:
            raise WorkerError("bad_url", f"{self.url} is not a usable WebSocket URL: {error}") from None
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise _Unreachable(_describe(error)) from None
        try:
            await ws.send(encode(self._hello(token)))
            raw = await asyncio.wait_for(ws.recv(), HANDSHAKE_TIMEOUT_S)
            reply = decode(raw, direction="to_client") if isinstance(raw, bytes) else None
        except (ConnectionClosed, TimeoutError, OSError) as error:
            await ws.close()
            raise _Unreachable(_describe(error)) from None
        except ProtocolError as error:
            await ws.close()
            if error.code is ErrorCode.VERSION_MISMATCH:
                raise WorkerError(error.code.value, error.message) from None
            raise _Unreachable(f"the coordinator answered hello with a bad frame: {error.message}") from None
        if isinstance(reply, Welcome):
            if reply.token is not None:
                self.credentials.save(self.url, reply.token, volunteer_id=reply.volunteer_id)
            self._notify(
                Connected(
                    reply.volunteer_id,
                    reply.server_version,
                    reply.credit_total,
                    reply.dashboard_url,
                    registered=reply.token is not None,
                )
            )
            return _Connection(ws, reply, self._notify)
        await ws.close()
        if isinstance(reply, ErrorMessage):
            if reply.code is ErrorCode.UNAUTHORIZED and token is not None:
                raise _Unauthorized(reply.message)
            if reply.code in _FINAL_CODES or reply.code is ErrorCode.UNAUTHORIZED:
                raise WorkerError(reply.code.value, reply.message)
            raise _Unreachable(f"{reply.code}: {reply.message}", reply.retry_after_s or 0.0)
        raise _Unreachable("the coordinator answered hello with something other than welcome")

    def _after_close(self, conn: _Connection) -> WorkerError | tuple[float, str]:
        """What a closed connection means: a final refusal, or (wait at least, why) before retrying."""
        fatal, code = conn.fatal, conn.close_code
        if fatal is not None and fatal.code in _FINAL_CODES:
            return WorkerError(fatal.code.value, fatal.message)
        if code in _FINAL_CLOSES:
            return WorkerError(f"close_{code}", f"the coordinator closed the connection for good (code {code})")
        if (fatal is not None and fatal.code is ErrorCode.UNAUTHORIZED) or code == int(CloseCode.UNAUTHORIZED):
            return 0.0, "unauthorized"
        if fatal is not None:
            return fatal.retry_after_s or 0.0, fatal.message
        if code == int(CloseCode.GOING_AWAY):
            return 0.0, "the coordinator is restarting"
        return 0.0, f"connection lost (close code {code})"

    async def _connection(self) -> _Connection:
        """The live connection, waiting for the link to bring one up; _Stopping when stopping."""
        while True:
            if self._stopping.is_set():
                raise _Stopping()
            conn = self._conn
            if conn is not None and not conn.closed.is_set():
                return conn
            await self._first(self._online.wait())

    async def _request(
        self,
        message: Message | bytes,
        kind: ToServerType,
        ref_id: str | None,
        accepts: Callable[[ToClientMessage], bool],
    ) -> tuple[ToClientMessage, bytes]:
        """A request that survives reconnects: sent again on the next connection if this one drops."""
        while True:
            conn = await self._connection()
            try:
                return await self._first(conn.request(message, kind, ref_id, accepts))
            except _ConnectionLost:
                self._online.clear()
                continue

    async def _first(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` unless stop() comes first (then _Stopping)."""
        task = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise _Stopping()
        return task.result()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once on stop()."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=max(0.0, seconds))

    # the work loop ---------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        refused = 0  # request_work refusals in a row
        try:
            while not self._stopping.is_set():
                if self.config.max_units is not None and self.units_done >= self.config.max_units:
                    self._stop_flag.set()
                    self._stopping.set()
                    return
                if not self._unpaused.is_set():
                    self._set_activity(WorkerState.PAUSED, "paused")
                    await self._first(self._unpaused.wait())
                leftovers = self.store.units()
                if leftovers:
                    unit, _ = leftovers[0]
                    await self._do_unit(unit, resumed=True)
                    continue
                self._set_activity(WorkerState.IDLE, "asking for work")
                try:
                    reply, raw = await self._request(
                        RequestWork(preferred_campaign=self.config.preferred_campaign),
                        "request_work",
                        None,
                        lambda m: isinstance(m, WorkUnit | NoWork),
                    )
                except _Refused as refusal:
                    refused += 1
                    wait = max(refusal.error.retry_after_s or 0.0, reconnect_delay(refused))
                    self._notify(Notice(f"no work: {refusal.error.message}", refusal.error.code.value))
                    self._set_activity(WorkerState.IDLE, f"{refusal.error.message}; asking again in {wait:.0f} s")
                    await self._sleep(wait)
                    continue
                refused = 0
                if isinstance(reply, NoWork):
                    wait = max(reply.retry_after_s, 1.0)
                    self._set_activity(WorkerState.IDLE, f"{reply.reason or 'no work'}; asking again in {wait:.0f} s")
                    await self._sleep(wait)
                    continue
                assert isinstance(reply, WorkUnit)
                if reply.kind in ("evaluate", "check"):
                    await self._evaluate(reply)  # minutes at most: not kept on disk to resume
                    continue
                self.store.save_unit(raw)
                await self._do_unit(reply, resumed=False)
        except _Stopping:
            return

    async def _do_unit(self, unit: WorkUnit, *, resumed: bool) -> None:
        self._notify(
            UnitStarted(
                unit.unit_id, unit.campaign_id, unit.campaign_name, unit.model_version, unit.recipe.steps, resumed
            )
        )
        frame = self.store.load_submit(unit.unit_id)
        trained: TrainedUnit | None = None
        if frame is None and unit.runtime != self.config.runtime:
            await self._abandon(unit, "error", f"a unit for {unit.runtime}, which this volunteer did not offer")
            return
        terms = _privacy_terms(unit)
        if frame is None and terms is not None and not await self._within_budget(unit, terms):
            return
        if frame is None:
            progress = _UnitProgress(unit)
            heartbeat: asyncio.Task[None] | None = None
            try:
                # Carrying on with a unit from before a restart: only if the lease is still ours.
                if resumed:
                    await self._connection()
                    if not await self._beat(progress):
                        self._lease_lost(unit, progress.lease_lost or "lease lost")
                        return
                heartbeat = asyncio.create_task(self._heartbeats(progress))
                checkpoint, data, graph = await self._download(unit)
                if unit.private is not None:
                    data = await self._own_tokens(unit, unit.private)
                moments = await self._fetch(unit.moments) if unit.moments is not None else None
                try:
                    trained = await self._train(unit, progress, checkpoint, data, graph, moments)
                except (RunnerError, _Stopping):
                    raise
                except Exception as error:  # a bug or a broken unit: give it back rather than crash
                    log.exception("training unit %s failed", unit.unit_id)
                    raise RunnerError("error", f"training failed: {_describe(error)}") from None
            except RunnerError as error:
                await self._abandon(unit, error.reason, error.message)
                return
            except LocalDataError as error:
                self._notify(Notice(f"{unit.campaign_name}: your own files can't be used: {error}", error.code))
                # Only the kind of problem goes out: the message names the owner's files and counts its tokens.
                await self._abandon(unit, "error", f"the volunteer's own files can't be used ({error.code})")
                return
            except BlobError as error:
                await self._abandon(unit, "download_failed", error.message)
                return
            except _Refused as refusal:  # blob_not_found, bad_range
                await self._abandon(unit, "download_failed", refusal.error.message)
                return
            finally:
                if heartbeat is not None:
                    heartbeat.cancel()
                    with contextlib.suppress(asyncio.CancelledError, _Stopping):
                        await heartbeat
            if trained is None:
                if progress.lease_lost is not None:
                    self._lease_lost(unit, progress.lease_lost)
                return  # stopping: the checkpoint waits on disk for the next run
            conn = await self._connection()
            submit = Submit(
                unit.unit_id, unit.lease_id, trained.update, trained.update_sha256, trained.metrics, trained.moments
            )
            try:
                frame = encode(submit, max_bytes=conn.welcome.max_frame_bytes)
            except ProtocolError as error:  # larger than this coordinator takes in one frame
                await self._abandon(unit, "error", error.message)
                return
            if terms is not None:  # recorded before the update can leave: a crash overcounts, never under
                try:
                    entry = self.ledger.spend(terms)  # checked again: another process may have spent meanwhile
                except LedgerError as error:
                    await self._refuse_private(unit, error)
                    return
                self._notify(Notice(f"privacy spent: {entry.describe()}", "privacy"))
            self.store.save_submit(unit.unit_id, frame, trained=trained)
        await self._submit(unit, frame)
        if trained is not None and trained.alternate_update is not None:
            await self._replay(unit, frame, trained)

    async def _within_budget(self, unit: WorkUnit, terms: PrivacyTerms) -> bool:
        """Whether one more update of this campaign on the owner's files stays within its ε budget; if not,
        the unit is given back and the owner told."""
        try:
            local = self._local_data()
        except LocalDataError as error:
            self._notify(Notice(f"your chosen files can't be read: {error}", error.code))
            await self._abandon(unit, "error", f"the volunteer's own files can't be used ({error.code})")
            return False
        try:
            if not local.accepts(terms.epsilon_budget):
                budget = "no limit" if math.isinf(terms.epsilon_budget) else f"ε = {terms.epsilon_budget:g}"
                raise BeyondOwnersLimit(
                    f"{unit.campaign_name} may spend {budget} of your privacy; you accept at most "
                    f"ε = {local.max_epsilon:g} (commonweights volunteer data --max-epsilon, or the app's settings)"
                )
            if self.ledger.would_exceed(terms):
                raise BudgetSpent(f"the privacy budget of {unit.campaign_name} is spent")
        except LedgerError as error:
            await self._refuse_private(unit, error)
            return False
        return True

    async def _refuse_private(self, unit: WorkUnit, error: LedgerError) -> None:
        """Give a private unit back because the ledger says no (budget spent, terms changed) or can't be
        read; the owner is told the whole story, the coordinator only which of these it was (the ledger's
        message names its path)."""
        if isinstance(error, BudgetSpent):
            entry = self.ledger.entry(unit.campaign_id)
            spent = entry.describe() if entry is not None else unit.campaign_name
            self._notify(Notice(f"privacy budget spent, no more updates from your files: {spent}", "privacy"))
            await self._abandon(unit, "user_request", "this volunteer's privacy budget for the campaign is spent")
        elif isinstance(error, BeyondOwnersLimit):
            self._notify(Notice(str(error), "privacy"))
            await self._abandon(unit, "user_request", "the campaign's privacy budget is above this volunteer's limit")
        elif isinstance(error, TermsChanged):
            self._notify(Notice(str(error), "privacy"))
            await self._abandon(
                unit, "user_request", "the campaign's privacy terms differ from those of this volunteer's first update"
            )
        else:
            self._notify(Notice(str(error), "privacy_ledger"))
            await self._abandon(unit, "error", "the volunteer's privacy ledger can't be read")

    async def _own_tokens(self, unit: WorkUnit, private: PrivateRecipe) -> bytes:
        """`recipe.tokens_needed` tokens of the owner's own files, tokenized here with the campaign's
        tokenizer, from a start drawn from the unit's seed; as little-endian `data_dtype` ids."""
        tokenizer = await self._fetch(private.tokenizer)
        path = self.data_root / "tokenizers" / f"{private.tokenizer.sha256}.json"
        if not path.is_file():
            write_atomically(path, tokenizer)
        self._set_activity(WorkerState.DOWNLOADING, f"{unit.campaign_name}: reading your own files")
        rules = DataRules(
            kinds=private.file_kinds,
            max_file_bytes=private.max_file_bytes,
            max_total_bytes=private.max_total_bytes,
            min_tokens=max(private.min_tokens, unit.recipe.tokens_needed),
        )
        return await asyncio.to_thread(_own_slice, self._local_data(), path, rules, unit)

    async def _evaluate(self, unit: WorkUnit) -> None:
        """An evaluate or check unit: its batches' losses (forward only), reported; given back on any
        failure. A check unit's checkpoint is another volunteer's update applied to the version."""
        self._notify(
            UnitStarted(
                unit.unit_id, unit.campaign_id, unit.campaign_name, unit.model_version, unit.recipe.steps, False
            )
        )
        if unit.runtime != self.config.runtime:
            await self._abandon(unit, "error", f"a unit for {unit.runtime}, which this volunteer did not offer")
            return
        device = self.device
        assert device is not None
        progress = _UnitProgress(unit)
        heartbeat = asyncio.create_task(self._heartbeats(progress))
        try:
            checkpoint, data, graph = await self._download(unit)
            progress.phase = "training"
            doing = "evaluating version" if unit.kind == "evaluate" else "checking an update to version"
            self._set_activity(WorkerState.TRAINING, f"{unit.campaign_name}: {doing} {unit.model_version}")
            runner = UnitRunner(unit, self.store, device)
            losses, seconds = await asyncio.to_thread(runner.evaluate, checkpoint, data, graph=graph)
        except RunnerError as error:
            await self._abandon(unit, error.reason, error.message)
            return
        except (BlobError, _Refused) as error:
            await self._abandon(unit, "download_failed", getattr(error, "message", None) or str(error))
            return
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, _Stopping):
                await heartbeat
        if progress.lease_lost is not None:
            self._lease_lost(unit, progress.lease_lost)
            return
        report = Report(unit.unit_id, unit.lease_id, tuple(losses), min(seconds, 1e7), device.kind, device.name,
                        unit.runtime)  # fmt: skip
        self._set_activity(WorkerState.SUBMITTING, unit.campaign_name)
        try:
            reply, _ = await self._request(
                report,
                "report",
                unit.unit_id,
                lambda m: isinstance(m, Result) and m.unit_id == unit.unit_id and m.lease_id == unit.lease_id,
            )
        except _Refused as refusal:
            self._count(UnitResult(unit.unit_id, "rejected", refusal.error.code.value, refusal.error.message, 0.0))
            return
        assert isinstance(reply, Result)
        code = reply.code.value if reply.code is not None else None
        self._count(UnitResult(unit.unit_id, reply.status, code, reply.message, reply.credit))

    async def _download(self, unit: WorkUnit) -> tuple[bytes, bytes, bytes | None]:
        """The unit's checkpoint, data and (for onnxruntime) step graph, from the cache or the coordinator."""
        self._set_activity(WorkerState.DOWNLOADING, unit.campaign_name)
        checkpoint = await self._checkpoint(unit)
        data = await self._fetch(unit.data) if unit.data is not None else b""  # none: the owner's own files
        graph = await self._fetch(unit.graph) if unit.graph is not None else None
        self.cache.evict(keep={ref.sha256 for ref in (unit.checkpoint, unit.data, unit.graph) if ref is not None})
        return checkpoint, data, graph

    async def _checkpoint(self, unit: WorkUnit) -> bytes:
        """The unit's checkpoint: cached, rebuilt from a cached earlier one and the deltas after it when
        they are smaller, or downloaded (protocol.md, checkpoint deltas)."""
        target = unit.checkpoint
        held = [i for i, step in enumerate(unit.deltas) if self.cache.contains(step.base)]
        if self.cache.contains(target.sha256) or not held:
            return await self._fetch(target)
        steps = unit.deltas[held[-1] :]
        if sum(step.delta.size for step in steps) >= target.size:
            return await self._fetch(target)
        try:
            current = self.cache.read(steps[0].base)
            for step in steps:
                if current is None:  # evicted or rotten since contains(): no base to build on
                    raise BlobError("missing_base", f"checkpoint {step.base[:12]}… left the cache")
                delta = await self._fetch(step.delta)
                current = await asyncio.to_thread(apply_delta, current, delta)
                if hashlib.sha256(current).hexdigest() != step.result:
                    raise BlobError("delta_mismatch", f"the delta to {step.result[:12]}… rebuilt other bytes")
                self.cache.put(current)
            assert current is not None
            return current
        except (BlobError, CheckpointFormatError, _Refused) as error:
            log.warning("rebuilding checkpoint %s from deltas failed (%s); downloading it", target.sha256[:12], error)
            return await self._fetch(target)

    async def _fetch(self, ref: BlobRef) -> bytes:
        began = time.monotonic()

        def report(progress: DownloadProgress) -> None:
            self._notify(Downloading(progress.sha256, progress.done, progress.total, time.monotonic() - began))

        async def chunk(sha256: str, offset: int, length: int) -> BlobChunk:
            reply, _ = await self._request(
                BlobRequest(sha256, offset, length),
                "blob_request",
                sha256,
                lambda m: isinstance(m, BlobChunk) and m.sha256 == sha256 and m.offset == offset,
            )
            assert isinstance(reply, BlobChunk)
            return reply

        return await self.cache.fetch(ref, chunk, on_progress=report)

    async def _train(
        self,
        unit: WorkUnit,
        progress: _UnitProgress,
        checkpoint: bytes,
        data: bytes,
        graph: bytes | None,
        moments: bytes | None,
    ) -> TrainedUnit | None:
        device = self.device
        assert device is not None and self._loop is not None
        runner = UnitRunner(
            unit, self.store, device, fault=self.config.inject_fault, checkpoint_every_s=self.config.checkpoint_every_s
        )
        loop = self._loop
        throttle = Throttle(self.config.cpu_percent)

        def should_stop() -> bool:  # on the training thread, at step boundaries
            return self._stop_flag.is_set() or self._pause_flag.is_set() or progress.lease_lost is not None

        def on_step(report: StepReport) -> None:  # on the training thread
            loop.call_soon_threadsafe(self._step_done, progress, report)
            throttle.rest(should_stop)

        while True:
            if not self._unpaused.is_set():
                progress.phase = "paused"
                self._set_activity(WorkerState.PAUSED, f"{unit.campaign_name}: paused at step {progress.step}")
                await self._first(self._unpaused.wait())
            progress.phase = "training"
            self._set_activity(WorkerState.TRAINING, unit.campaign_name)
            throttle.restart()
            trained = await asyncio.to_thread(
                runner.run,
                checkpoint,
                data,
                graph=graph,
                moments=moments,
                on_step=on_step,
                should_stop=should_stop,
            )
            self.rested_s += throttle.rested_s
            throttle.rested_s = 0.0
            if trained is not None or self._stopping.is_set() or progress.lease_lost is not None:
                return trained

    def _step_done(self, progress: _UnitProgress, report: StepReport) -> None:
        progress.step, progress.loss, progress.tokens = report.step, report.loss, report.tokens
        self._notify(
            TrainingProgress(progress.unit.unit_id, report.step, report.steps_total, report.loss, report.tokens)
        )

    async def _heartbeats(self, progress: _UnitProgress) -> None:
        """Progress every heartbeat interval (and right after a reconnect) while the unit is leased."""
        while progress.lease_lost is None:
            conn = self._conn
            interval = conn.welcome.heartbeat_interval_s if conn is not None else 15.0
            self._welcomed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._welcomed.wait(), timeout=interval)
            if not await self._beat(progress):
                return

    async def _beat(self, progress: _UnitProgress) -> bool:
        """Send one progress frame if connected; False when the lease turned out to be gone."""
        conn = self._conn
        if conn is None or conn.closed.is_set():
            return True
        unit = progress.unit
        frame = Progress(
            unit_id=unit.unit_id,
            lease_id=unit.lease_id,
            step=min(progress.step, unit.recipe.steps),
            steps_total=unit.recipe.steps,
            # A loss on the owner's own data stays on the device: the noise protects only the update.
            loss=None if progress.loss is None or unit.private is not None else min(progress.loss, MAX_LOSS),
            tokens=progress.tokens,
            phase=progress.phase,
        )
        try:
            await self._first(
                conn.request(
                    frame,
                    "progress",
                    unit.unit_id,
                    lambda m: (
                        isinstance(m, LeaseExtended) and m.unit_id == unit.unit_id and m.lease_id == unit.lease_id
                    ),
                )
            )
        except _ConnectionLost:
            return True
        except _Refused as refusal:
            if refusal.error.code in _LEASE_GONE:
                progress.lease_lost = refusal.error.message
                return False
            self._notify(Notice(f"progress refused: {refusal.error.message}", refusal.error.code.value))
        return True

    async def _submit(self, unit: WorkUnit, frame: bytes) -> Result | None:
        self._set_activity(WorkerState.SUBMITTING, unit.campaign_name)
        attempt = 0
        while True:
            try:
                reply, _ = await self._request(
                    frame,
                    "submit",
                    unit.unit_id,
                    lambda m: isinstance(m, Result) and m.unit_id == unit.unit_id and m.lease_id == unit.lease_id,
                )
            except _Refused as refusal:
                error = refusal.error
                if error.code in _TRANSIENT:
                    attempt += 1
                    await self._sleep(max(error.retry_after_s or 0.0, reconnect_delay(attempt)))
                    if self._stopping.is_set():
                        raise _Stopping() from None
                    continue
                # The coordinator won't take this update at all (checksum, unknown unit, ...).
                self.store.discard(unit.unit_id)
                self._count(UnitResult(unit.unit_id, "rejected", error.code.value, error.message, 0.0))
                return None
            assert isinstance(reply, Result)
            self.store.discard(unit.unit_id)
            code = reply.code.value if reply.code is not None else None
            self._count(UnitResult(unit.unit_id, reply.status, code, reply.message, reply.credit))
            return reply

    async def _replay(self, unit: WorkUnit, frame: bytes, trained: TrainedUnit) -> None:
        """--inject-fault replay: the same submit again, then a different update for the same unit."""
        assert trained.alternate_update is not None
        conn = await self._connection()
        alternate = encode(
            Submit(
                unit.unit_id,
                unit.lease_id,
                trained.alternate_update,
                hashlib.sha256(trained.alternate_update).hexdigest(),
                trained.metrics,
                trained.moments,
            ),
            max_bytes=conn.welcome.max_frame_bytes,
        )
        for again in (frame, alternate):
            with contextlib.suppress(_Refused):
                reply, _ = await self._request(
                    again,
                    "submit",
                    unit.unit_id,
                    lambda m: isinstance(m, Result) and m.unit_id == unit.unit_id and m.lease_id == unit.lease_id,
                )
                assert isinstance(reply, Result)
                code = reply.code.value if reply.code is not None else None
                self._notify(UnitResult(unit.unit_id, reply.status, code, f"(replayed) {reply.message}", reply.credit))

    async def _abandon(self, unit: WorkUnit, reason: AbandonReason, detail: str) -> None:
        self.store.discard(unit.unit_id)
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(_ConnectionLost):
                await conn.send(Abandon(unit.unit_id, unit.lease_id, reason, detail[:1024]))
        self._notify(UnitResult(unit.unit_id, "abandoned", reason, detail, 0.0))

    def _lease_lost(self, unit: WorkUnit, why: str) -> None:
        self.store.discard(unit.unit_id)
        self._notify(Notice(f"unit {unit.unit_id} dropped: {why}", "lease_expired"))

    def _count(self, result: UnitResult) -> None:
        self.units_done += 1
        self.credit += result.credit
        self._notify(result)

    # states and events ---------------------------------------------------------------------

    def _set_activity(self, state: WorkerState, detail: str) -> None:
        self._activity = (state, detail)
        self._publish()

    def _set_link(self, state: WorkerState | None, detail: str) -> None:
        self._link = None if state is None else (state, detail)
        self._publish()

    def _publish(self) -> None:
        """One visible state: training and pausing go on offline; everything else needs the link."""
        shown = self._final
        if shown is None:
            activity, link = self._activity, self._link
            if activity is not None and activity[0] in (WorkerState.TRAINING, WorkerState.PAUSED):
                shown = activity
            else:
                shown = link or activity
        if shown is not None and shown != self._shown:
            self._shown = shown
            self._notify(StateChanged(*shown))

    def _finish(self, error: WorkerError | None) -> None:
        self._final = (WorkerState.ERROR, error.message) if error else (WorkerState.STOPPED, "")
        self._publish()

    def _notify(self, event: WorkerEvent) -> None:
        if self._events is None:
            return
        try:
            self._events(event)
        except Exception:  # a broken display must not stop the work
            log.exception("the worker's event callback failed on %s", type(event).__name__)


def _privacy_terms(unit: WorkUnit) -> PrivacyTerms | None:
    private = unit.private
    if private is None:
        return None
    budget = math.inf if private.epsilon_budget is None else private.epsilon_budget
    return PrivacyTerms(
        unit.campaign_id, unit.campaign_name, private.noise_multiplier, private.delta, private.clip_norm, budget
    )


def _own_slice(local: LocalData, tokenizer: Path, rules: DataRules, unit: WorkUnit) -> bytes:
    """The unit's window of the owner's training tokens (the tokenized copy is made or reused here)."""
    folder, _ = local.prepare(tokenizer, rules)
    dataset = TokenDataset.open(folder)
    needed = unit.recipe.tokens_needed
    if dataset.vocab_size > unit.model.config.vocab_size:
        raise LocalDataError("bad_tokenizer", "the campaign's tokenizer doesn't match its model's vocabulary")
    available = dataset.num_train_tokens
    if available < needed:
        raise LocalDataError("too_little", f"your files hold {available} training tokens; a unit needs {needed}")
    start = random.Random(unit.seed).randrange(available - needed + 1)
    tokens = dataset.train_slice(start, needed)
    return np.ascontiguousarray(tokens.astype(unit.data_dtype)).tobytes()


class _Unreachable(Exception):
    def __init__(self, reason: str, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Unauthorized(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
