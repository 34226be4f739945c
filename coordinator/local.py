"""Running a coordinator on this machine as a separate process: the demo, benchmarks and tests.

>>> with local_coordinator(data_dir, datasets={"stdlib": path}) as coordinator:
...     coordinator.api.post_campaign(spec)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.client import ApiError, CoordinatorClient

__all__ = ["LocalCoordinator", "free_port", "local_coordinator", "start_coordinator", "stop", "wait_until_healthy"]


@dataclass(frozen=True)
class LocalCoordinator:
    process: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT
    token: str  # the admin token
    data_dir: Path

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://", 1) + "/ws"

    @property
    def api(self) -> CoordinatorClient:
        """The REST API, as the admin."""
        return CoordinatorClient(self.base, self.token)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_healthy(
    api: CoordinatorClient, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll /api/health until it answers, the process dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the coordinator exited with code {process.returncode} before it was ready")
        with contextlib.suppress(OSError, ApiError):
            api.health(timeout=2)
            return
        time.sleep(0.1)
    raise TimeoutError(f"{api.base_url}/api/health did not answer within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes], *, grace: float = 10) -> None:
    """Ask politely (SIGINT, like Ctrl-C), then insist."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace)


def start_coordinator(
    data_dir: Path,
    *,
    datasets: Mapping[str, Path] | None = None,
    port: int | None = None,
    log: Path | None = None,
    log_level: str = "warning",
    extra_args: Sequence[str] = (),
) -> LocalCoordinator:
    """`commonweights coordinator serve` in a child process, returned once /api/health answers."""
    port = port or free_port()
    command = [sys.executable, "-m", "commonweights", "coordinator", "serve", "--data-dir", str(data_dir),
               "--port", str(port), "--log-level", log_level]  # fmt: skip
    for name, path in (datasets or {}).items():
        command += ["--dataset", f"{name}={path}"]
    command += list(extra_args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its log is current when a test or the demo reads it
    with contextlib.ExitStack() as files:
        output = files.enter_context(log.open("ab")) if log is not None else subprocess.DEVNULL
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(CoordinatorClient(base), timeout=120, process=process)
    except BaseException:
        stop(process)
        raise
    return LocalCoordinator(process, base, (data_dir / "admin_token").read_text().strip(), data_dir)


@contextlib.contextmanager
def local_coordinator(data_dir: Path, **kwargs: Any) -> Iterator[LocalCoordinator]:
    coordinator = start_coordinator(data_dir, **kwargs)
    try:
        yield coordinator
    finally:
        stop(coordinator.process)
