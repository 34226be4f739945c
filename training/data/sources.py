"""Reading corpus files as a stream of documents (finding them is `training.files`, named here too).

A *document* is one `.txt`, `.md` or `.py` file, or one line of a `.jsonl` file (its `text`
field). Documents are read as *pieces* of at most about `PIECE_BYTES`, cut at line ends, so a file
larger than memory is never held whole; every piece carries the key of its document (a hash of the
document's first piece) and says whether it ends the document.

Policy for bad input, in one place:

- a path that is missing or unreadable, or a file whose bytes are not UTF-8 text (NUL bytes or
  invalid UTF-8 beyond `8 + size // 1000` bytes), stops the run with a `DataError`; a few stray bad
  bytes are dropped (NUL) or replaced with U+FFFD (invalid UTF-8);
- a bad `.jsonl` line (not JSON, not an object, no `text` string) is skipped and counted, and the
  count is reported as a warning; a `.jsonl` file with bad lines and no good one stops the run;
- empty and whitespace-only documents are skipped.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.data.errors import DataError
from training.files import SUPPORTED_SUFFIXES, find_files

__all__ = [
    "PIECE_BYTES",
    "SUPPORTED_SUFFIXES",
    "CorpusReader",
    "Piece",
    "ProgressCallback",
    "ReadStats",
    "document_key",
    "find_files",
]

PIECE_BYTES = 1 << 16
_SNIFF_BYTES = 8192
_SURROGATE_ESCAPES = re.compile("[\udc80-\udcff]")

ProgressCallback = Callable[[int], None]


def document_key(first_piece: bytes) -> int:
    """A 64-bit content hash of a document's first piece: the same text always gets the same key."""
    return int.from_bytes(hashlib.blake2b(first_piece, digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of one document: its text, that text as UTF-8, and where it sits in the document."""

    text: str
    data: bytes
    key: int  # the document's
    first: bool
    last: bool
    section_key: int = 0  # this piece's own (a holdout split by section; training.data.split)


@dataclass
class ReadStats:
    """What one pass over the corpus saw; two passes over an unchanged corpus see the same."""

    files: int = 0
    documents: int = 0
    text_bytes: int = 0
    file_bytes: int = 0
    skipped_lines: int = 0
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)

    def same_corpus(self, other: ReadStats) -> bool:
        return (self.documents, self.text_bytes, self.file_bytes) == (
            other.documents,
            other.text_bytes,
            other.file_bytes,
        )


class CorpusReader:
    """Reads `files` as pieces of documents, stopping after `max_bytes` of text.

    >>> reader = CorpusReader([Path("notes.txt")])            # doctest: +SKIP
    >>> for piece in reader.pieces():                          # doctest: +SKIP
    ...     print(piece.key, piece.last, len(piece.text))
    >>> reader.stats.documents                                 # doctest: +SKIP

    Each call to `pieces()` is a fresh pass and resets `stats`.
    """

    def __init__(self, files: Sequence[Path], *, max_bytes: int | None = None) -> None:
        self.files = list(files)
        self.max_bytes = max_bytes
        self.stats = ReadStats()

    def estimated_bytes(self) -> int:
        """Bytes a pass will read, for a progress bar: file sizes, capped at `max_bytes`."""
        total = 0
        for path in self.files:
            with contextlib.suppress(OSError):  # reported properly when the pass reaches it
                total += path.stat().st_size
        return total if self.max_bytes is None else min(total, self.max_bytes)

    def pieces(self, on_bytes: ProgressCallback | None = None) -> Iterator[Piece]:
        stats = self.stats = ReadStats()
        budget = self.max_bytes

        def progress(n: int) -> None:
            stats.file_bytes += n
            if on_bytes is not None:
                on_bytes(n)

        for path in self.files:
            stats.files += 1
            chunks = _jsonl_chunks(path, stats) if path.suffix.lower() == ".jsonl" else _text_chunks(path)
            key = 0
            for text, first, last, consumed in chunks:
                progress(consumed)
                if first and not text.strip() and last:
                    continue
                try:
                    data = text.encode("utf-8")
                except UnicodeEncodeError:  # lone surrogates, from \\ud800-style JSON escapes
                    data = text.encode("utf-8", "replace")
                    text = data.decode("utf-8")
                if budget is not None and stats.text_bytes + len(data) >= budget:
                    data = data[: budget - stats.text_bytes].decode("utf-8", "ignore").encode("utf-8")
                    text = data.decode("utf-8")
                    stats.truncated = True
                    if first and not text.strip():
                        return
                    last = True
                if first:
                    key = document_key(data)
                    stats.documents += 1
                stats.text_bytes += len(data)
                yield Piece(text, data, key, first, last, key if first else document_key(data))
                if stats.truncated:
                    return


def _read_error(path: Path, error: OSError) -> DataError:
    reason = error.strerror or str(error)
    return DataError("unreadable", f"cannot read {path}: {reason}.")


def _binary_error(path: Path, bad: int, seen: int) -> DataError:
    return DataError(
        "binary",
        f"{path} does not look like UTF-8 text: {bad} of its first {seen} bytes are NUL or invalid "
        "UTF-8. Convert it to UTF-8 text or leave it out.",
    )


def _text_chunks(path: Path) -> Iterator[tuple[str, bool, bool, int]]:
    """(text, first, last, file bytes consumed) for one text file, cut at line ends."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as error:
        raise _read_error(path, error) from error
    try:
        size = os.fstat(handle.fileno()).st_size
        tolerance = 8 + size // 1000
        decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        bad = seen = 0
        carry = ""
        first = True
        while True:
            block = handle.read(PIECE_BYTES)
            seen += len(block)
            eof = len(block) < PIECE_BYTES or seen >= size
            text = decoder.decode(block, final=eof)
            if first and text.startswith("\ufeff"):
                text = text[1:]
            nuls = text.count("\x00")
            if nuls:
                text = text.replace("\x00", "")
            text, invalid = _SURROGATE_ESCAPES.subn("\ufffd", text)
            bad += nuls + invalid
            if bad > tolerance:
                raise _binary_error(path, bad, seen)
            text = carry + text
            if eof:
                yield text, first, True, len(block)
                return
            # Cut at the last line end; one enormous line is cut anyway, memory matters more.
            cut = text.rfind("\n") + 1 or len(text)
            carry = text[cut:]
            yield text[:cut], first, False, len(block)
            first = False
    except OSError as error:
        raise _read_error(path, error) from error
    finally:
        handle.close()


def _jsonl_chunks(path: Path, stats: ReadStats) -> Iterator[tuple[str, bool, bool, int]]:
    """(text, True, True, file bytes consumed) for each good line of a JSON Lines file."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as error:
        raise _read_error(path, error) from error
    try:
        try:
            head = handle.read(_SNIFF_BYTES)
            handle.seek(0)
        except OSError as error:
            raise _read_error(path, error) from error
        decoded = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode(head)
        head_bad = head.count(0) + len(_SURROGATE_ESCAPES.findall(decoded))
        if head_bad > 8 + len(head) // 1000:
            raise _binary_error(path, head_bad, len(head))
        good = bad = 0
        first_bad = ""
        for number, line in enumerate(handle, start=1):
            reason = None
            text = ""
            if not line.strip():
                yield "", True, True, len(line)
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                reason = f"not valid JSON ({error})" if not isinstance(error, UnicodeError) else "not UTF-8"
            else:
                if not isinstance(record, dict):
                    reason = f"a JSON {type(record).__name__}, not an object"
                elif not isinstance(record.get("text"), str):
                    reason = 'no "text" string field'
                else:
                    text = record["text"]
            if reason is not None:
                bad += 1
                if not first_bad:
                    first_bad = f"line {number}: {reason}"
                yield "", True, True, len(line)
                continue
            good += 1
            yield text, True, True, len(line)
    except OSError as error:
        raise _read_error(path, error) from error
    finally:
        handle.close()
    if bad and not good:
        raise DataError(
            "bad_jsonl",
            f'{path} has no usable line ({first_bad}); each line must be a JSON object with a "text" string field.',
        )
    if bad:
        stats.skipped_lines += bad
        stats.warnings.append(f"{path}: skipped {bad} bad line{'s' if bad > 1 else ''} (first: {first_bad})")
