"""Tokenizers: byte-level BPE (trained with `tokenizers`) and raw UTF-8 bytes.

Both map any text to ids and back exactly (no normalization, no unknown token) and have one
special token, end-of-document (`eos_id`), which never comes out of `encode`: text that happens
to spell `<|endoftext|>` is encoded as ordinary text.

>>> tok = ByteTokenizer()
>>> tok.encode("hé")
[104, 195, 169]
>>> tok.decode([104, 195, 169, tok.eos_id])
'hé'
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from training.data.errors import DataError

EOS_TOKEN = "<|endoftext|>"
MIN_BPE_VOCAB = 260
MAX_BPE_VOCAB = 1 << 20
_BYTES_FORMAT = "commonweights-bytes"

TokenizerKind = Literal["bpe", "bytes"]


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of Commonweights needs from a tokenizer."""

    @property
    def kind(self) -> TokenizerKind: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[npt.NDArray[np.uint32]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, path: Path) -> None: ...


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, and end-of-document as 256."""

    kind: TokenizerKind = "bytes"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[npt.NDArray[np.uint32]]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint32) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """Text for `ids`, skipping end-of-document; a cut multi-byte character becomes U+FFFD."""
        ids = [int(i) for i in ids]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}) for the byte tokenizer")
        return bytes(i for i in ids if i != self.eos_id).decode("utf-8", "replace")

    def save(self, path: Path) -> None:
        spec = {"type": _BYTES_FORMAT, "version": 1, "vocab_size": self.vocab_size, "eos_id": self.eos_id}
        path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


class BpeTokenizer:
    """Byte-level BPE from the `tokenizers` package; `eos_id` is 0."""

    kind: TokenizerKind = "bpe"

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        # Special tokens are matched only by id: a document that spells `<|endoftext|>` is text.
        self._inner.encode_special_tokens = True
        eos = inner.token_to_id(EOS_TOKEN)
        if eos is None:
            raise DataError("bad_tokenizer_file", f"the BPE tokenizer has no {EOS_TOKEN} token.")
        self._eos_id = int(eos)
        self._vocab_size = int(inner.get_vocab_size(with_added_tokens=True))
        self._batch = getattr(inner, "encode_batch_fast", inner.encode_batch)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_id(self) -> int:
        return self._eos_id

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._inner.encode(text, add_special_tokens=False).ids
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[npt.NDArray[np.uint32]]:
        encodings = self._batch(list(texts), add_special_tokens=False)
        return [np.array(e.ids, dtype=np.uint32) for e in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Text for `ids`, skipping end-of-document."""
        text: str = self._inner.decode([int(i) for i in ids], skip_special_tokens=True)
        return text

    def to_json(self) -> str:
        """The `tokenizers` JSON document (what `save` writes)."""
        text: str = self._inner.to_str(pretty=False)
        return text

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")


def train_bpe(texts: Iterable[str], vocab_size: int) -> BpeTokenizer:
    """Train byte-level BPE on a stream of texts; memory grows with distinct words, not with text.

    The vocabulary can come out smaller than `vocab_size` when the corpus has fewer merges to make.
    """
    from tokenizers import Tokenizer as HfTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    inner = HfTokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    inner.train_from_iterator(texts, trainer=trainer)
    return BpeTokenizer(inner)


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer saved at `path` (a dataset's tokenizer.json)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise DataError("unreadable", f"cannot read the tokenizer {path}: {error.strerror}.") from error
    except UnicodeDecodeError as error:
        raise DataError("bad_tokenizer_file", f"{path} is not a tokenizer file (not UTF-8).") from error
    try:
        spec = json.loads(text)
    except ValueError as error:
        raise DataError("bad_tokenizer_file", f"{path} is not a tokenizer file ({error}).") from error
    if isinstance(spec, dict) and spec.get("type") == _BYTES_FORMAT:
        return ByteTokenizer()
    if not isinstance(spec, dict) or "model" not in spec:
        raise DataError("bad_tokenizer_file", f"{path} is neither a BPE nor a byte tokenizer file.")
    from tokenizers import Tokenizer as HfTokenizer

    try:
        inner = HfTokenizer.from_str(text)
    except Exception as error:  # tokenizers raises its own Exception subclass for any parse error
        raise DataError("bad_tokenizer_file", f"{path} is not a valid BPE tokenizer ({error}).") from error
    return BpeTokenizer(inner)
