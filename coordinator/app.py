"""The coordinator's aiohttp application factory.

    app = create_app(CoordinatorConfig(data_dir=Path("cw-data")))
    web.run_app(app, host="127.0.0.1", port=8470)

State lives under typed `web.AppKey`s; the background work (lease expiry and round deadlines, the
holdout evaluator) runs in tasks owned by the app's `cleanup_ctx`, so it starts with the server and
is cancelled before the store closes. Shutdown closes every volunteer's socket with 1001 (going
away), which volunteers treat as "reconnect later". A malformed HTTP request (a header line too long,
broken framing) is the client's fault: it gets its 400 and the log one short line, not a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from coordinator import events
from coordinator.appkeys import EVENTS, METRICS, SERVICE, SOCKETS
from coordinator.dashboard import add_dashboard
from coordinator.forwarding import add_internal_routes
from coordinator.gateway import add_gateway
from coordinator.metrics import Metrics
from coordinator.rest import add_routes
from coordinator.service import Coordinator, CoordinatorConfig
from coordinator.store import LeaseLost
from protocol.errors import CloseCode, ErrorCode
from protocol.messages import ErrorMessage, encode

__all__ = ["BAD_REQUEST_LOG_EVERY_S", "TICK_SECONDS", "QuietBadRequests", "create_app"]

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
BAD_REQUEST_LOG_EVERY_S = 10.0


class QuietBadRequests(logging.Filter):
    """aiohttp logs a request it could not parse with a full traceback, as if the server had failed,
    and anyone can send thousands a second. This filter turns that into one short warning at most
    every `BAD_REQUEST_LOG_EVERY_S`, counting the ones it held back; other records pass untouched."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self._last = -math.inf
        self._held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        now = self.clock()
        if now - self._last < BAD_REQUEST_LOG_EVERY_S:
            self._held_back += 1
            return False
        peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        reason = " ".join(str(error.message or type(error).__name__).split())[:200]
        more = f" (and {self._held_back} more since the last such line)" if self._held_back else ""
        record.msg, record.args = "refused a malformed HTTP request from %s: %s%s", (peer, reason, more)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        self._last, self._held_back = now, 0
        return True


# aiohttp's connection handlers log through this logger (see create_app's handler_args).
HTTP_LOG = logging.getLogger("coordinator.http")
HTTP_LOG.addFilter(QuietBadRequests())


def create_app(config: CoordinatorConfig) -> web.Application:
    app = web.Application(client_max_size=512 * 1024, handler_args={"logger": HTTP_LOG})
    app[METRICS] = Metrics()
    app[SOCKETS] = set()
    app[EVENTS] = []
    app.cleanup_ctx.append(_service_context(config))
    app.cleanup_ctx.append(_shared_events)
    app.cleanup_ctx.append(_background_tasks)
    app.on_shutdown.append(_close_sockets)
    add_gateway(app)
    add_routes(app)
    add_dashboard(app)
    add_internal_routes(app)
    return app


def _service_context(config: CoordinatorConfig):  # type: ignore[no-untyped-def]
    async def context(app: web.Application) -> AsyncIterator[None]:
        service = Coordinator.open(config)
        app[SERVICE] = service
        yield
        service.close()

    return context


async def _shared_events(app: web.Application) -> AsyncIterator[None]:
    """Replicas share their dashboards' live events through the database (coordinator.events)."""
    store = app[SERVICE].store
    if app[SERVICE].cluster is None or not isinstance(store, events.Notifier):
        yield
        return
    shared = events.SharedEvents(app, store)
    shared.start()
    app[events.SHARED] = shared
    yield
    shared.stop()


async def _background_tasks(app: web.Application) -> AsyncIterator[None]:
    tasks = [
        asyncio.create_task(_ticker(app)),
        asyncio.create_task(_evaluator(app)),
        asyncio.create_task(app[METRICS].watch_event_loop_lag()),
    ]
    if app[SERVICE].cluster is not None:
        tasks.append(asyncio.create_task(_leadership(app)))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _ticker(app: web.Application) -> None:
    """Expire leases and close rounds whose deadline passed."""
    service = app[SERVICE]
    while True:
        try:
            for runtime in list(service.runtimes.values()):
                await service.workers.run_in_order(runtime.row.id, runtime.tick)
        except LeaseLost as lost:  # another replica took the campaign over; the next leadership step drops it
            log.info("%s", lost)
        except Exception:
            log.exception("tick failed")
        await asyncio.sleep(TICK_SECONDS)


async def _leadership(app: web.Application) -> None:
    """Renew the campaigns this replica leads, claim the ones nobody does (coordinator.replicas). On a
    thread of its own, not the workers' pool: a renewal must not queue behind a burst of updates."""
    cluster = app[SERVICE].cluster
    assert cluster is not None
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(cluster.ttl_s / 3)
        try:
            await loop.run_in_executor(None, cluster.step)
        except Exception:
            log.exception("the leadership step failed")


async def _evaluator(app: web.Application) -> None:
    """Holdout loss of each new version, computed on a worker thread off the event loop."""
    service = app[SERVICE]
    loop = asyncio.get_running_loop()
    while True:
        if not service.eval_queue:
            await asyncio.sleep(TICK_SECONDS)
            continue
        campaign_id, version = service.eval_queue.pop(0)
        if service.cluster is not None and campaign_id not in service.runtimes:
            continue  # its leader measures it
        if service.evaluations.pending(campaign_id, version):
            service.eval_queue.append((campaign_id, version))  # volunteers are measuring it
            await asyncio.sleep(TICK_SECONDS)
            continue
        try:
            settled = service.evaluations.settled_loss(campaign_id, version)
            if settled is not None:  # two volunteers agreed on it (already stored)
                loss = settled
            else:
                job = await service.workers.run(service.eval_job, campaign_id, version)
                if job is None:
                    continue
                loss = await loop.run_in_executor(None, job)
                await service.workers.run(service.store.set_holdout_loss, campaign_id, version, loss)
            events.publish(
                app, {"type": "version", "campaign_id": campaign_id, "version": version, "holdout_loss": loss}
            )
        except Exception:
            log.exception("evaluating campaign %s version %s failed", campaign_id, version)


async def _close_sockets(app: web.Application) -> None:
    farewell = encode(
        ErrorMessage(
            code=ErrorCode.SERVER_SHUTTING_DOWN,
            message="the coordinator is shutting down; your app reconnects by itself when it is back",
            fatal=True,
        )
    )
    sockets: set[web.WebSocketResponse] = app[SOCKETS]
    for ws in list(sockets):
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(farewell)
        await ws.close(code=int(CloseCode.GOING_AWAY), message=b"coordinator shutting down")
