"""Starting the app when the volunteer logs in: one small writer per OS.

- Linux and other XDG desktops: a `.desktop` entry in `$XDG_CONFIG_HOME/autostart`.
- macOS: a LaunchAgent property list in `~/Library/LaunchAgents` (RunAtLoad), read at the next login.
- Windows: a value under `HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run`, minding Task
  Manager's own "disabled" switch (`...\\Explorer\\StartupApproved\\Run`).

Every entry point takes its location explicitly, so tests point them at a temporary directory or a
fake registry:

    xdg = XdgAutostart(tmp_path)    # tmp_path/autostart/commonweights.desktop
    xdg.enable(["commonweights-app", "--minimized"])
    xdg.is_enabled()                # True

`autostart_for()` picks the writer for this OS; `enable_autostart` / `disable_autostart` /
`is_autostart_enabled` are one-call shortcuts over it.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from training.atomic_write import write_atomically

APP_NAME = "Commonweights"
APP_ID = "commonweights"
LAUNCH_AGENT_LABEL = "org.commonweights.app"
DEFAULT_EXECUTABLE = "commonweights-app"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
STARTUP_APPROVED_KEY = r"Software\Microsoft\Windows\CurrentVersion\Explorer\StartupApproved\Run"


class AutostartError(OSError):
    """The autostart entry could not be written or removed; the message says where and why."""

    code = "autostart.failed"


def default_command() -> list[str]:
    """The installed app's executable; else `commonweights-app` by absolute path when it is on PATH
    (a login session's PATH may be shorter than a terminal's), else by name."""
    if getattr(sys, "frozen", False):  # an installed app (PyInstaller): itself
        return [sys.executable]
    # An app environment an installer made: its launcher, beside the interpreter running us.
    beside = Path(sys.executable).with_name(DEFAULT_EXECUTABLE + (".exe" if os.name == "nt" else ""))
    if beside.is_file():
        return [str(beside)]
    found = shutil.which(DEFAULT_EXECUTABLE)
    return [found or DEFAULT_EXECUTABLE]


def _command(argv: Sequence[str] | None) -> list[str]:
    command = list(argv) if argv is not None else default_command()
    if not command or not all(isinstance(a, str) and a for a in command):
        raise ValueError(f"autostart needs a non-empty command of non-empty strings, got {argv!r}")
    if any(c in a for a in command for c in "\n\r\0"):
        raise ValueError(f"autostart command arguments cannot contain line breaks or NUL: {argv!r}")
    return command


def _write_entry(path: Path, data: bytes) -> None:
    try:
        write_atomically(path, data, mode=0o644)  # the desktop's session manager reads it
    except OSError as exc:
        raise AutostartError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise AutostartError(f"cannot remove {path}: {exc.strerror or exc}") from exc


class Autostart(Protocol):
    def enable(self, argv: Sequence[str] | None = None) -> None:
        """Start `argv` (default: `default_command()`) at every login."""
        ...

    def disable(self) -> None: ...

    def is_enabled(self) -> bool: ...

    @property
    def location(self) -> str:
        """Where the entry lives, for the settings dialog."""
        ...


# --- XDG (.desktop) ---------------------------------------------------------------------------

_EXEC_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def desktop_exec_line(argv: Sequence[str]) -> str:
    """The Exec= value for argv, quoted per the Desktop Entry Specification."""
    parts = []
    for arg in argv:
        text = arg.replace("%", "%%")
        if any(c in _EXEC_RESERVED for c in arg) or arg == "":
            inner = "".join("\\" + c if c in '"`$\\' else c for c in text)
            text = f'"{inner}"'
        # Exec is also a string value, whose own escaping doubles every backslash.
        parts.append(text.replace("\\", "\\\\"))
    return " ".join(parts)


def _desktop_entry_keys(text: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    in_main_group = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            in_main_group = line == "[Desktop Entry]"
        elif in_main_group and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys


def _desktop_entry_active(path: Path) -> bool | None:
    """True/False for an entry that exists (honouring Hidden and X-GNOME-Autostart-enabled), else None."""
    try:
        keys = _desktop_entry_keys(path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None
    except OSError:
        return False
    return keys.get("Hidden", "false").lower() != "true" and (
        keys.get("X-GNOME-Autostart-enabled", "true").lower() != "false"
    )


class XdgAutostart:
    """`<config_home>/autostart/commonweights.desktop`; `config_dirs` are the system-wide
    XDG_CONFIG_DIRS, consulted so a packaged system entry can be switched off for this user."""

    def __init__(self, config_home: Path, config_dirs: Sequence[Path] = ()) -> None:
        self.path = config_home / "autostart" / f"{APP_ID}.desktop"
        self._system_paths = [d / "autostart" / f"{APP_ID}.desktop" for d in config_dirs]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> XdgAutostart:
        env = os.environ if environ is None else environ
        home = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        dirs = [Path(d) for d in (env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":") if d]
        return cls(home, dirs)

    @property
    def location(self) -> str:
        return str(self.path)

    def enable(self, argv: Sequence[str] | None = None) -> None:
        command = _command(argv)
        entry = (
            "[Desktop Entry]\n"
            "Type=Application\n"
            f"Name={APP_NAME}\n"
            "Comment=Train language models while this computer is idle\n"
            f"Exec={desktop_exec_line(command)}\n"
            f"Icon={APP_ID}\n"
            "Terminal=false\n"
            "X-GNOME-Autostart-enabled=true\n"
        )
        _write_entry(self.path, entry.encode("utf-8"))

    def disable(self) -> None:
        if any(_desktop_entry_active(p) for p in self._system_paths):
            # A system-wide entry (from a distribution package) is overridden, per user, by Hidden.
            _write_entry(self.path, f"[Desktop Entry]\nType=Application\nName={APP_NAME}\nHidden=true\n".encode())
        else:
            _remove(self.path)

    def is_enabled(self) -> bool:
        user = _desktop_entry_active(self.path)
        if user is not None:
            return user
        return any(_desktop_entry_active(p) for p in self._system_paths)


# --- macOS (LaunchAgent) ----------------------------------------------------------------------


class LaunchAgentAutostart:
    """`<agents_dir>/org.commonweights.app.plist`, loaded by launchd at the next login."""

    def __init__(self, agents_dir: Path) -> None:
        self.path = agents_dir / f"{LAUNCH_AGENT_LABEL}.plist"

    @classmethod
    def for_user(cls) -> LaunchAgentAutostart:
        return cls(Path.home() / "Library" / "LaunchAgents")

    @property
    def location(self) -> str:
        return str(self.path)

    def enable(self, argv: Sequence[str] | None = None) -> None:
        plist: dict[str, Any] = {
            "Label": LAUNCH_AGENT_LABEL,
            "ProgramArguments": _command(argv),
            "RunAtLoad": True,
            "KeepAlive": False,
            "ProcessType": "Interactive",
            "LimitLoadToSessionType": "Aqua",  # the GUI login, not ssh sessions
        }
        _write_entry(self.path, plistlib.dumps(plist))

    def disable(self) -> None:
        _remove(self.path)

    def is_enabled(self) -> bool:
        try:
            plist = plistlib.loads(self.path.read_bytes())
        except (OSError, plistlib.InvalidFileException, ValueError):
            return False
        return (
            isinstance(plist, dict)
            and plist.get("Label") == LAUNCH_AGENT_LABEL
            and plist.get("Disabled") is not True
            and bool(plist.get("ProgramArguments"))
        )


# --- Windows (Run key) ------------------------------------------------------------------------


class RunKeyAccess(Protocol):
    """The two HKCU values autostart touches, by value name (a fake dict-backed one in tests)."""

    def get(self, name: str) -> str | None: ...

    def set(self, name: str, command: str) -> None: ...

    def delete(self, name: str) -> None: ...

    def startup_approved(self, name: str) -> bytes | None:
        """Task Manager's StartupApproved\\Run value for `name`, if any."""
        ...

    def clear_startup_approved(self, name: str) -> None: ...


def _winreg() -> Any:
    if sys.platform == "win32":
        import winreg

        return winreg
    raise AutostartError("the Windows registry exists only on Windows")


class WinregRunKey:
    """`RunKeyAccess` over the real registry (HKEY_CURRENT_USER)."""

    def _get(self, key_path: str, name: str) -> Any:
        winreg = _winreg()
        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, key_path) as key:
                value, _kind = winreg.QueryValueEx(key, name)
                return value
        except FileNotFoundError:
            return None

    def _delete(self, key_path: str, name: str) -> None:
        winreg = _winreg()
        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, key_path, 0, winreg.KEY_SET_VALUE) as key:
                winreg.DeleteValue(key, name)
        except FileNotFoundError:
            pass

    def get(self, name: str) -> str | None:
        value = self._get(RUN_KEY, name)
        return value if isinstance(value, str) else None

    def set(self, name: str, command: str) -> None:
        winreg = _winreg()
        with winreg.CreateKeyEx(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
            winreg.SetValueEx(key, name, 0, winreg.REG_SZ, command)

    def delete(self, name: str) -> None:
        self._delete(RUN_KEY, name)

    def startup_approved(self, name: str) -> bytes | None:
        value = self._get(STARTUP_APPROVED_KEY, name)
        return bytes(value) if isinstance(value, bytes | bytearray) else None

    def clear_startup_approved(self, name: str) -> None:
        self._delete(STARTUP_APPROVED_KEY, name)


class RunKeyAutostart:
    """A `Commonweights` value in the current user's Run key."""

    def __init__(self, registry: RunKeyAccess, value_name: str = APP_NAME) -> None:
        self._registry = registry
        self._name = value_name

    @property
    def location(self) -> str:
        return f"HKEY_CURRENT_USER\\{RUN_KEY}\\{self._name}"

    def enable(self, argv: Sequence[str] | None = None) -> None:
        command = subprocess.list2cmdline(_command(argv))
        try:
            self._registry.set(self._name, command)
            # Choosing "start at login" here overrides an earlier "Disable" in Task Manager.
            self._registry.clear_startup_approved(self._name)
        except OSError as exc:
            raise AutostartError(f"cannot write {self.location}: {exc}") from exc

    def disable(self) -> None:
        try:
            self._registry.delete(self._name)
        except OSError as exc:
            raise AutostartError(f"cannot remove {self.location}: {exc}") from exc

    def is_enabled(self) -> bool:
        if not self._registry.get(self._name):
            return False
        approved = self._registry.startup_approved(self._name)
        # Task Manager writes 0x02… for enabled and 0x03… for disabled (an odd first byte).
        return not (approved and approved[0] & 1)


# --- choosing one -----------------------------------------------------------------------------


def autostart_for(
    platform: str = sys.platform,
    *,
    base_dir: Path | None = None,
    registry: RunKeyAccess | None = None,
    environ: Mapping[str, str] | None = None,
) -> Autostart:
    """The writer for `platform`. `base_dir` replaces the config home (XDG) or the LaunchAgents
    folder (macOS); `registry` replaces the Windows registry."""
    if platform == "win32":
        return RunKeyAutostart(registry if registry is not None else WinregRunKey())
    if platform == "darwin":
        return LaunchAgentAutostart(base_dir) if base_dir is not None else LaunchAgentAutostart.for_user()
    if base_dir is not None:
        return XdgAutostart(base_dir)
    return XdgAutostart.from_environment(environ)


def enable_autostart(
    argv: Sequence[str] | None = None,
    *,
    platform: str = sys.platform,
    base_dir: Path | None = None,
    registry: RunKeyAccess | None = None,
) -> None:
    autostart_for(platform, base_dir=base_dir, registry=registry).enable(argv)


def disable_autostart(
    *, platform: str = sys.platform, base_dir: Path | None = None, registry: RunKeyAccess | None = None
) -> None:
    autostart_for(platform, base_dir=base_dir, registry=registry).disable()


def is_autostart_enabled(
    *, platform: str = sys.platform, base_dir: Path | None = None, registry: RunKeyAccess | None = None
) -> bool:
    return autostart_for(platform, base_dir=base_dir, registry=registry).is_enabled()
