"""Running a coordinator on this machine as a separate process: the demo, benchmarks and tests.

>>> with local_coordinator(data_dir, datasets={"stdlib": path}) as coordinator:
...     http_json(f"{coordinator.base}/api/campaigns", data=spec, token=coordinator.token)
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LocalCoordinator", "free_port", "http_json", "local_coordinator", "read_metric", "stop", "wait_for"]


@dataclass(frozen=True)
class LocalCoordinator:
    process: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT
    token: str  # the admin token
    data_dir: Path

    @property
    def ws_url(self) -> str:
        return self.base.replace("http://", "ws://", 1) + "/ws"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_json(
    url: str, *, data: Any = None, token: str | None = None, method: str | None = None, timeout: float = 30
) -> Any:
    """A JSON request; HTTP errors raise urllib.error.HTTPError (its body holds the JSON error)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers, method=method or ("POST" if body else "GET"))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(url: str, *, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers, the process dies, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the coordinator exited with code {process.returncode} before it was ready")
        with contextlib.suppress(OSError, urllib.error.URLError):
            urllib.request.urlopen(url, timeout=2).close()
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def read_metric(base: str, name: str) -> float:
    """The sum over all label sets of one Prometheus metric from /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return sum(float(v) for v in values)


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
    output = log.open("ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/api/health", timeout=120, process=process)
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
