"""One atomic write (training/atomic_write.py): the old file or the new one, durable, no leftovers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from training.atomic_write import write_atomically


def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each fsync as "file" or "folder", then let it happen."""
    seen: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_the_content_is_replaced_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "settings.toml"
    write_atomically(path, "first = 1\n")
    write_atomically(path, "ünïcode = 2\n")
    assert path.read_bytes() == "ünïcode = 2\n".encode()
    assert [p.name for p in path.parent.iterdir()] == ["settings.toml"]


@pytest.mark.skipif(os.name != "posix", reason="folders are fsynced on POSIX only")
def test_the_file_then_its_folder_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = fsyncs(monkeypatch)
    write_atomically(tmp_path / "blob", b"\x00" * 10)
    assert seen == ["file", "folder"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_keeps_the_old_content_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "credentials.toml"
    write_atomically(path, b"old")

    def broken(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(OSError, match="No space"):
        write_atomically(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["credentials.toml"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_the_file_is_private_unless_a_mode_is_given_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        write_atomically(tmp_path / "private", b"token")
        write_atomically(tmp_path / "shared.desktop", b"[Desktop Entry]\n", mode=0o644)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "shared.desktop").stat().st_mode) == 0o644
