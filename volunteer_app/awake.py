"""Keep the computer from sleeping while it trains on mains power (an option, off by default).

    >>> awake = KeepAwake.for_this_os()
    >>> awake.hold("training a Commonweights work unit")     # idempotent
    >>> awake.release()

Linux: a `systemd-inhibit --what=sleep:idle --mode=block` child that holds logind's inhibitor lock for
as long as the command under it runs: `cat` on a pipe from the app, which ends when the app closes the
pipe (release) or dies (the pipe closes with it), so no lock outlives the app. macOS: `caffeinate -i
-w APP_PID`, which ends with the app too. Windows: `SetThreadExecutionState(ES_CONTINUOUS |
ES_SYSTEM_REQUIRED)`, cleared on release and dropped by Windows when the thread ends.

The display may still turn off: only system sleep is held back, never the screen saver or the lock.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["KeepAwake"]

log = logging.getLogger(__name__)

RETRY_S = 300.0
_ES_CONTINUOUS = 0x80000000
_ES_SYSTEM_REQUIRED = 0x00000001


class KeepAwake:
    """Holds system sleep off while held. `command` is the inhibitor to run as a child, with `{why}`
    in it replaced (None on Windows, which uses its API)."""

    def __init__(
        self, command: Sequence[str] | None, *, name: str, reads_stdin: bool = True, clock: Any = time.monotonic
    ) -> None:
        self.command = list(command) if command is not None else None
        self.name = name  # shown in the app: "systemd-inhibit", "caffeinate", "SetThreadExecutionState"
        self.reads_stdin = reads_stdin  # ends when its stdin closes (else it is terminated at once)
        self._clock = clock
        self._child: subprocess.Popen[bytes] | None = None
        self._held = False
        self._retry_at = 0.0  # an inhibitor that ended by itself (no logind, refused) is not respawned before
        atexit.register(self.release)

    @classmethod
    def for_this_os(cls) -> KeepAwake | None:
        """The inhibitor this OS has, or None (then the option is not offered)."""
        if sys.platform == "win32":
            return cls(None, name="SetThreadExecutionState")
        if sys.platform == "darwin" and shutil.which("caffeinate"):
            return cls(["caffeinate", "-i", "-w", str(os.getpid())], name="caffeinate", reads_stdin=False)
        inhibit, cat = shutil.which("systemd-inhibit"), shutil.which("cat")
        if inhibit and cat:
            command = [inhibit, "--what=sleep:idle", "--who=Commonweights", "--why={why}", "--mode=block"]
            return cls([*command, cat], name="systemd-inhibit")
        return None

    @property
    def held(self) -> bool:
        if self._child is not None and self._child.poll() is not None:
            log.warning(
                "%s ended on its own (code %s): sleep is no longer held off; trying again in %.0f s",
                self.name,
                self._child.returncode,
                RETRY_S,
            )
            self._child, self._held = None, False
            self._retry_at = self._clock() + RETRY_S
        return self._held

    def hold(self, why: str) -> None:
        if self.held or self._clock() < self._retry_at:
            return
        if self.command is None:
            ctypes.windll.kernel32.SetThreadExecutionState(_ES_CONTINUOUS | _ES_SYSTEM_REQUIRED)  # type: ignore[attr-defined]
        else:
            argv = [part.replace("{why}", why) for part in self.command]
            try:
                # stdin: the pipe whose end (release, or the app's death) ends the held command
                self._child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            except OSError as error:
                log.warning("cannot keep the computer awake with %s: %s", self.name, error)
                return
        self._held = True

    def release(self) -> None:
        if self.command is None:
            if self._held:
                ctypes.windll.kernel32.SetThreadExecutionState(_ES_CONTINUOUS)  # type: ignore[attr-defined]
        elif self._child is not None:
            if not self.reads_stdin:
                self._child.terminate()
            if self._child.stdin is not None:
                with contextlib.suppress(OSError):
                    self._child.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(timeout=5)
            if self._child.poll() is None:
                self._child.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._child.wait(timeout=5)
            if self._child.poll() is None:
                self._child.kill()
                self._child.wait()
            self._child = None
        self._held = False
