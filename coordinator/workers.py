"""Where the coordinator's blocking work runs, so the event loop only moves frames.

    >>> workers = Workers()
    >>> deadline = await workers.run(runtime.heartbeat, volunteer_id, unit_id, lease_id)
    >>> outcome = await workers.run_in_order(campaign_id, runtime.commit, volunteer_id, lease_id, prepared, report)

Two kinds of thread: a shared pool for work whose order doesn't matter (store reads and small
writes, blob reads, decoding and storing an update), and one single-thread lane per campaign for
the work that must happen in arrival order (committing verdicts, accumulating, closing a round).
A round's close then holds up only its own campaign's lane, never heartbeats, downloads or other
campaigns. SQLite, hashing, fsync, numpy and torch release the GIL, so the pool uses both cores.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["Workers"]

P = ParamSpec("P")
T = TypeVar("T")


class Workers:
    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or min(16, 4 * (os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cw-work")
        self._lanes: dict[int, ThreadPoolExecutor] = {}
        self._lanes_lock = threading.Lock()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args)` on the shared pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def run_in_order(self, campaign_id: int, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args)` on the campaign's lane: after every call submitted to it before, in order."""
        return await asyncio.get_running_loop().run_in_executor(self.lane(campaign_id), lambda: fn(*args, **kwargs))

    def lane(self, campaign_id: int) -> ThreadPoolExecutor:
        with self._lanes_lock:
            lane = self._lanes.get(campaign_id)
            if lane is None:
                lane = ThreadPoolExecutor(1, thread_name_prefix=f"cw-campaign-{campaign_id}")
                self._lanes[campaign_id] = lane
            return lane

    def shutdown(self) -> None:
        """Finish what was submitted (a verdict in flight is committed), then stop the threads."""
        with self._lanes_lock:
            lanes = list(self._lanes.values())
            self._lanes.clear()
        for lane in lanes:
            lane.shutdown(wait=True)
        self._pool.shutdown(wait=True)
