"""The data pipeline: corpus files in, token shards with a holdout split out.

>>> from training.data import TokenDataset, ensure_default_dataset
>>> data = TokenDataset.open(ensure_default_dataset())      # doctest: +SKIP
>>> data.train_slice(0, 8)                                  # doctest: +SKIP
array([...])

`prepare_dataset` writes a dataset folder (what `commonweights data prepare` runs);
`TokenDataset` reads one; `DataError` is what bad input raises, with a `code` and a sentence.
"""

from __future__ import annotations

from training.data.corpus import default_corpus_sources, ensure_default_dataset
from training.data.dataset import TokenDataset
from training.data.errors import DataError
from training.data.manifest import DatasetManifest, ShardInfo
from training.data.prepare import prepare_dataset
from training.data.tokenizer import BpeTokenizer, ByteTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "BpeTokenizer",
    "ByteTokenizer",
    "DataError",
    "DatasetManifest",
    "ShardInfo",
    "TokenDataset",
    "Tokenizer",
    "default_corpus_sources",
    "ensure_default_dataset",
    "load_tokenizer",
    "prepare_dataset",
]
