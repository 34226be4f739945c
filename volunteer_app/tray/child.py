"""The training child process: the worker core in its own process, driven over a pipe.

The tray app keeps its window responsive and survives a crash in training (out of memory, a driver
fault, a bug) because all of it happens here. The app side:

    child = TrainingChild(ChildConfig("ws://127.0.0.1:8470/ws"), deliver=queue.put)
    child.start()          # ChildReady, DeviceChosen, then the worker's events arrive via `deliver`
    child.resume()         # it starts paused unless ChildConfig.start_paused is False
    child.pause()          # acknowledged by StateChanged(PAUSED) once the step is done
    child.stop()           # checkpoint, goodbye, exit; ChildExited(expected=True) comes last

`deliver` is called on a reader thread; the app hands the messages to its own thread. Every message
is one of `volunteer_app.tray.ipc`'s dataclasses, JSON on the wire, never a pickle. The child runs
at the lowest CPU priority (`ChildConfig.nice`) and stops on its own when the app's end of the pipe closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import hmac
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from volunteer_app.duty import DutyCycle
from volunteer_app.environment import child_environment
from volunteer_app.events import Downloading, StateChanged, TrainingProgress, WorkerEvent
from volunteer_app.tray.ipc import (
    MAX_MESSAGE_BYTES,
    ChildConfig,
    ChildExited,
    ChildFinished,
    ChildMessage,
    ChildReady,
    Command,
    DeviceChosen,
    IpcError,
    Pause,
    Resume,
    Stop,
    decode,
    encode,
)

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess

    from volunteer_app.worker import Worker

__all__ = ["ChildStartError", "TrainingChild"]

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0  # a step, a checkpoint and a goodbye; then the process is killed
CONNECT_TIMEOUT_S = 60.0  # an interpreter's start and a few imports, on a slow disk
HANDSHAKE_TIMEOUT_S = 5.0  # for a connection to show the token
TOKEN_BYTES = 32
# Windows: no console window for the training Python, and the idle priority class (POSIX uses nice).
_CREATION_FLAGS = getattr(subprocess, "CREATE_NO_WINDOW", 0) | getattr(subprocess, "IDLE_PRIORITY_CLASS", 0)
ADDRESS_ENV, TOKEN_ENV = "COMMONWEIGHTS_CHILD_ADDRESS", "COMMONWEIGHTS_CHILD_TOKEN"


class TrainingChild:
    """The app's handle on one training process; see the module docstring. Methods are called from
    one thread (the app's); `deliver` runs on the handle's reader thread."""

    def __init__(
        self, config: ChildConfig, deliver: Callable[[ChildMessage], None], *, stop_grace_s: float = STOP_GRACE_S
    ) -> None:
        self.config = config
        self._deliver = deliver
        self._stop_grace_s = stop_grace_s
        self._process: SpawnProcess | _Subprocess | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._killer: threading.Timer | None = None
        self._stop_requested = False
        self.paused = config.start_paused
        # The CPU-time cap, held by suspending the process for the rest of each second (volunteer_app.duty);
        # where that can't be done (Windows), the child rests between steps itself (worker.Throttle).
        self.duty_cycle: DutyCycle | None = None
        self._cycle_lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self) -> None:
        """Start the process; raises ChildStartError when another interpreter's never connects."""
        if self._process is not None:
            raise RuntimeError("a TrainingChild starts once; make a new one to restart")
        cycled = min(self.config.cpu_percent, self.config.gpu_percent) < 100 and DutyCycle.supported()
        config = dataclasses.replace(self.config, cpu_percent=100) if cycled else self.config
        if self.config.python:
            self._process, self._conn = _launch(self.config.python, encode(config))
        else:
            context = multiprocessing.get_context("spawn")
            ours, theirs = context.Pipe(duplex=True)
            process = context.Process(
                target=child_main, args=(theirs, encode(config)), name="commonweights-training", daemon=True
            )
            process.start()
            theirs.close()  # so the reader sees EOF when the child's end goes away
            self._process, self._conn = process, ours
        if cycled and self._process.pid is not None:
            self.duty_cycle = DutyCycle(self._process.pid, self.config.cpu_percent)
            self.duty_cycle.start()
        self._reader = threading.Thread(target=self._read, name="commonweights-child-reader", daemon=True)
        self._reader.start()

    def pause(self) -> None:
        self.paused = True
        self._send(Pause())

    def resume(self) -> None:
        self.paused = False
        self._send(Resume())

    def stop(self) -> None:
        """Ask for a clean stop; kill the process if it is still there after the grace period."""
        if self._stop_requested:
            return
        self._stop_requested = True
        self._end_cycle()  # running, so that it hears the stop and checkpoints at full speed
        self._send(Stop())
        self._killer = threading.Timer(self._stop_grace_s, self.kill)
        self._killer.daemon = True
        self._killer.start()

    def kill(self) -> None:
        self._stop_requested = True
        self._end_cycle()
        if self._process is not None and self._process.is_alive():
            self._process.kill()

    def join(self, timeout: float) -> bool:
        """Wait for the process and the reader to finish; True when both did."""
        deadline = time.monotonic() + timeout
        if self._reader is not None:
            self._reader.join(max(0.0, deadline - time.monotonic()))
            return not self._reader.is_alive()
        return True

    def _device_chosen(self, device: DeviceChosen) -> None:
        """On a GPU, the cap is the GPU's share of time as well as the CPU's: the process drives both."""
        with self._cycle_lock:
            cycle = self.duty_cycle
        if cycle is not None:
            cycle.set_percent(duty_percent(self.config, device.kind))

    def _end_cycle(self) -> None:
        """Once only (stop, kill and the reader all get here): the last SIGCONT goes to our child, never
        to a process that took its pid after it was reaped."""
        with self._cycle_lock:
            cycle, self.duty_cycle = self.duty_cycle, None
        if cycle is not None:
            cycle.stop()

    def _send(self, command: Command) -> None:
        conn = self._conn
        if conn is None:
            return
        with contextlib.suppress(OSError, ValueError):  # the child is gone; the reader reports how
            conn.send_bytes(encode(command))

    def _read(self) -> None:
        conn, process = self._conn, self._process
        assert conn is not None and process is not None
        finished = False
        try:
            while True:
                data = conn.recv_bytes(MAX_MESSAGE_BYTES)
                try:
                    message = decode(data)
                except IpcError as error:
                    log.warning("ignoring a message from the training process: %s", error)
                    continue
                finished = finished or isinstance(message, ChildFinished)
                if isinstance(message, DeviceChosen):
                    self._device_chosen(message)
                self._deliver(message)
        except (EOFError, OSError):
            pass
        self._end_cycle()
        process.join(self._stop_grace_s)
        if process.is_alive():  # closed its pipe but did not exit
            process.kill()
            process.join(5.0)
        if self._killer is not None:
            self._killer.cancel()
        with contextlib.suppress(OSError):
            conn.close()
        self._deliver(ChildExited(process.exitcode, expected=self._stop_requested, finished=finished))


class ChildStartError(OSError):
    """The training environment's interpreter could not be started or did not connect."""


class _Subprocess:
    """A child started with subprocess, as the app's side sees a multiprocessing one."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def exitcode(self) -> int | None:
        return self._process.poll()

    def is_alive(self) -> bool:
        return self._process.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._process.kill()


def _launch(python: str, config: bytes) -> tuple[_Subprocess, Connection]:
    """Start `python -m volunteer_app.tray.child` (the training environment's interpreter) and connect
    to it over loopback: the child dials the port it is given and proves itself with a one-time
    token before anything else is read, so no other local process can take its place. Then the
    config goes out, as through the multiprocessing pipe."""
    token = secrets.token_bytes(TOKEN_BYTES)
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.2)
        env = {**child_environment(), ADDRESS_ENV: f"127.0.0.1:{server.getsockname()[1]}", TOKEN_ENV: token.hex()}
        # -I: neither the working folder nor PYTHONPATH nor the user's site-packages shadow the environment.
        argv = [python, "-I", "-m", "volunteer_app.tray.child"]
        try:
            process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, creationflags=_CREATION_FLAGS)
        except OSError as error:
            raise ChildStartError(f"could not start the training environment's Python {python}: {error}") from None
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise ChildStartError(f"the training process exited with code {process.returncode} before it was up")
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise ChildStartError(f"the training process did not connect within {CONNECT_TIMEOUT_S:.0f} s")
            try:
                sock, _ = server.accept()
            except TimeoutError:
                continue
            if _proves(sock, token):
                break
            sock.close()  # not our child
    sock.settimeout(None)
    conn = Connection(sock.detach())
    try:
        conn.send_bytes(config)
    except OSError as error:
        conn.close()
        process.kill()
        process.wait()
        raise ChildStartError(f"the training process went away while starting: {error}") from None
    return _Subprocess(process), conn


def _proves(sock: socket.socket, token: bytes) -> bool:
    """Whether the connection's first TOKEN_BYTES bytes, within a few seconds, are the token."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    received = b""
    try:
        while len(received) < len(token):
            chunk = sock.recv(len(token) - len(received))
            if not chunk:
                return False
            received += chunk
    except OSError:  # the timeout included
        return False
    return hmac.compare_digest(received, token)


# --- In the child process -------------------------------------------------------------------


class _Outbox:
    """The child's end of the pipe: one writer at a time, progress thinned to `interval` seconds."""

    def __init__(self, conn: Connection, interval: float) -> None:
        self.conn = conn
        self.interval = interval
        self.lock = threading.Lock()
        self.last_progress = 0.0
        self.held: WorkerEvent | None = None  # the newest progress not yet sent

    def send(self, message: object) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.conn.send_bytes(encode(message))

    def event(self, event: WorkerEvent) -> None:
        if isinstance(event, TrainingProgress | Downloading):
            now = time.monotonic()
            last = event.step >= event.steps_total if isinstance(event, TrainingProgress) else event.done >= event.total
            if now - self.last_progress < self.interval and not last:
                self.held = event
                return
            self.last_progress, self.held = now, None
        elif self.held is not None and isinstance(event, StateChanged):
            held, self.held = self.held, None  # the step a pause stopped at, before the pause itself
            self.send(held)
        self.send(event)


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the app dies, however it dies. A child the duty
    cycle left stopped could not notice otherwise (a stopped process reads no EOF), and would keep its
    memory, GPU memory included, for good. (A fatal signal ends a stopped process too.)"""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the app died before the request took effect
        os._exit(1)


def child_main(conn: Connection, raw_config: bytes) -> None:
    """The child process's entry point (a module-level function, so `spawn` can import it)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal is for the app, which stops us
    logging.basicConfig(level=logging.WARNING, format="training: %(levelname)s %(name)s: %(message)s")
    config = decode(raw_config)
    if not isinstance(config, ChildConfig):
        raise SystemExit("the training process needs a ChildConfig")
    outbox = _Outbox(conn, config.progress_interval_s)
    outbox.send(ChildReady(os.getpid()))
    commands = _Commands(outbox, paused=config.start_paused)
    threading.Thread(target=commands.obey, args=(conn,), name="commonweights-commands", daemon=True).start()
    if hasattr(os, "nice") and config.nice > 0:
        with contextlib.suppress(OSError):
            os.nice(config.nice)  # like BOINC: by default training gets only CPU time nobody else wants

    os.environ.update(gpu_environment(config.gpus))  # before torch sees a GPU
    from volunteer_app.worker import Worker, WorkerConfig, WorkerError  # torch loads here

    announced = False
    worker: Worker | None = None

    def on_event(event: WorkerEvent) -> None:
        nonlocal announced
        device = worker.device if worker is not None else None
        if not announced and device is not None:
            announced = True
            outbox.send(DeviceChosen(device.kind, device.name, device.memory_bytes))
        outbox.event(event)

    def path(text: str | None) -> Path | None:
        return Path(text) if text else None

    try:
        worker_config = WorkerConfig(
            coordinator_url=config.coordinator_url,
            device=config.device,
            threads=config.threads,
            cpu_percent=config.cpu_percent,
            memory_limit=config.memory_limit,
            config_dir=path(config.config_dir),
            cache_dir=path(config.cache_dir),
            data_dir=path(config.data_dir),
        )
        if config.name:
            worker_config = dataclasses.replace(worker_config, name=config.name)
    except WorkerError as refusal:
        outbox.send(ChildFinished(0, 0.0, refusal.code, refusal.message))
        return
    worker = Worker(worker_config, events=on_event)
    commands.attach(worker)
    summary = asyncio.run(worker.run())
    failure = summary.error
    outbox.send(
        ChildFinished(
            summary.units, summary.credit, failure.code if failure else None, failure.message if failure else None
        )
    )


class _Commands:
    """Commands from the app, read from the start: before the worker exists (torch takes seconds to
    load) pause and resume are remembered, and a stop, or the app going away, ends the process at
    once, since there is nothing to save yet. Afterwards they go to the worker; EOF means stop."""

    def __init__(self, outbox: _Outbox, *, paused: bool) -> None:
        self.outbox = outbox
        self.lock = threading.Lock()
        self.paused = paused
        self.worker: Worker | None = None

    def attach(self, worker: Worker) -> None:
        with self.lock:
            self.worker = worker
            if self.paused:
                worker.pause()

    def obey(self, conn: Connection) -> None:
        while True:
            try:
                command: object = decode(conn.recv_bytes(MAX_MESSAGE_BYTES))
            except (EOFError, OSError):
                command = Stop()
            except IpcError as error:
                log.warning("ignoring a command from the app: %s", error)
                continue
            with self.lock:
                worker = self.worker
                if isinstance(command, Pause | Resume):
                    self.paused = isinstance(command, Pause)
                    if worker is not None:
                        (worker.pause if self.paused else worker.resume)()
                elif isinstance(command, Stop):
                    if worker is None:
                        self.outbox.send(ChildFinished(0, 0.0, None, None))
                        os._exit(0)  # still loading: nothing to checkpoint, no reason to wait for torch
                    worker.stop()
                    return


def duty_percent(config: ChildConfig, device_kind: str) -> int:
    """The share of each second the training process runs: the CPU cap, and on a GPU the GPU cap too."""
    if device_kind == "cpu":
        return config.cpu_percent
    return min(config.cpu_percent, config.gpu_percent)


def gpu_environment(gpus: tuple[int, ...]) -> dict[str, str]:
    """The variables that hide every GPU but `gpus` from CUDA and ROCm (empty: every GPU is seen). The
    numbers are nvidia-smi's, which go by PCI bus: CUDA numbers the fastest card first unless told so."""
    if not gpus:
        return {}
    visible = ",".join(str(index) for index in gpus)
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": visible, "HIP_VISIBLE_DEVICES": visible}


def _connect_and_run() -> None:
    """`python -m volunteer_app.tray.child`: the training environment's side of `_launch`."""
    address, token = os.environ.pop(ADDRESS_ENV, ""), os.environ.pop(TOKEN_ENV, "")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not token:
        raise SystemExit("started by the Commonweights app only (it passes the address to connect to)")
    sock = socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S)
    sock.sendall(bytes.fromhex(token))  # raw, before any framing: the app checks it first
    sock.settimeout(None)
    conn = Connection(sock.detach())
    child_main(conn, conn.recv_bytes(MAX_MESSAGE_BYTES))


if __name__ == "__main__":
    _connect_and_run()
