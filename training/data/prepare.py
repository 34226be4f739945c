"""`prepare_dataset`: corpus files in, a verified dataset folder out.

Two streaming passes over the corpus, so memory stays bounded whatever its size:

1. read every document once: validate it, note its holdout key and (for BPE) feed it to the
   tokenizer trainer;
2. read it again, tokenize in batches and append each document, followed by end-of-document, to
   the train or holdout shards.

Everything is written into a hidden sibling folder that is renamed into place only when the
shards, the tokenizer and manifest.json are complete and on disk; a run that crashes or is
interrupted never leaves a manifest that points at partial shards. An existing dataset in the out
folder is replaced; any other existing content makes the run refuse.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from training.atomic_write import fsync_folder
from training.data.errors import DataError
from training.data.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SHARD_NAME,
    TOKENIZER_NAME,
    DatasetManifest,
    Split,
    dtype_for,
)
from training.data.shards import SHARD_TOKENS, ShardWriter
from training.data.sources import CorpusReader, Piece, ReadStats, find_files
from training.data.split import HoldoutPlanner, HoldoutSplit
from training.data.tokenizer import (
    MAX_BPE_VOCAB,
    MIN_BPE_VOCAB,
    ByteTokenizer,
    Tokenizer,
    load_tokenizer,
    train_bpe,
)

MAX_HOLDOUT_FRACTION = 0.5
_BATCH_BYTES = 1 << 20
_BATCH_PIECES = 4096


def prepare_dataset(
    sources: Sequence[Path],
    out_dir: Path,
    *,
    tokenizer: str = "bpe",
    vocab_size: int = 8192,
    holdout_fraction: float = 0.02,
    max_bytes: int | None = None,
    progress: bool = True,
    source_description: str | None = None,
    shard_tokens: int = SHARD_TOKENS,
    tokenizer_file: Path | None = None,
) -> DatasetManifest:
    """Tokenize the files and folders in `sources` into a dataset folder `out_dir`.

    >>> manifest = prepare_dataset([Path("corpus")], Path("data/mine"))  # doctest: +SKIP
    >>> manifest.train_tokens, manifest.holdout_tokens                    # doctest: +SKIP

    `tokenizer` is "bpe" (byte-level BPE trained on the corpus, `vocab_size` ids at most) or
    "bytes" (UTF-8 bytes plus end-of-document; `vocab_size` is ignored). `holdout_fraction` of
    the documents (by content hash, at least one when there are two or more) form the holdout
    split. `max_bytes` stops reading after that much text. `shard_tokens` sets the shard size.
    `tokenizer_file`: tokenize with this tokenizer (a campaign's tokenizer.json) instead of making one;
    `tokenizer` and `vocab_size` are then ignored.
    Raises DataError for bad input, with nothing written; the same input and options always give
    byte-identical shards and tokenizer.
    """
    _check_options(tokenizer, vocab_size, holdout_fraction, max_bytes, shard_tokens)
    given = load_tokenizer(tokenizer_file) if tokenizer_file is not None else None
    out_dir = Path(os.path.abspath(out_dir))
    _check_out_dir(out_dir)
    files = find_files(sources)
    reader = CorpusReader(files, max_bytes=max_bytes)
    planner = HoldoutPlanner(holdout_fraction)

    with _Bars(progress) as bars:
        training = given is None and tokenizer == "bpe"
        advance = bars.add("training tokenizer" if training else "reading", reader.estimated_bytes())
        texts = _first_pass(reader, planner, advance)
        tok: Tokenizer
        if training:
            tok = train_bpe(texts, vocab_size)
        elif given is not None:
            for _ in texts:
                pass
            tok = given
        else:
            for _ in texts:
                pass
            tok = ByteTokenizer()
        first = reader.stats
        bars.finish()
        if first.documents == 0:
            raise DataError(
                "empty_corpus",
                f"the sources hold no usable text: {first.files} file(s) read, all empty or "
                f"whitespace{_skipped_note(first)}. Add files with some text.",
            )
        split = planner.plan()
        warnings = list(first.warnings)
        if holdout_fraction > 0 and split.cut == 0:
            warnings.append(
                "nothing was held out: the corpus is a single section of text (under 64 KiB), so holdout "
                "loss cannot be measured on this dataset; add text"
            )
        elif split.unit == "section":
            warnings.append(
                f"too few documents ({first.documents}) to hold out {holdout_fraction:g} of them: sections "
                "of about 64 KiB were held out instead"
            )

        staging = _make_staging(out_dir)
        try:
            advance = bars.add("tokenizing", first.file_bytes)
            manifest = _write_dataset(
                staging,
                reader,
                tok,
                split,
                advance,
                shard_tokens=shard_tokens,
                source=source_description or _describe(sources),
                holdout_fraction=holdout_fraction,
                warnings=tuple(warnings),
            )
            bars.finish()
            if not reader.stats.same_corpus(first):
                raise DataError(
                    "corpus_changed",
                    "the sources changed while they were being prepared; run again once they are stable.",
                )
            _publish(staging, out_dir)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise DataError(
                "write_failed",
                f"cannot write the dataset {out_dir}: {error.strerror or error}. Check free disk space "
                "and permissions.",
            ) from error
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return manifest


def _check_options(
    tokenizer: str, vocab_size: int, holdout_fraction: float, max_bytes: int | None, shard_tokens: int
) -> None:
    if tokenizer not in ("bpe", "bytes"):
        raise DataError("bad_tokenizer", f'tokenizer must be "bpe" or "bytes", not {tokenizer!r}.')
    if tokenizer == "bpe" and (not isinstance(vocab_size, int) or not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB):
        raise DataError(
            "bad_vocab_size",
            f"vocab size {vocab_size} is out of range; a BPE vocabulary needs between {MIN_BPE_VOCAB} "
            f"and {MAX_BPE_VOCAB} ids (8192 is a good start).",
        )
    if (
        isinstance(holdout_fraction, bool)
        or not isinstance(holdout_fraction, int | float)
        or not math.isfinite(holdout_fraction)
        or not 0 <= holdout_fraction <= MAX_HOLDOUT_FRACTION
    ):
        raise DataError(
            "bad_holdout_fraction",
            f"holdout fraction {holdout_fraction} is out of range; use a share of documents between "
            f"0 and {MAX_HOLDOUT_FRACTION} (0.02 is typical, 0 means no holdout).",
        )
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
        raise DataError("bad_max_bytes", f"max bytes must be a positive number of bytes, not {max_bytes}.")
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise DataError("bad_shard_tokens", f"shard size must be a positive number of tokens, not {shard_tokens}.")


def _is_dataset_file(name: str) -> bool:
    return name in (MANIFEST_NAME, TOKENIZER_NAME) or SHARD_NAME.fullmatch(name) is not None


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DataError(
                "bad_out_dir",
                f"{out_dir} is a file; the output must be a folder (new, empty, or holding a dataset to replace).",
            )
        try:
            others = sorted(p.name for p in out_dir.iterdir() if not _is_dataset_file(p.name))
        except OSError as error:
            raise DataError("bad_out_dir", f"cannot read the folder {out_dir}: {error.strerror}.") from error
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise DataError(
                "bad_out_dir",
                f"{out_dir} already holds files that are not part of a dataset ({shown}); choose a new "
                "or empty folder (a dataset already there is replaced).",
            )
        return
    ancestor = out_dir.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DataError("bad_out_dir", f"{ancestor} is a file, so the folder {out_dir} cannot be made there.")


def _make_staging(out_dir: Path) -> Path:
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staging.mkdir(parents=True)
    except OSError as error:
        raise DataError(
            "bad_out_dir", f"cannot create a folder in {out_dir.parent}: {error.strerror or error}."
        ) from error
    return staging


def _first_pass(reader: CorpusReader, planner: HoldoutPlanner, advance: Callable[[int], None]) -> Iterator[str]:
    for piece in reader.pieces(advance):
        if piece.first:
            planner.add(piece.key)
        planner.add_section(piece.section_key)
        yield piece.text


def _write_dataset(
    staging: Path,
    reader: CorpusReader,
    tok: Tokenizer,
    split: HoldoutSplit,
    advance: Callable[[int], None],
    *,
    shard_tokens: int,
    source: str,
    holdout_fraction: float,
    warnings: tuple[str, ...],
) -> DatasetManifest:
    dtype = dtype_for(tok.vocab_size)
    writers: dict[Split, ShardWriter] = {
        "train": ShardWriter(staging, "train", dtype, shard_tokens),
        "holdout": ShardWriter(staging, "holdout", dtype, shard_tokens),
    }
    eos = np.array([tok.eos_id], dtype=np.uint32)
    documents = holdout_documents = 0
    batch: list[Piece] = []
    batch_bytes = 0

    by_section = split.unit == "section"
    previous: list[Split] = ["train"]  # the side of the last piece written

    def flush() -> None:
        parts: dict[Split, list[npt.NDArray[np.uint32]]] = {"train": [], "holdout": []}
        for piece, ids in zip(batch, tok.encode_batch([p.text for p in batch]), strict=True):
            side: Split = "holdout" if split.is_holdout(piece.section_key if by_section else piece.key) else "train"
            if not piece.first and side != previous[0]:
                parts[previous[0]].append(eos)  # the document goes on elsewhere: its text here ends
            parts[side].append(ids)
            if piece.last:
                parts[side].append(eos)
            previous[0] = side
        for side, arrays in parts.items():
            if arrays:
                writers[side].write(np.concatenate(arrays))
        batch.clear()

    try:
        for piece in reader.pieces(advance):
            if piece.first:
                documents += 1
                holdout_documents += split.is_holdout(piece.key)  # by section: documents that start held out
            batch.append(piece)
            batch_bytes += len(piece.data)
            if batch_bytes >= _BATCH_BYTES or len(batch) >= _BATCH_PIECES:
                flush()
                batch_bytes = 0
        flush()
        shards = writers["train"].close() + writers["holdout"].close()
    finally:
        for writer in writers.values():
            writer.abort()

    tok.save(staging / TOKENIZER_NAME)
    manifest = DatasetManifest(
        format_version=FORMAT_VERSION,
        tokenizer=tok.kind,
        vocab_size=tok.vocab_size,
        eos_id=tok.eos_id,
        dtype=dtype,
        train_tokens=writers["train"].tokens,
        holdout_tokens=writers["holdout"].tokens,
        documents=documents,
        holdout_documents=holdout_documents,
        shards=shards,
        source=source,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        corpus_bytes=reader.stats.text_bytes,
        holdout_fraction=float(holdout_fraction),
        holdout_unit=split.unit,
        warnings=warnings,
    )
    (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    for name in (TOKENIZER_NAME, MANIFEST_NAME):
        _fsync_file(staging / name)
    fsync_folder(staging)
    return manifest


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(staging: Path, out_dir: Path) -> None:
    """Rename the finished `staging` folder to `out_dir`, replacing what `_check_out_dir` allowed."""
    _check_out_dir(out_dir)  # again: files may have appeared there while the corpus was tokenized
    if not out_dir.exists():
        staging.rename(out_dir)
    else:
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        out_dir.rename(old)
        try:
            staging.rename(out_dir)
        except OSError:
            old.rename(out_dir)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_folder(out_dir.parent)


def _describe(sources: Sequence[Path]) -> str:
    names = [str(s) for s in sources]
    if len(names) <= 3:
        return ", ".join(names)
    return ", ".join(names[:3]) + f" and {len(names) - 3} more"


def _skipped_note(stats: ReadStats) -> str:
    return f"; {stats.skipped_lines} bad JSON line(s) skipped" if stats.skipped_lines else ""


class _Bars:
    """rich progress bars over bytes read, or nothing when disabled."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        self._task: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:<18}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )

    def __enter__(self) -> _Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add(self, description: str, total: int) -> Callable[[int], None]:
        if self._progress is None:
            return _ignore
        progress = self._progress
        task = self._task = progress.add_task(description, total=max(total, 1))

        def advance(n: int) -> None:
            progress.advance(task, n)

        return advance

    def finish(self) -> None:
        """Show the current bar as done (the byte estimate it started from can be off)."""
        if self._progress is not None and self._task is not None:
            done = self._progress.tasks[-1].completed
            self._progress.update(self._task, total=max(done, 1), completed=max(done, 1))


def _ignore(n: int) -> None:
    pass
