"""manifest.json: what a prepared dataset holds, and the checks that make it safe to trust.

A dataset folder holds `manifest.json`, `tokenizer.json` and raw little-endian token shards
(`train_00000.bin`, ..., `holdout_00000.bin`, ...). Each split is one token stream: its shards,
in manifest order, concatenated; every document in it is followed by the end-of-document token.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from training.data.errors import DataError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKENIZER_NAME = "tokenizer.json"
SHARD_NAME = re.compile(r"(train|holdout)_\d{5,}\.bin")
_SHA256 = re.compile(r"[0-9a-f]{64}")

Split = Literal["train", "holdout"]
Dtype = Literal["uint16", "uint32"]


def dtype_for(vocab_size: int) -> Dtype:
    """The narrowest shard dtype that holds every id below `vocab_size`."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


@dataclass(frozen=True)
class ShardInfo:
    """One shard file: its name in the dataset folder, its split, its token count and sha256."""

    file: str
    split: Split
    tokens: int
    sha256: str


@dataclass(frozen=True)
class DatasetManifest:
    """The contents of manifest.json.

    >>> manifest = DatasetManifest.from_json(path.read_text())   # doctest: +SKIP
    >>> manifest.train_tokens, manifest.dtype                     # doctest: +SKIP
    (1048576, 'uint16')
    """

    format_version: int
    tokenizer: Literal["bpe", "bytes"]
    vocab_size: int
    eos_id: int
    dtype: Dtype
    train_tokens: int
    holdout_tokens: int
    documents: int
    holdout_documents: int
    shards: tuple[ShardInfo, ...]
    source: str
    created_at: str
    corpus_bytes: int = 0
    holdout_fraction: float = 0.0
    warnings: tuple[str, ...] = field(default=())
    holdout_unit: Literal["document", "section"] = "document"  # what was held out (training.data.split)

    def shards_of(self, split: Split) -> tuple[ShardInfo, ...]:
        return tuple(s for s in self.shards if s.split == split)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> DatasetManifest:
        """Parse and check a manifest; anything inconsistent raises DataError("bad_manifest")."""
        try:
            raw = json.loads(text)
        except ValueError as error:
            raise _bad(f"it is not JSON ({error})") from error
        if not isinstance(raw, dict):
            raise _bad("it is not a JSON object")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise _bad(f"its format_version is {version!r}; this version of Commonweights reads {FORMAT_VERSION}")
        shards = tuple(_shard(entry, i) for i, entry in enumerate(_get(raw, "shards", list)))
        manifest = cls(
            format_version=FORMAT_VERSION,
            tokenizer=_choice(raw, "tokenizer", ("bpe", "bytes")),
            vocab_size=_count(raw, "vocab_size"),
            eos_id=_count(raw, "eos_id"),
            dtype=_choice(raw, "dtype", ("uint16", "uint32")),
            train_tokens=_count(raw, "train_tokens"),
            holdout_tokens=_count(raw, "holdout_tokens"),
            documents=_count(raw, "documents"),
            holdout_documents=_count(raw, "holdout_documents"),
            shards=shards,
            source=_get(raw, "source", str),
            created_at=_get(raw, "created_at", str),
            corpus_bytes=_count(raw, "corpus_bytes", 0),
            holdout_fraction=_fraction(raw),
            warnings=tuple(_strings(raw.get("warnings", []))),
            holdout_unit=_choice(raw, "holdout_unit", ("document", "section")) if "holdout_unit" in raw else "document",
        )
        manifest._check()
        return manifest

    def _check(self) -> None:
        if not 2 <= self.vocab_size <= 1 << 32:
            raise _bad(f"vocab_size {self.vocab_size} is out of range")
        if self.eos_id >= self.vocab_size:
            raise _bad(f"eos_id {self.eos_id} is not below vocab_size {self.vocab_size}")
        if self.dtype != dtype_for(self.vocab_size):
            raise _bad(f"dtype {self.dtype} does not fit vocab_size {self.vocab_size}")
        if self.holdout_documents > self.documents:
            raise _bad("holdout_documents is larger than documents")
        names = [s.file for s in self.shards]
        if len(set(names)) != len(names):
            raise _bad("it lists a shard twice")
        for split, total in (("train", self.train_tokens), ("holdout", self.holdout_tokens)):
            counted = sum(s.tokens for s in self.shards if s.split == split)
            if counted != total:
                raise _bad(f"its {split} shards hold {counted} tokens, not the {total} it declares")


def _bad(reason: str) -> DataError:
    return DataError("bad_manifest", f"manifest.json is not valid: {reason}. Prepare the dataset again.")


def _get(raw: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _bad(f'"{key}" is missing or not a {kind.__name__}')
    return value


def _count(raw: dict[str, Any], key: str, default: int | None = None) -> int:
    if default is not None and key not in raw:
        return default
    value: int = _get(raw, key, int)
    if value < 0:
        raise _bad(f'"{key}" is negative')
    return value


def _choice(raw: dict[str, Any], key: str, allowed: tuple[str, ...]) -> Any:
    value = raw.get(key)
    if value not in allowed:
        raise _bad(f'"{key}" is {value!r}, not one of {", ".join(allowed)}')
    return value


def _fraction(raw: dict[str, Any]) -> float:
    value = raw.get("holdout_fraction", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad('"holdout_fraction" is not a number')
    return float(value)


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad('"warnings" is not a list of strings')
    return value


def _shard(entry: Any, index: int) -> ShardInfo:
    if not isinstance(entry, dict):
        raise _bad(f"shard {index} is not an object")
    name = _get(entry, "file", str)
    match = SHARD_NAME.fullmatch(name)
    if match is None:
        raise _bad(f"shard {index} has the file name {name!r}, not one like train_00000.bin")
    split = _choice(entry, "split", ("train", "holdout"))
    if match.group(1) != split:
        raise _bad(f"shard {name} is listed in the {split} split")
    tokens = _count(entry, "tokens")
    digest = _get(entry, "sha256", str)
    if not _SHA256.fullmatch(digest):
        raise _bad(f"shard {name} has a malformed sha256")
    return ShardInfo(file=name, split=split, tokens=tokens, sha256=digest)
