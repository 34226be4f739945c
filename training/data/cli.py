"""`commonweights data prepare`: the command-line face of `prepare_dataset`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from training.data.corpus import default_corpus_description, default_corpus_sources
from training.data.errors import DataError
from training.data.manifest import DatasetManifest
from training.data.prepare import prepare_dataset


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare a dataset as the parsed `args` say; 0 when done, 2 for bad input (message on stderr)."""
    sources: list[Path] = list(args.sources)
    description = None
    try:
        if not sources:
            sources = default_corpus_sources()
            description = default_corpus_description()
        manifest = prepare_dataset(
            sources,
            args.out,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            holdout_fraction=args.holdout_fraction,
            max_bytes=args.max_bytes,
            progress=not args.quiet,
            source_description=description,
        )
    except DataError as error:
        print(f"commonweights data prepare: error: {error}", file=sys.stderr)
        return 2
    for warning in manifest.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(summary(manifest, Path(os.path.abspath(args.out))))
    return 0


def summary(manifest: DatasetManifest, out_dir: Path) -> str:
    """A few lines saying what a prepared dataset holds."""
    train_shards = len(manifest.shards_of("train"))
    holdout_shards = len(manifest.shards_of("holdout"))
    if manifest.holdout_unit == "section":
        held = "sections of documents held out: too few documents to hold out whole ones"
    else:
        held = f"{_count(manifest.holdout_documents, 'document')} held out"
    return "\n".join(
        [
            f"prepared {_count(manifest.documents, 'document')} ({_size(manifest.corpus_bytes)} of text) "
            f"from {manifest.source}",
            f"  tokens     {manifest.train_tokens:,} train, {manifest.holdout_tokens:,} holdout ({held})",
            f"  tokenizer  {manifest.tokenizer}, vocab {manifest.vocab_size:,}, {manifest.dtype} shards",
            f"  shards     {train_shards} train, {holdout_shards} holdout",
            f"  out        {out_dir}",
        ]
    )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _size(n: int) -> str:
    value = float(n)
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
