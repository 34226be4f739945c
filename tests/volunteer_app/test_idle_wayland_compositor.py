"""Wayland idle detection (volunteer_app.idle.wayland_idle) against real headless compositors, and against
the protocol for what no real compositor would send.

- KDE's `org_kde_kwin_idle`: Debian 12's sway 1.7 (wlroots 0.15), headless, with `wtype` typing through
  the virtual-keyboard protocol as a user would.
- `ext-idle-notify-v1`: Debian 12's KWin 5.27 (`kwin_wayland --virtual`), which offers both protocols
  (the standard one is chosen). KWin has no virtual keyboard for wtype; the user's return is KWin's own
  `simulate_user_activity` (org_kde_kwin_idle_timeout), which wakes every idle watcher as input does.
- A protocol test compositor in this file (ext-idle-notify-v1.xml and wayland.xml's messages) checks the
  bytes the client sends and sends what a real compositor never would (errors, broken messages), which
  the client must survive.

Each real compositor is skipped, saying why, where it is not installed (`.ci/run` installs sway, wtype
and kwin-wayland).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live import poll, stop
from volunteer_app.idle import BackendUnavailable, detect_idle_source
from volunteer_app.idle.wayland_idle import (
    EXT_NOTIFIER,
    KDE_IDLE,
    WaylandConnection,
    WaylandIdleSource,
    wayland_socket,
)

NOBODY = 65534  # sway refuses to run as root: under root the test runs it as nobody


@pytest.fixture
def sway(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A headless sway; the environment a client of it needs."""
    missing = [tool for tool in ("sway", "wtype") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install sway wtype)")
    # Not under tmp_path: pytest's folders are root's alone, and nobody must reach its runtime dir.
    runtime = Path(tempfile.mkdtemp(prefix="cw-sway-"))
    (runtime / "config").write_text("output HEADLESS-1 resolution 800x600\n")
    command = ["sway", "-c", str(runtime / "config")]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: sway refuses to run as root")
        os.chown(runtime, NOBODY, NOBODY)
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(runtime),
        "XDG_RUNTIME_DIR": str(runtime),
        "WLR_BACKENDS": "headless",
        "WLR_LIBINPUT_NO_DEVICES": "1",
        "WLR_RENDERER": "pixman",
    }
    log = (tmp_path / "sway.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        found = poll(
            "sway's Wayland socket",
            lambda: next(runtime.glob("wayland-[0-9]"), None) or (process.poll() is not None and runtime),
            timeout=30,
        )
        if process.poll() is not None:
            pytest.fail(f"sway exited: {(tmp_path / 'sway.log').read_text(errors='replace')[-2000:]}")
        yield {"XDG_RUNTIME_DIR": str(runtime), "WAYLAND_DISPLAY": found.name}
    finally:
        stop(process)
        log.close()
        shutil.rmtree(runtime, ignore_errors=True)


def test_sway_reports_idle_time_and_typing_resets_it(sway: dict[str, str]) -> None:
    source = detect_idle_source(platform="linux", environ={**sway, "XDG_SESSION_TYPE": "wayland"})
    assert isinstance(source, WaylandIdleSource) and source.protocol == KDE_IDLE
    assert source.name == "wayland-kde-idle" and "org_kde_kwin_idle" in source.description
    poll("sway to report a second and a half of idleness", lambda: (source.idle_seconds() or 0) >= 1.5, timeout=15)
    typed = subprocess.run(["wtype", "x"], env={**os.environ, **sway}, capture_output=True, text=True, timeout=30)
    assert typed.returncode == 0, typed.stderr
    poll("the key press to reset the idle time", lambda: source.idle_seconds() == 0.0, timeout=15)
    poll("the idle time to grow again", lambda: (source.idle_seconds() or 0) >= 1.0, timeout=15)
    source.close()


@pytest.fixture
def kwin(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A headless KWin; the environment a client of it needs."""
    installed = shutil.which("kwin_wayland")
    if installed is None:
        pytest.skip("kwin_wayland not installed (apt-get install kwin-wayland)")
    # The binary carries a file capability (cap_sys_resource) that a container without it in its bounding
    # set refuses to exec, even as root; a copy without it runs the same (KWin wants its own name).
    binary = tmp_path / "bin" / "kwin_wayland"
    binary.parent.mkdir()
    shutil.copyfile(installed, binary)
    binary.chmod(0o755)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(runtime), "XDG_RUNTIME_DIR": str(runtime)}
    command = [str(binary), "--virtual", "--no-lockscreen", "--no-global-shortcuts", "--socket", "wayland-kwin"]
    log = (tmp_path / "kwin.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        poll(
            "KWin's Wayland socket",
            lambda: (runtime / "wayland-kwin").exists() or process.poll() is not None,
            timeout=60,
        )
        if process.poll() is not None:
            pytest.fail(f"kwin exited: {(tmp_path / 'kwin.log').read_text(errors='replace')[-2000:]}")
        yield {"XDG_RUNTIME_DIR": str(runtime), "WAYLAND_DISPLAY": "wayland-kwin"}
    finally:
        stop(process)
        log.close()


def _simulate_user_activity(environment: dict[str, str]) -> None:
    """What KWin does on input, asked through its own protocol (a client of its own, as a user's would be)."""
    connection = WaylandConnection(wayland_socket(environment))
    try:
        seat, manager = connection.find("wl_seat"), connection.find(KDE_IDLE)
        assert seat is not None and manager is not None
        seat_id, manager_id, watcher = connection.bind(seat, 1), connection.bind(manager, 1), connection.new_id()
        connection.send(manager_id, 0, struct.pack("=III", watcher, seat_id, 60_000))  # get_idle_timeout
        connection.send(watcher, 1)  # simulate_user_activity
        connection.roundtrip()
    finally:
        connection.close()


def test_kwin_reports_idle_time_over_ext_idle_notify_and_activity_resets_it(kwin: dict[str, str]) -> None:
    source = detect_idle_source(platform="linux", environ={**kwin, "XDG_SESSION_TYPE": "wayland"})
    assert isinstance(source, WaylandIdleSource) and source.protocol == EXT_NOTIFIER
    assert source.name == "wayland-ext-idle-notify" and "ext-idle-notify-v1" in source.description
    poll("KWin to report a second and a half of idleness", lambda: (source.idle_seconds() or 0) >= 1.5, timeout=15)
    _simulate_user_activity(kwin)
    poll("the activity to reset the idle time", lambda: source.idle_seconds() == 0.0, timeout=15)
    poll("the idle time to grow again", lambda: (source.idle_seconds() or 0) >= 1.0, timeout=15)
    source.close()


# --- a test compositor speaking ext-idle-notify-v1 ---------------------------------------------------


def _message(object_id: int, opcode: int, payload: bytes = b"") -> bytes:
    return struct.pack("=II", object_id, (8 + len(payload)) << 16 | opcode) + payload


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("=I", len(raw)) + raw + b"\0" * (-len(raw) % 4)


class ProtocolCompositor:
    """Serves one client at a time on a UNIX socket: the registry (with `globals`), sync, bind and
    ext_idle_notifier_v1.get_idle_notification, recording each request."""

    def __init__(self, runtime: Path, globals_: list[str]) -> None:
        self.path = runtime / "wayland-test"
        self.globals = globals_
        self.requests: list[tuple[int, int, bytes]] = []
        self.bound: dict[int, str] = {}  # object id -> interface
        self.notification = 0
        self.idled_with_done = False
        self.client: socket.socket | None = None
        self.connected = threading.Event()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.client = client
            self.connected.set()
            buffer = b""
            while True:
                try:
                    chunk = client.recv(4096)
                except OSError:
                    break
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 8:
                    object_id, word = struct.unpack_from("=II", buffer)
                    size = word >> 16
                    if len(buffer) < size:
                        break
                    payload, buffer = buffer[8:size], buffer[size:]
                    self._answer(client, object_id, word & 0xFFFF, payload)

    def _answer(self, client: socket.socket, object_id: int, opcode: int, payload: bytes) -> None:
        self.requests.append((object_id, opcode, payload))
        if object_id == 1 and opcode == 1:  # wl_display.get_registry(new_id)
            (registry,) = struct.unpack("=I", payload)
            self.bound[registry] = "wl_registry"
            for name, interface in enumerate(self.globals, start=1):
                client.sendall(
                    _message(registry, 0, struct.pack("=I", name) + _string(interface) + struct.pack("=I", 1))
                )
        elif object_id == 1 and opcode == 0:  # wl_display.sync(new_id callback)
            (callback,) = struct.unpack("=I", payload)
            done = _message(callback, 0, struct.pack("=I", 0))
            if self.idled_with_done and self.notification:  # the user went idle just as the answer left
                done += _message(self.notification, 0)
            client.sendall(done)
        elif self.bound.get(object_id) == "wl_registry":  # bind(name, interface, version, new_id)
            (name,) = struct.unpack_from("=I", payload)
            self.bound[struct.unpack_from("=I", payload, len(payload) - 4)[0]] = self.globals[name - 1]
        elif self.bound.get(object_id) == EXT_NOTIFIER and opcode == 1:
            self.notification, timeout, seat = struct.unpack("=III", payload)
            assert self.bound.get(seat) == "wl_seat", "the notification names a seat the client bound"
            assert timeout == 1000
            self.bound[self.notification] = "ext_idle_notification_v1"

    def send(self, data: bytes) -> None:
        assert self.client is not None
        self.client.sendall(data)

    def close(self) -> None:
        self.listener.close()
        if self.client is not None:
            self.client.close()


@pytest.fixture
def compositor(tmp_path: Path) -> Iterator[ProtocolCompositor]:
    server = ProtocolCompositor(tmp_path, ["wl_compositor", "wl_seat", KDE_IDLE, EXT_NOTIFIER])
    yield server
    server.close()


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ext_idle_notify_is_preferred_and_its_events_make_the_idle_time(
    compositor: ProtocolCompositor, tmp_path: Path
) -> None:
    clock = Clock()
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "WAYLAND_DISPLAY": "wayland-test"}
    source = WaylandIdleSource(env, clock=clock)
    assert source.protocol == EXT_NOTIFIER and source.name == "wayland-ext-idle-notify"
    assert compositor.notification != 0
    assert source.idle_seconds() == 0.0
    compositor.send(_message(compositor.notification, 0))  # idled: a second without input
    poll("the idled event", lambda: source.idle_seconds() == 1.0, timeout=10)
    clock.now += 30
    assert source.idle_seconds() == 31.0
    compositor.send(_message(compositor.notification, 1))  # resumed
    poll("the resumed event", lambda: source.idle_seconds() == 0.0, timeout=10)
    source.close()


@pytest.mark.parametrize(
    ("hostile", "why"),
    [
        (_message(1, 0, struct.pack("=II", 3, 1) + _string("invalid object")), "error event"),
        (struct.pack("=II", 5, 4 << 16), "a message shorter than its header"),
        (struct.pack("=II", 5, 8000 << 16), "a message over 4096 bytes"),
    ],
)
def test_a_compositor_error_or_garbage_answers_none_and_the_source_reconnects(
    compositor: ProtocolCompositor, tmp_path: Path, hostile: bytes, why: str
) -> None:
    clock = Clock()
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "WAYLAND_DISPLAY": "wayland-test"}
    source = WaylandIdleSource(env, clock=clock)
    compositor.connected.clear()
    compositor.send(hostile)
    poll(f"the source to give up on {why}", lambda: source.idle_seconds() is None, timeout=10)
    clock.now += 11  # RECONNECT_S later it connects again
    assert source.idle_seconds() == 0.0, why
    assert compositor.connected.wait(10)
    source.close()


def test_an_event_that_arrives_with_the_answer_to_a_roundtrip_is_not_lost(
    compositor: ProtocolCompositor, tmp_path: Path
) -> None:
    compositor.idled_with_done = True
    source = WaylandIdleSource({"XDG_RUNTIME_DIR": str(tmp_path), "WAYLAND_DISPLAY": "wayland-test"}, clock=Clock())
    assert source.idle_seconds() == 1.0
    source.close()


def test_a_withdrawn_seat_ends_the_connection_and_the_source_reconnects(
    compositor: ProtocolCompositor, tmp_path: Path
) -> None:
    clock = Clock()
    source = WaylandIdleSource({"XDG_RUNTIME_DIR": str(tmp_path), "WAYLAND_DISPLAY": "wayland-test"}, clock=clock)
    registry = next(object_id for object_id, kind in compositor.bound.items() if kind == "wl_registry")
    seat = compositor.globals.index("wl_seat") + 1
    compositor.send(_message(registry, 1, struct.pack("=I", seat)))  # wl_registry.global_remove
    poll("the source to notice its seat is gone", lambda: source.idle_seconds() is None, timeout=10)
    clock.now += 11
    assert source.idle_seconds() == 0.0
    source.close()


def test_a_compositor_without_an_idle_protocol_is_passed_over_with_the_reason(tmp_path: Path) -> None:
    server = ProtocolCompositor(tmp_path, ["wl_compositor", "wl_seat"])
    try:
        env = {"XDG_RUNTIME_DIR": str(tmp_path), "WAYLAND_DISPLAY": "wayland-test"}
        with pytest.raises(BackendUnavailable, match=f"no {EXT_NOTIFIER} or {KDE_IDLE}"):
            WaylandIdleSource(env)
    finally:
        server.close()
    with pytest.raises(BackendUnavailable, match="can't connect"):
        WaylandIdleSource({"XDG_RUNTIME_DIR": str(tmp_path), "WAYLAND_DISPLAY": "wayland-gone"})
    with pytest.raises(BackendUnavailable, match="XDG_RUNTIME_DIR"):
        wayland_socket({"WAYLAND_DISPLAY": "wayland-0"})
    assert wayland_socket({"WAYLAND_DISPLAY": "/run/w/wayland-1"}) == Path("/run/w/wayland-1")
