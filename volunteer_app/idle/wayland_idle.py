"""Idle time from the Wayland compositor itself: ext-idle-notify-v1, or KDE's org_kde_kwin_idle.

    source = WaylandIdleSource()          # BackendUnavailable where the compositor offers neither
    source.name                           # "wayland-ext-idle-notify" or "wayland-kde-idle"
    source.idle_seconds()                 # 0.0 while the user is active; 93.0 after a minute and a half

Which compositors speak which (a compositor may speak both; the standard one is preferred):
- `ext_idle_notifier_v1` (wayland-protocols staging): sway ≥ 1.8, wlroots ≥ 0.16 compositors (labwc ≥
  0.7, Hyprland, river, niri), KDE Plasma ≥ 5.27, COSMIC.
- `org_kde_kwin_idle` (plasma-wayland-protocols): KWin, and wlroots < 0.17 compositors (sway 1.7, the
  one Debian 12 ships, labwc 0.6, Wayfire 0.7).
- GNOME's Mutter speaks neither; its IdleMonitor over D-Bus is the next backend tried
  (`volunteer_app.idle.wayland`).

Both protocols say only "idle for at least T" and "active again", so the source asks to be told after
`resolution_s` (1 s) without input and counts from there: `idle_seconds()` is the time since the last
input, to within that second, and 0 before the first notice. Time the user was already idle before the
source started is not counted: the first answer can be late, never early. A compositor honouring idle
inhibitors (a video playing full screen) reports the user active meanwhile, which keeps training off.

The client is the few messages it needs of the Wayland wire protocol (wayland.freedesktop.org, "Wire
Format"), written here over a UNIX socket rather than through libwayland bindings: nothing to compile
or bundle into the installers, and nothing of the compositor's is trusted beyond what is parsed (a
message is at most 4096 bytes; a shorter or longer one ends the connection). Events are read without
blocking whenever `idle_seconds()` is asked; a lost connection (or a seat or notifier the compositor
withdrew) answers None and is retried every `RECONNECT_S`, waiting at most `RECONNECT_ROUNDTRIP_S` for
the compositor, since the app asks from its GUI thread.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from volunteer_app.idle.base import BackendUnavailable

__all__ = ["EXT_NOTIFIER", "KDE_IDLE", "WaylandConnection", "WaylandError", "WaylandIdleSource", "wayland_socket"]

EXT_NOTIFIER = "ext_idle_notifier_v1"
KDE_IDLE = "org_kde_kwin_idle"
SEAT = "wl_seat"
MAX_MESSAGE = 4096  # libwayland's limit for one message, header included
HEADER = struct.Struct("=II")  # object id; size << 16 | opcode (the host's byte order, as the protocol says)
DISPLAY_ID = 1
RECONNECT_S = 10.0
ROUNDTRIP_S = 5.0  # how long the first connection (at the app's start) waits for the compositor
RECONNECT_ROUNDTRIP_S = 0.5  # later ones run on the app's GUI thread: a hung compositor costs it little
MAX_READ = 1 << 20  # bytes read in one go before what came is handled

# opcodes, from wayland.xml, ext-idle-notify-v1.xml and plasma-wayland-protocols' idle.xml
DISPLAY_SYNC, DISPLAY_GET_REGISTRY = 0, 1
DISPLAY_ERROR, DISPLAY_DELETE_ID = 0, 1
REGISTRY_BIND = 0
REGISTRY_GLOBAL = 0
CALLBACK_DONE = 0
EXT_GET_IDLE_NOTIFICATION = 1  # (new_id id, uint timeout, object seat)
KDE_GET_IDLE_TIMEOUT = 0  # (new_id id, object seat, uint timeout)
IDLED, RESUMED = 0, 1  # both notification interfaces: event 0 idle, event 1 resumed


class WaylandError(Exception):
    """The compositor closed the connection, sent an error, or sent something that isn't Wayland."""


def wayland_socket(environ: Mapping[str, str]) -> Path:
    """The compositor's socket: WAYLAND_DISPLAY (default wayland-0), under XDG_RUNTIME_DIR if relative."""
    display = environ.get("WAYLAND_DISPLAY") or "wayland-0"
    if os.path.isabs(display):
        return Path(display)
    runtime = environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise BackendUnavailable("wayland", "XDG_RUNTIME_DIR is not set, so the compositor's socket can't be found")
    return Path(runtime) / display


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("=I", len(raw)) + raw + b"\0" * (-len(raw) % 4)


def _read_string(payload: bytes, offset: int) -> tuple[str, int]:
    if offset + 4 > len(payload):
        raise WaylandError("a string argument runs past its message")
    (length,) = struct.unpack_from("=I", payload, offset)
    start, end = offset + 4, offset + 4 + length
    if length == 0 or end > len(payload) or payload[end - 1] != 0:
        raise WaylandError("a malformed string argument")
    return payload[start : end - 1].decode("utf-8", "replace"), end + (-length % 4)


@dataclass(frozen=True)
class Global:
    name: int
    interface: str
    version: int


class WaylandConnection:
    """One client connection: requests out, events in (object id, opcode, arguments)."""

    def __init__(self, path: Path, *, timeout: float = ROUNDTRIP_S) -> None:
        self._timeout = timeout
        try:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as error:  # out of file descriptors
            raise WaylandError(f"can't open a socket: {error}") from None
        self._socket.settimeout(timeout)
        try:
            self._socket.connect(str(path))
        except (OSError, ValueError) as error:  # ValueError: a NUL in WAYLAND_DISPLAY
            self._socket.close()
            raise WaylandError(f"can't connect to {path}: {getattr(error, 'strerror', None) or error}") from None
        self._socket.setblocking(False)
        self._buffer = b""
        self._pending: list[tuple[int, int, bytes]] = []  # events read past a roundtrip's answer
        self._next_id = 2  # 1 is wl_display
        self.globals: dict[int, Global] = {}
        self._registry = self.new_id()
        try:
            self.send(DISPLAY_ID, DISPLAY_GET_REGISTRY, struct.pack("=I", self._registry))
            self.roundtrip()
        except WaylandError:
            self.close()
            raise

    def close(self) -> None:
        self._socket.close()

    def new_id(self) -> int:
        object_id, self._next_id = self._next_id, self._next_id + 1
        return object_id

    def send(self, object_id: int, opcode: int, arguments: bytes = b"") -> None:
        size = HEADER.size + len(arguments)
        try:
            self._socket.settimeout(self._timeout)  # a compositor that reads nothing can't hold us longer
            self._socket.sendall(HEADER.pack(object_id, size << 16 | opcode) + arguments)
        except OSError as error:
            raise WaylandError(f"the compositor's socket failed: {error}") from None
        finally:
            self._socket.setblocking(False)

    def bind(self, found: Global, version: int) -> int:
        """A new object for a global, at `version` (at most what the compositor offers)."""
        object_id = self.new_id()
        arguments = struct.pack("=I", found.name) + _string(found.interface)
        self.send(self._registry, REGISTRY_BIND, arguments + struct.pack("=II", min(version, found.version), object_id))
        return object_id

    def roundtrip(self) -> list[tuple[int, int, bytes]]:
        """Wait until the compositor has handled every request sent so far; the events that came meanwhile."""
        callback = self.new_id()
        self.send(DISPLAY_ID, DISPLAY_SYNC, struct.pack("=I", callback))
        deadline = time.monotonic() + self._timeout
        seen: list[tuple[int, int, bytes]] = []
        while True:
            events = self.events(wait=max(0.0, deadline - time.monotonic()))
            for index, event in enumerate(events):
                if event[0] == callback and event[1] == CALLBACK_DONE:
                    self._pending = events[index + 1 :]  # what came after the answer: the next events() call's
                    return seen
                seen.append(event)
            if time.monotonic() > deadline:
                raise WaylandError(f"the compositor did not answer within {self._timeout:g} s")

    def events(self, *, wait: float = 0.0) -> list[tuple[int, int, bytes]]:
        """The events that arrived (waiting up to `wait` s for the first), after the display's own."""
        out, self._pending = self._pending, []
        received = 0
        try:
            if wait > 0 and not out:
                self._socket.settimeout(wait)
            while received < MAX_READ:
                chunk = self._socket.recv(65536)
                if not chunk:
                    raise WaylandError("the compositor closed the connection")
                self._buffer += chunk
                received += len(chunk)
                self._socket.setblocking(False)  # the first read may wait; the rest take what is there
        except (BlockingIOError, TimeoutError):
            pass
        except OSError as error:
            raise WaylandError(f"the compositor's socket failed: {error}") from None
        finally:
            self._socket.setblocking(False)
        while len(self._buffer) >= HEADER.size:
            object_id, word = HEADER.unpack_from(self._buffer)
            size, opcode = word >> 16, word & 0xFFFF
            if size < HEADER.size or size > MAX_MESSAGE or size % 4:
                raise WaylandError(f"a message of {size} bytes is not Wayland")
            if len(self._buffer) < size:
                break
            payload, self._buffer = self._buffer[HEADER.size : size], self._buffer[size:]
            if self._handled(object_id, opcode, payload):
                continue
            out.append((object_id, opcode, payload))
        return out

    def _handled(self, object_id: int, opcode: int, payload: bytes) -> bool:
        """Events of the display and the registry, kept here; False for any other object's."""
        if object_id == DISPLAY_ID and opcode == DISPLAY_ERROR:
            if len(payload) < 8:
                raise WaylandError("a malformed error event")
            code = struct.unpack_from("=I", payload, 4)[0]
            message, _ = _read_string(payload, 8)
            raise WaylandError(f"the compositor refused a request (error {code}: {message})")
        if object_id == DISPLAY_ID:
            return True  # delete_id: nothing of ours is reused
        if object_id == self._registry:
            if opcode == REGISTRY_GLOBAL:
                if len(payload) < 4:
                    raise WaylandError("a malformed global event")
                (name,) = struct.unpack_from("=I", payload)
                interface, offset = _read_string(payload, 4)
                if offset + 4 > len(payload):
                    raise WaylandError("a malformed global event")
                (version,) = struct.unpack_from("=I", payload, offset)
                self.globals[name] = Global(name, interface, version)
            else:  # global_remove
                self.globals.pop(struct.unpack_from("=I", payload)[0] if len(payload) >= 4 else -1, None)
            return True
        return False

    def find(self, interface: str) -> Global | None:
        return next((g for g in sorted(self.globals.values(), key=lambda g: g.name) if g.interface == interface), None)


class WaylandIdleSource:
    """Seconds since the last input, from the compositor's idle notifications (see the module doc)."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        resolution_s: float = 1.0,
        prefer: tuple[str, ...] = (EXT_NOTIFIER, KDE_IDLE),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self._path = wayland_socket(env)
        self._resolution_ms = max(1, round(resolution_s * 1000))
        self._prefer = prefer
        self._clock = clock
        self._connection: WaylandConnection | None = None
        self._bound: tuple[int, int] = (0, 0)  # the global names of the seat and the notifier in use
        self._notification = 0
        self._idle_since: float | None = None
        self._retry_at = 0.0
        self.protocol = ""
        try:
            self._connect(ROUNDTRIP_S)
        except WaylandError as error:
            raise BackendUnavailable("wayland", str(error)) from None

    @property
    def name(self) -> str:
        return "wayland-ext-idle-notify" if self.protocol == EXT_NOTIFIER else "wayland-kde-idle"

    @property
    def description(self) -> str:
        which = "ext-idle-notify-v1" if self.protocol == EXT_NOTIFIER else "KDE's org_kde_kwin_idle"
        return (
            f"Wayland: time since the last keyboard or mouse input, from the compositor ({which}, to within "
            f"{self._resolution_ms / 1000:g} s)."
        )

    def _connect(self, timeout: float) -> None:
        connection = WaylandConnection(self._path, timeout=timeout)
        try:
            offered = [connection.find(interface) for interface in self._prefer]
            notifier = next((g for g in offered if g is not None), None)
            seat = connection.find(SEAT)
            if notifier is None or seat is None:
                missing = " or ".join(self._prefer) if notifier is None else SEAT
                raise BackendUnavailable(
                    "wayland", f"the compositor at {self._path} offers no {missing} (GNOME: see gnome-mutter)"
                )
            seat_id = connection.bind(seat, 1)
            manager = connection.bind(notifier, 1)
            self._notification = connection.new_id()
            if notifier.interface == EXT_NOTIFIER:
                arguments = struct.pack("=III", self._notification, self._resolution_ms, seat_id)
                connection.send(manager, EXT_GET_IDLE_NOTIFICATION, arguments)
            else:
                arguments = struct.pack("=III", self._notification, seat_id, self._resolution_ms)
                connection.send(manager, KDE_GET_IDLE_TIMEOUT, arguments)
            events = connection.roundtrip()
        except BaseException:
            connection.close()
            raise
        self.protocol = notifier.interface
        self._bound = (seat.name, notifier.name)
        self._connection = connection
        self._idle_since = None
        self._apply(events)

    def _apply(self, events: list[tuple[int, int, bytes]]) -> None:
        for object_id, opcode, _ in events:
            if object_id != self._notification:
                continue
            if opcode == IDLED:
                self._idle_since = self._clock() - self._resolution_ms / 1000
            elif opcode == RESUMED:
                self._idle_since = None

    def idle_seconds(self) -> float | None:
        if self._connection is None:
            if self._clock() < self._retry_at:
                return None
            try:
                self._connect(RECONNECT_ROUNDTRIP_S)
            except (WaylandError, BackendUnavailable, OSError, ValueError):
                self._retry_at = self._clock() + RECONNECT_S
                return None
        assert self._connection is not None
        try:
            self._apply(self._connection.events())
            if any(name not in self._connection.globals for name in self._bound):
                raise WaylandError("the seat or the idle notifier went away")  # its notices would stop
        except (WaylandError, OSError, ValueError):
            self.close()
            self._retry_at = self._clock() + RECONNECT_S
            return None
        return 0.0 if self._idle_since is None else self._clock() - self._idle_since

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
