"""Which programs are running, for BOINC's "exclusive applications": while any program on the
volunteer's list runs (a game, a video editor), training is suspended.

    >>> watcher = ProgramWatcher(["steam", "blender.exe", "Cyberpunk2077"])
    >>> watcher.running_exclusive()        # 'blender', or None

Names are compared without case and without a Windows ".exe", against each process's executable name
(Linux: `/proc/PID/exe`'s name, else `/proc/PID/comm`; macOS: `ps -axco comm`; Windows: `tasklist`).
Reading the list costs a few milliseconds, so the app does it on its slow poll (every few seconds).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["ProgramWatcher", "normalize", "running_programs"]


def normalize(name: str) -> str:
    """How program names are compared: the file name, lower case, without ".exe"."""
    base = name.strip().replace("\\", "/").rsplit("/", 1)[-1].lower()
    return base.removesuffix(".exe")


def _linux(proc: Path) -> set[str]:
    names: set[str] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # another user's process: its exe link is unreadable
            names.add(normalize(os.readlink(entry / "exe")).removesuffix(" (deleted)"))
        with contextlib.suppress(OSError, UnicodeDecodeError):  # and Wine games' exe is wine64-preloader
            names.add(normalize((entry / "comm").read_text()))
    names.discard("")
    return names


def _command(argv: list[str], parse: Callable[[str], Iterable[str]]) -> set[str]:
    try:
        output = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),  # Windows: no console flashing up
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {normalize(name) for name in parse(output) if name.strip()}


def running_programs(proc: Path = Path("/proc")) -> set[str]:
    """The normalized names of the programs running now (empty where they can't be listed)."""
    if sys.platform.startswith("linux") and proc.is_dir():
        return _linux(proc)
    if sys.platform == "darwin":
        return _command(["ps", "-axco", "comm="], str.splitlines)
    if sys.platform == "win32":
        return _command(
            ["tasklist", "/fo", "csv", "/nh"],
            lambda out: (line.split('","', 1)[0].strip('"') for line in out.splitlines()),
        )
    return set()


class ProgramWatcher:
    def __init__(self, exclusive: Iterable[str], *, list_programs: Callable[[], set[str]] = running_programs) -> None:
        self.exclusive = {normalize(name) for name in exclusive if name.strip()}
        self._list = list_programs

    def running_exclusive(self) -> str | None:
        """The first exclusive program running (alphabetically), or None."""
        if not self.exclusive:
            return None
        return min(self.exclusive & self._list(), default=None)
