"""Processes that stand for the app in tests of what must not outlive it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["app_with_a_child", "process_state"]

REPO = Path(__file__).resolve().parents[2]


def app_with_a_child(source: str) -> tuple[subprocess.Popen[bytes], int]:
    """A Python process running `source`, which starts something and prints that something's pid, then
    waits to be killed; returns the process and the pid it printed."""
    app = subprocess.Popen(
        [sys.executable, "-c", f"{source}\nimport time; time.sleep(600)"], stdout=subprocess.PIPE, cwd=REPO
    )
    assert app.stdout is not None
    return app, int(app.stdout.readline())


def process_state(pid: int) -> str | None:
    """The process's state letter in /proc (R, S, T: stopped, Z: ended, unreaped), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
