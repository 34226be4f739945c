"""Idle time on Linux sessions where X11 cannot see input: GNOME's Mutter IdleMonitor and logind.

Both are read over D-Bus with a command-line client (`busctl` from systemd, else `gdbus` from GLib),
so no D-Bus library is needed; one short subprocess per poll is cheap at one poll a second.

- `GnomeMutterIdleSource`: `org.gnome.Mutter.IdleMonitor.GetIdletime` on the session bus, in
  milliseconds: exact, and works on GNOME under Wayland and X11 alike.
- `LogindIdleSource`: the login session's `IdleHint` / `IdleSinceHintMonotonic` on the system bus.
  Coarse: the desktop sets the hint only after its own idle delay (GNOME: 5 minutes by default), so
  this reports time since the hint was set and 0 before it; a desktop that never sets the hint keeps
  the volunteer waiting, which is safe.

    GnomeMutterIdleSource().idle_seconds()   # 42.117
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Literal

from volunteer_app.idle.base import BackendUnavailable

Bus = Literal["session", "system"]
Runner = Callable[[Sequence[str]], str]
"""Runs an argv and returns its stdout, raising `DBusCallError` on failure (swapped out in tests)."""

MUTTER_NAME = "org.gnome.Mutter.IdleMonitor"
MUTTER_PATH = "/org/gnome/Mutter/IdleMonitor/Core"
LOGIND_NAME = "org.freedesktop.login1"
LOGIND_SESSION_INTERFACE = "org.freedesktop.login1.Session"
LOGIND_AUTO_SESSION = "/org/freedesktop/login1/session/auto"

_CALL_TIMEOUT_S = 2.0


class DBusCallError(Exception):
    """A D-Bus call failed or its reply could not be read."""


def run_command(argv: Sequence[str]) -> str:
    """The real `Runner`: run argv with a short timeout and return its stdout."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=_CALL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DBusCallError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        first_line = next(iter(done.stderr.strip().splitlines()), "")
        raise DBusCallError(first_line or f"{argv[0]} exited with {done.returncode}")
    return done.stdout


_BUSCTL_VALUE = re.compile(r"^\s*([a-z])\s+(\S+)\s*$")
_GDBUS_VALUE = re.compile(r"^\s*(?:(?:u?int(?:16|32|64)|byte|boolean)\s+)?(true|false|-?\d+)\s*$")


def parse_busctl_value(line: str) -> int | bool:
    """One basic value as busctl prints it: "t 1234", "u 7", "b true"."""
    match = _BUSCTL_VALUE.match(line)
    if match is None:
        raise DBusCallError(f"unexpected busctl reply {line!r}")
    signature, text = match.groups()
    if signature == "b":
        return text == "true"
    if signature in "ynqiuxt":
        return int(text)
    raise DBusCallError(f"unexpected D-Bus type {signature!r} in {line!r}")


def parse_gdbus_value(reply: str) -> int | bool:
    """The single value of a gdbus reply tuple: "(uint64 1234,)", "(<true>,)", "(<uint64 5>,)"."""
    text = reply.strip()
    if not (text.startswith("(") and text.endswith(",)")):
        raise DBusCallError(f"unexpected gdbus reply {reply!r}")
    text = text[1:-2].strip()
    if text.startswith("<") and text.endswith(">"):  # a variant, as Properties.Get returns
        text = text[1:-1]
    match = _GDBUS_VALUE.match(text)
    if match is None:
        raise DBusCallError(f"unexpected gdbus value {text!r}")
    value = match.group(1)
    if value in ("true", "false"):
        return value == "true"
    return int(value)


class DBusCli:
    """Calls D-Bus methods and reads properties through `busctl` or `gdbus`."""

    def __init__(self, tool: Literal["busctl", "gdbus"] | None = None, runner: Runner = run_command) -> None:
        if tool is None:
            found = next((t for t in ("busctl", "gdbus") if shutil.which(t)), None)
            if found is None:
                raise BackendUnavailable("dbus", "neither busctl (systemd) nor gdbus (libglib2.0-bin) is installed")
            tool = "busctl" if found == "busctl" else "gdbus"
        self.tool: Literal["busctl", "gdbus"] = tool
        self._run = runner

    def call(self, bus: Bus, name: str, path: str, interface: str, method: str) -> int | bool:
        """Call a method that takes no arguments and returns one basic value."""
        if self.tool == "busctl":
            out = self._run(["busctl", _busctl_bus(bus), "call", name, path, interface, method])
            return parse_busctl_value(out.strip())
        return parse_gdbus_value(self._gdbus_call(bus, name, path, f"{interface}.{method}"))

    def _gdbus_call(self, bus: Bus, name: str, path: str, method: str, *args: str) -> str:
        return self._run(
            ["gdbus", "call", f"--{bus}", "--dest", name, "--object-path", path, "--method", method, *args]
        )

    def get_properties(
        self, bus: Bus, name: str, path: str, interface: str, properties: Sequence[str]
    ) -> list[int | bool]:
        """Read basic-typed properties, in the order asked."""
        if self.tool == "busctl":
            out = self._run(["busctl", _busctl_bus(bus), "get-property", name, path, interface, *properties])
            lines = [line for line in out.splitlines() if line.strip()]
            if len(lines) != len(properties):
                raise DBusCallError(f"expected {len(properties)} values from busctl, got {out!r}")
            return [parse_busctl_value(line) for line in lines]
        return [
            parse_gdbus_value(self._gdbus_call(bus, name, path, "org.freedesktop.DBus.Properties.Get", interface, prop))
            for prop in properties
        ]


def _busctl_bus(bus: Bus) -> str:
    return "--user" if bus == "session" else "--system"


class GnomeMutterIdleSource:
    """Idle time from GNOME Shell's IdleMonitor (`GetIdletime`, milliseconds)."""

    name = "gnome-mutter"

    def __init__(self, dbus: DBusCli | None = None) -> None:
        self._dbus = dbus if dbus is not None else DBusCli()
        try:
            self._query()
        except DBusCallError as exc:
            raise BackendUnavailable(self.name, f"{MUTTER_NAME} is not answering on the session bus ({exc})") from exc

    @property
    def description(self) -> str:
        return (
            "GNOME: time since the last keyboard or mouse input "
            f"(Mutter IdleMonitor over D-Bus, via {self._dbus.tool})."
        )

    def _query(self) -> float:
        value = self._dbus.call("session", MUTTER_NAME, MUTTER_PATH, MUTTER_NAME, "GetIdletime")
        if isinstance(value, bool) or value < 0:
            raise DBusCallError(f"GetIdletime returned {value!r}")
        return value / 1000.0

    def idle_seconds(self) -> float | None:
        try:
            return self._query()
        except DBusCallError:
            return None


def _monotonic_us() -> int:
    # logind stamps IdleSinceHintMonotonic with CLOCK_MONOTONIC, which is Python's monotonic on Linux.
    return time.monotonic_ns() // 1000


class LogindIdleSource:
    """Idle time from systemd-logind's `IdleHint` for this login session (coarse; see module doc)."""

    name = "logind"

    def __init__(
        self,
        dbus: DBusCli | None = None,
        *,
        session_path: str = LOGIND_AUTO_SESSION,
        monotonic_us: Callable[[], int] = _monotonic_us,
    ) -> None:
        self._dbus = dbus if dbus is not None else DBusCli()
        self._path = session_path
        self._monotonic_us = monotonic_us
        self._hint_seen_at_us: int | None = None
        try:
            self._query()
        except DBusCallError as exc:
            raise BackendUnavailable(self.name, f"logind session {session_path} is not readable ({exc})") from exc

    @property
    def description(self) -> str:
        return (
            "logind IdleHint (coarse: counts only from when the desktop marks the session idle, "
            "after its own idle delay)."
        )

    def _query(self) -> float:
        hint, since_us = self._dbus.get_properties(
            "system",
            LOGIND_NAME,
            self._path,
            LOGIND_SESSION_INTERFACE,
            ["IdleHint", "IdleSinceHintMonotonic"],
        )
        now_us = self._monotonic_us()
        if not hint:
            self._hint_seen_at_us = None
            return 0.0
        if isinstance(since_us, bool) or since_us <= 0 or since_us > now_us:
            # Idle, but no usable timestamp: count from when we first saw the hint.
            if self._hint_seen_at_us is None:
                self._hint_seen_at_us = now_us
            since_us = self._hint_seen_at_us
        return (now_us - since_us) / 1e6

    def idle_seconds(self) -> float | None:
        try:
            return self._query()
        except DBusCallError:
            return None
