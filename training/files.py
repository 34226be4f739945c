"""Finding corpus files: which files a list of folders and files names, in a deterministic order, without
reading them.

    find_files([Path("notes"), Path("chat.jsonl")])    # every .txt, .md, .py and .jsonl file, sorted

Pure Python (no numpy, no tokenizers), so the desktop app, whose process carries neither, can show a
volunteer which of their files a campaign would use; `training.data.sources` reads what this finds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from training.data_error import DataError

__all__ = ["SUPPORTED_SUFFIXES", "find_files"]

SUPPORTED_SUFFIXES = (".txt", ".md", ".py", ".jsonl")
_SKIPPED_DIR_NAMES = frozenset({"__pycache__", "node_modules"})
_KINDS = ", ".join(SUPPORTED_SUFFIXES[:-1]) + " or " + SUPPORTED_SUFFIXES[-1]


def find_files(sources: Sequence[Path]) -> list[Path]:
    """The corpus files named by `sources`, in a deterministic order.

    Files are taken as given (they must have a supported suffix); folders are searched
    recursively for supported files, skipping hidden entries and `__pycache__`, in sorted order.
    A file reached twice is read once. A missing or unreadable source, an unsupported file, or no
    file at all raises `DataError`.
    """
    if not sources:
        raise DataError("no_sources", f"no sources given: pass files or folders of {_KINDS} text.")
    found: list[Path] = []
    seen: set[Path] = set()
    for source in sources:
        source = Path(source)
        for path in _files_under(source):
            real = path.resolve()
            if real not in seen:
                seen.add(real)
                found.append(path)
    if not found:
        names = ", ".join(str(s) for s in sources[:3]) + (", ..." if len(sources) > 3 else "")
        raise DataError("empty_corpus", f"found no {_KINDS} files in {names}; nothing to prepare.")
    return found


def _files_under(source: Path) -> list[Path]:
    try:
        is_dir = source.is_dir()
        exists = is_dir or source.exists()
    except OSError as error:
        raise DataError("unreadable", f"cannot read {source}: {error.strerror or error}.") from error
    if not exists:
        raise DataError("unreadable", f"{source} does not exist; check the path.")
    if not is_dir:
        if not source.is_file() or source.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise DataError(
                "unsupported_file",
                f"{source} is not a {_KINDS} file; convert it to one of those or leave it out.",
            )
        return [source]

    def fail(error: OSError) -> None:
        raise DataError("unreadable", f"cannot read the folder {error.filename}: {error.strerror}.")

    files: list[Path] = []
    for folder, dirs, names in os.walk(source, onerror=fail):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIR_NAMES)
        for name in sorted(names):
            path = Path(folder, name)
            if name.startswith(".") or path.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            if path.is_file():
                files.append(path)
    files.sort(key=lambda p: p.relative_to(source).parts)
    return files
