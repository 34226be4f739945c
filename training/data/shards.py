"""Writing one split's token stream as fixed-size raw shards, hashing as it goes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from training.data.manifest import Dtype, ShardInfo, Split

SHARD_TOKENS = 64 << 20


class ShardWriter:
    """Appends tokens to `{split}_00000.bin`, `{split}_00001.bin`, ... of `shard_tokens` each.

    >>> writer = ShardWriter(folder, "train", "uint16")       # doctest: +SKIP
    >>> writer.write(np.array([5, 6, 7]))                      # doctest: +SKIP
    >>> writer.close()                                          # doctest: +SKIP
    (ShardInfo(file='train_00000.bin', split='train', tokens=3, sha256='...'),)

    Shards are raw little-endian integers; no empty shard is ever written.
    """

    def __init__(self, folder: Path, split: Split, dtype: Dtype, shard_tokens: int = SHARD_TOKENS) -> None:
        if shard_tokens < 1:
            raise ValueError("shard_tokens must be positive")
        self.folder = folder
        self.split: Split = split
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.shard_tokens = shard_tokens
        self.tokens = 0
        self._done: list[ShardInfo] = []
        self._file: BinaryIO | None = None
        self._name = ""
        self._in_shard = 0
        self._hash = hashlib.sha256()

    def write(self, tokens: npt.NDArray[np.integer]) -> None:
        data = np.ascontiguousarray(tokens, dtype=self.dtype)
        while data.size:
            if self._file is None:
                self._open_next()
            assert self._file is not None
            take = min(data.size, self.shard_tokens - self._in_shard)
            chunk = data[:take].tobytes()
            self._file.write(chunk)
            self._hash.update(chunk)
            self._in_shard += take
            self.tokens += take
            data = data[take:]
            if self._in_shard == self.shard_tokens:
                self._finish()

    def close(self) -> tuple[ShardInfo, ...]:
        if self._file is not None:
            self._finish()
        return tuple(self._done)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open_next(self) -> None:
        self._name = f"{self.split}_{len(self._done):05d}.bin"
        self._file = open(self.folder / self._name, "wb")  # noqa: SIM115 - closed in _finish
        self._in_shard = 0
        self._hash = hashlib.sha256()

    def _finish(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self._done.append(ShardInfo(self._name, self.split, self._in_shard, self._hash.hexdigest()))
