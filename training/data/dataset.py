"""Reading a prepared dataset: memory-mapped shards seen as one token stream per split."""

from __future__ import annotations

import bisect
import hashlib
import operator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from training.data.errors import DataError
from training.data.manifest import MANIFEST_NAME, TOKENIZER_NAME, DatasetManifest, ShardInfo, Split
from training.data.tokenizer import Tokenizer, load_tokenizer


class _Stream:
    """One split's shards, memory-mapped, addressed as a single array."""

    def __init__(self, root: Path, split: Split, shards: tuple[ShardInfo, ...], dtype: np.dtype[Any]) -> None:
        self.split = split
        self.maps: list[np.memmap[Any, np.dtype[Any]]] = []
        self.starts: list[int] = []
        total = 0
        for shard in shards:
            if shard.tokens == 0:
                continue
            path = root / shard.file
            _check_size(path, shard.tokens * dtype.itemsize)
            self.maps.append(np.memmap(path, dtype=dtype, mode="r", shape=(shard.tokens,)))
            self.starts.append(total)
            total += shard.tokens
        self.total = total

    def slice(self, start: int, length: int) -> npt.NDArray[np.int64]:
        start, length = operator.index(start), operator.index(length)
        if start < 0 or length < 0 or start + length > self.total:
            raise DataError(
                "out_of_range",
                f"{self.split} tokens [{start}, {start + length}) are outside the dataset's "
                f"{self.total} {self.split} tokens.",
            )
        out = np.empty(length, dtype=np.int64)
        done = 0
        index = bisect.bisect_right(self.starts, start) - 1
        while done < length:
            shard = self.maps[index]
            offset = start + done - self.starts[index]
            take = min(length - done, shard.shape[0] - offset)
            out[done : done + take] = shard[offset : offset + take]
            done += take
            index += 1
        return out


def _check_size(path: Path, expected: int) -> None:
    try:
        size = path.stat().st_size
    except OSError as error:
        raise DataError(
            "bad_shard", f"the shard {path} cannot be read ({error.strerror}); prepare the dataset again."
        ) from error
    if size != expected:
        raise DataError(
            "bad_shard",
            f"the shard {path} has {size} bytes where manifest.json says {expected}; the file is "
            "truncated or was changed. Prepare the dataset again.",
        )


class TokenDataset:
    """A prepared dataset, opened for reading.

    >>> data = TokenDataset.open(Path("datasets/stdlib"))      # doctest: +SKIP
    >>> batch = data.train_slice(0, 129)                       # int64 ids, crosses shards freely
    >>> data.tokenizer().decode(batch)

    Shards are memory-mapped, so opening is cheap and slices read only what they cover. Pickling
    a TokenDataset (for worker processes) sends the folder and manifest, not the tokens.
    """

    def __init__(self, root: Path, manifest: DatasetManifest) -> None:
        self.root = root
        self.manifest = manifest
        dtype = np.dtype(manifest.dtype).newbyteorder("<")
        self._train = _Stream(root, "train", manifest.shards_of("train"), dtype)
        self._holdout = _Stream(root, "holdout", manifest.shards_of("holdout"), dtype)
        self._tokenizer: Tokenizer | None = None

    @classmethod
    def open(cls, path: Path, *, verify: bool = False) -> TokenDataset:
        """Open the dataset in folder `path` (or at its manifest.json).

        `verify=True` also checks every shard's sha256 and that the tokenizer loads and matches.
        """
        path = Path(path)
        root = path.parent if path.name == MANIFEST_NAME and path.is_file() else path
        manifest_path = root / MANIFEST_NAME
        try:
            text = manifest_path.read_bytes()
        except FileNotFoundError as error:
            raise DataError(
                "not_a_dataset",
                f"{root} holds no {MANIFEST_NAME}; prepare a dataset there with `commonweights data prepare`.",
            ) from error
        except OSError as error:
            raise DataError("unreadable", f"cannot read {manifest_path}: {error.strerror}.") from error
        dataset = cls(root, DatasetManifest.from_json(text))
        if verify:
            dataset.verify()
        return dataset

    def verify(self) -> None:
        """Check every shard against its sha256 and the tokenizer against the manifest."""
        for shard in self.manifest.shards:
            path = self.root / shard.file
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
            except OSError as error:
                raise DataError("bad_shard", f"cannot read the shard {path}: {error.strerror}.") from error
            if digest.hexdigest() != shard.sha256:
                raise DataError(
                    "hash_mismatch",
                    f"the shard {path} does not match its sha256 in {MANIFEST_NAME}; the file is corrupt "
                    "or was changed. Prepare the dataset again.",
                )
        tokenizer = self.tokenizer()
        if (tokenizer.kind, tokenizer.vocab_size, tokenizer.eos_id) != (
            self.manifest.tokenizer,
            self.manifest.vocab_size,
            self.manifest.eos_id,
        ):
            raise DataError(
                "bad_manifest",
                f"{TOKENIZER_NAME} in {self.root} does not match {MANIFEST_NAME}; prepare the dataset again.",
            )

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    @property
    def eos_id(self) -> int:
        return self.manifest.eos_id

    @property
    def num_train_tokens(self) -> int:
        return self._train.total

    @property
    def num_holdout_tokens(self) -> int:
        return self._holdout.total

    def train_slice(self, start: int, length: int) -> npt.NDArray[np.int64]:
        """Tokens [start, start + length) of the train stream, as an int64 copy."""
        return self._train.slice(start, length)

    def holdout_slice(self, start: int, length: int) -> npt.NDArray[np.int64]:
        """Tokens [start, start + length) of the holdout stream, as an int64 copy."""
        return self._holdout.slice(start, length)

    def tokenizer(self) -> Tokenizer:
        """The dataset's tokenizer (loaded once)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.root / TOKENIZER_NAME)
        return self._tokenizer

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "manifest": self.manifest.to_json()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"], DatasetManifest.from_json(state["manifest"]))  # type: ignore[misc]

    def __repr__(self) -> str:
        return (
            f"TokenDataset({str(self.root)!r}, {self.manifest.tokenizer}, vocab {self.vocab_size}, "
            f"{self.num_train_tokens} train + {self.num_holdout_tokens} holdout tokens)"
        )
