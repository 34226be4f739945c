"""Live updates for the dashboard over Server-Sent Events.

    GET /api/campaigns/7/events
    ←  event: stats      data: {"campaign_id": 7, "tokens_per_second": 812.5, ...}     (every few seconds)
    ←  event: version    data: {"campaign_id": 7, "version": 12, "holdout_loss": 3.91}  (as it is evaluated)
    ←  : heartbeat                                                                    (when otherwise idle)

Producers — the holdout evaluator, the REST handlers — call `put_nowait` on every subscriber
queue in `app[EVENTS]` (or `publish`). A subscriber's queue is bounded and drops its oldest event
instead of blocking or raising, so a slow browser never stalls or breaks a producer; a stream that
lost events sends `resync`, telling the page to refetch. The number of subscribers is bounded
(`can_subscribe`), each stream removes its queue when it ends, and shutdown ends every stream.

The `stats` snapshots are shared (`SharedSnapshots`): each is computed at most once per interval
however many streams send it, since the server-wide one reads every campaign's and volunteer's
totals, and computed per subscriber a hundred dashboards kept a core busy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Protocol, runtime_checkable

from aiohttp import web

from coordinator.appkeys import EVENTS

__all__ = [
    "HEARTBEAT_S",
    "MAX_SUBSCRIBERS",
    "QUEUE_SIZE",
    "SHARED",
    "SNAPSHOTS",
    "STATS_INTERVAL_S",
    "SharedEvents",
    "SharedSnapshots",
    "Subscription",
    "can_subscribe",
    "deliver",
    "end_streams",
    "publish",
    "stream",
]

log = logging.getLogger(__name__)

MAX_SUBSCRIBERS = 100
QUEUE_SIZE = 256
STATS_INTERVAL_S = 2.0
HEARTBEAT_S = 15.0
RETRY_MS = 3000  # how long a browser's EventSource waits before reconnecting

Event = dict[str, object]
SHUTDOWN = "shutdown"


class Subscription(asyncio.Queue[Event]):
    """A bounded queue that never refuses an event: when full, the oldest one goes (and is counted).
    `on_event` is called with each event put, whoever the producer."""

    def __init__(self, maxsize: int = QUEUE_SIZE, on_event: Callable[[], None] | None = None) -> None:
        super().__init__(maxsize)
        self.dropped = 0
        self.on_event = on_event

    def put_nowait(self, item: Event) -> None:
        if self.on_event is not None:
            self.on_event()
        while self.full():
            self.get_nowait()
            self.dropped += 1
        super().put_nowait(item)


class SharedSnapshots:
    """Snapshots computed at most once per `max_age` seconds each, whoever asks and how often.

        >>> shared.get("server", compute_totals, max_age=2.0)   # computes
        >>> shared.get("server", compute_totals, max_age=2.0)   # the same dict, not computed again

    `stale()` drops them all: streams call it on every event they are sent, so a `stats` that
    follows an event in a stream was computed after it (after the version's loss was stored)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._taken: dict[Hashable, tuple[float, Event]] = {}

    def get(self, key: Hashable, compute: Callable[[], Event], max_age: float) -> Event:
        now = self.clock()
        taken = self._taken.get(key)
        if taken is None or now - taken[0] >= max_age:
            taken = (now, compute())
            self._taken[key] = taken
        return taken[1]

    def stale(self) -> None:
        self._taken.clear()


SNAPSHOTS = web.AppKey("event_snapshots", SharedSnapshots)


def publish(app: web.Application, event: Event) -> None:
    """Send `event` to every subscriber: on every replica, where replicas share the database (`SharedEvents`)."""
    shared = app.get(SHARED)
    if shared is not None and event.get("type") != SHUTDOWN:
        shared.send(event)
    else:
        deliver(app, event)


def deliver(app: web.Application, event: Event) -> None:
    """Send `event` to this process's subscribers."""
    subscribers = app[EVENTS]
    for queue in list(subscribers):
        queue.put_nowait(event)


@runtime_checkable
class Notifier(Protocol):
    """A store that can broadcast to every process using it (PostgreSQL's NOTIFY/LISTEN)."""

    def notify(self, channel: str, payload: str) -> None: ...

    def listen(self, channel: str, stop: threading.Event) -> Iterator[str]: ...


class SharedEvents:
    """Events for the subscribers of every replica: each is sent with NOTIFY, and each replica's listener
    (one connection, one thread) delivers what it hears to its own subscribers, its own events included.
    An event is small (a few fields), far under NOTIFY's 8000 bytes."""

    CHANNEL = "commonweights_events"

    def __init__(self, app: web.Application, notifier: Notifier) -> None:
        self.app = app
        self.notifier = notifier
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set once the listener has connected (tests wait for it)

    def send(self, event: Event) -> None:
        payload = json.dumps(event, separators=(",", ":"))
        future = asyncio.get_running_loop().run_in_executor(None, self.notifier.notify, self.CHANNEL, payload)
        future.add_done_callback(_log_failure)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._listen, args=(loop,), name="cw-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stop.is_set():
            try:
                heard = self.notifier.listen(self.CHANNEL, self._stop)
                self.listening.set()
                for payload in heard:
                    event = json.loads(payload)
                    if isinstance(event, dict):
                        loop.call_soon_threadsafe(deliver, self.app, event)
            except Exception:  # the connection dropped: listen again after a pause
                log.warning("the shared event listener lost its connection; reconnecting", exc_info=True)
                self._stop.wait(1.0)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("an event could not be sent to the other replicas: %s", future.exception())


SHARED = web.AppKey("shared_events", SharedEvents)


def can_subscribe(app: web.Application) -> bool:
    return len(app[EVENTS]) < MAX_SUBSCRIBERS


async def end_streams(app: web.Application) -> None:
    """on_shutdown: end every open stream so shutdown doesn't wait for browsers to hang up."""
    publish(app, {"type": SHUTDOWN})


def _frame(kind: str, data: Mapping[str, object]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream(
    request: web.Request,
    *,
    snapshot: Callable[[], Event],
    key: Hashable,
    wants: Callable[[Event], bool],
    interval: float | None = None,
) -> web.StreamResponse:
    """Serve one subscriber until it hangs up or the server shuts down.

    `snapshot()` is sent as a `stats` event at once and every `interval` seconds, computed at most
    once per interval for every stream of the same `key` (app[SNAPSHOTS]); queued events for which
    `wants(event)` holds are sent as they come, named by their `type`. `interval` defaults to
    STATS_INTERVAL_S."""
    interval = STATS_INTERVAL_S if interval is None else interval
    shared = request.app[SNAPSHOTS]

    def stats() -> bytes:
        return _frame("stats", shared.get(key, snapshot, interval))

    heartbeat = HEARTBEAT_S
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a reverse proxy must not buffer the stream
        }
    )
    await response.prepare(request)
    subscribers = request.app[EVENTS]
    queue = Subscription(on_event=shared.stale)
    subscribers.append(queue)
    loop = asyncio.get_running_loop()
    try:
        await response.write(f"retry: {RETRY_MS}\n\n".encode() + stats())
        last_stats = last_write = loop.time()
        while True:
            now = loop.time()
            wait = max(0.0, min(last_stats + interval, last_write + heartbeat) - now)
            try:
                event: Event | None = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                event = None
            out = b""
            if event is not None:
                if event.get("type") == SHUTDOWN:
                    break
                if wants(event):
                    out += _frame(str(event.get("type", "message")), event)
            if queue.dropped:
                out += _frame("resync", {"dropped": queue.dropped})
                queue.dropped = 0
            now = loop.time()
            if now - last_stats >= interval:
                out += stats()
                last_stats = now
            if not out and now - last_write >= heartbeat:
                out = b": heartbeat\n\n"
            if out:
                await response.write(out)
                last_write = now
    except ConnectionError:
        pass  # the browser went away
    finally:
        if queue in subscribers:
            subscribers.remove(queue)
    return response
