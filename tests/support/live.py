"""A real coordinator process on a free loopback port, for tests that drive it from outside.

    with live_coordinator(tmp_path, small_dataset) as server:
        status, body = server.call("POST", "/api/tokens", token=server.admin_token, body={"label": "lead"})

It runs `python -m commonweights coordinator serve` the way an admin would, with a temporary data
directory and the given prepared dataset (as both `small` and `stdlib`, so the embedded corpus is
never prepared in full).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = 60.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

    def call(self, method: str, path: str, *, token: str | None = None, body: object = None) -> tuple[int, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def lead_token(self, label: str = "lead") -> str:
        status, body = self.call("POST", "/api/tokens", token=self.admin_token, body={"label": label, "role": "lead"})
        assert status == 201, body
        return str(body["token"])

    def server_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def live_coordinator(tmp: Path, dataset: Path) -> Iterator[LiveCoordinator]:
    port = free_port()
    data_dir = tmp / "coordinator"
    log = tmp / "coordinator.log"
    command = [
        sys.executable,
        "-m",
        "commonweights",
        "coordinator",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--dataset",
        f"small={dataset}",
        "--dataset",
        f"stdlib={dataset}",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the coordinator exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        poll("the coordinator to answer /api/health", healthy, timeout=STARTUP_S)
        token = (data_dir / "admin_token").read_text().strip()
        yield LiveCoordinator(url, port, token, data_dir, log, process)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Ctrl-C, then kill if it doesn't go within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
