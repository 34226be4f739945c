"""A real coordinator process on a free loopback port, for tests that drive it from outside.

    with live_coordinator(tmp_path, small_dataset) as server:
        status, body = server.call("POST", "/api/tokens", token=server.admin_token, body={"label": "lead"})

It runs `python -m commonweights coordinator serve` the way an admin would (coordinator.local),
with a temporary data directory and the given prepared dataset (as both `small` and `stdlib`, so
the embedded corpus is never prepared in full), and talks to it through coordinator.client.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from coordinator.client import CoordinatorClient
from coordinator.local import start_coordinator, stop

__all__ = ["REPO", "LiveCoordinator", "live_coordinator", "poll", "stop"]

REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def poll(what: str, check: Callable[[], T | None], *, timeout: float, every: float = 0.2) -> T:
    """`check()`'s first truthy answer within `timeout` seconds; fails naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@dataclass
class LiveCoordinator:
    url: str
    port: int
    admin_token: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def api(self) -> CoordinatorClient:
        """The REST API as the admin; `.with_token(...)` for anyone else."""
        return CoordinatorClient(self.url, self.admin_token)

    def call(self, method: str, path: str, *, token: str | None = None, body: object = None) -> tuple[int, Any]:
        """(status, JSON body) of any request as `token`'s holder (anonymous without one), errors included."""
        return CoordinatorClient(self.url, token).call(method, path, body=body)

    def lead_token(self, label: str = "lead") -> str:
        return str(self.api.create_token(label, role="lead")["token"])

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def live_coordinator(tmp: Path, dataset: Path, *, extra_args: Sequence[str] = ()) -> Iterator[LiveCoordinator]:
    """`extra_args` go to `coordinator serve` as they are (e.g. ["--idle-timeout", "2"])."""
    data_dir = tmp / "coordinator"
    log = tmp / "coordinator.log"
    try:
        local = start_coordinator(
            data_dir, datasets={"small": dataset, "stdlib": dataset}, log=log, extra_args=extra_args
        )
    except (RuntimeError, TimeoutError) as error:
        raise AssertionError(f"{error}:\n{log.read_text(errors='replace')[-4000:]}") from error
    try:
        port = int(local.base.rsplit(":", 1)[1])
        yield LiveCoordinator(local.base, port, local.token, data_dir, log, local.process)
    finally:
        stop(local.process)
