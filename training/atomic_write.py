"""Replacing a file's content all at once: after a crash the old file or the new one is there, never a mix.

    >>> write_atomically(path, tomli_w.dumps(settings))            # private (0600) unless told
    >>> write_atomically(entry, desktop_file, mode=0o644)          # others may read it
    >>> os.replace(finished_download, path); fsync_folder(path.parent)

The one way every package writes a file that must survive a crash: the coordinator's blobs, the
volunteer's credentials, preferences, statistics, cache and unit checkpoints, the benchmark report.
It lives in `training`, the lowest layer that does file I/O (datasets, checkpoints) and the one both
`coordinator` and `volunteer_app` already build on; `protocol` is the wire contract and stays free of
files.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["fsync_folder", "write_atomically"]


def write_atomically(path: Path, data: bytes | str, *, mode: int = 0o600, durable: bool = True) -> None:
    """Replace `path` with `data` (str is written as UTF-8), durably once this returns.

    The bytes go to a temporary file in the same folder (so the rename never crosses file systems),
    are flushed and fsynced, the file gets `mode` exactly (whatever the umask), then it is renamed
    over `path` and, on POSIX, the folder is fsynced so the rename itself survives a power cut.
    On any error the temporary file is removed and `path` keeps its old content. Missing folders
    are created. `durable=False` skips both fsyncs, for files that can be made again from others:
    still all-or-nothing after a crash of the process, but a power cut may leave the file empty.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # Created private: the content is never readable by others, not even before the chmod.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if durable:
        fsync_folder(path.parent)


def fsync_folder(path: Path) -> None:
    """Make renames and new names in the folder `path` durable (POSIX; elsewhere renames are journaled)."""
    if os.name != "posix":
        return  # Windows cannot open a folder for fsync
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
