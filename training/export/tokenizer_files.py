"""A campaign's tokenizer as the files Hugging Face's `AutoTokenizer` and llama.cpp read.

A BPE campaign already has a `tokenizers` JSON file; it is written as it is. A byte campaign's
tokenizer (ids 0-255 are the bytes, 256 is end-of-document) becomes a byte-level BPE with no merges
whose vocabulary puts each byte's character at the byte's id, so both give the same ids.

    >>> files = hf_tokenizer_files(tokenizer, max_seq_len=256)   # {"tokenizer.json": "...", ...}
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from training.data.tokenizer import EOS_TOKEN, BpeTokenizer, ByteTokenizer, Tokenizer

__all__ = ["byte_level_characters", "hf_tokenizer_files", "tokenizer_json"]


@cache
def byte_level_characters() -> tuple[str, ...]:
    """The printable character byte-level BPE writes for each byte (GPT-2's table), by byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table: dict[int, int] = {b: b for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = 256 + extra
            extra += 1
    return tuple(chr(table[b]) for b in range(256))


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """The tokenizer as a `tokenizers` JSON document."""
    if isinstance(tokenizer, BpeTokenizer):
        return tokenizer.to_json()
    if not isinstance(tokenizer, ByteTokenizer):
        raise TypeError(f"no Hugging Face form for a {type(tokenizer).__name__}")
    vocab = {char: b for b, char in enumerate(byte_level_characters())} | {EOS_TOKEN: tokenizer.eos_id}
    document: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": tokenizer.eos_id,
                "content": EOS_TOKEN,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }
    return json.dumps(document, ensure_ascii=False)


def hf_tokenizer_files(tokenizer: Tokenizer, *, max_seq_len: int) -> dict[str, str]:
    """`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` for `AutoTokenizer`.
    End-of-document is the only special token (bos, eos and pad); nothing is added around a text."""
    special = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_seq_len,
    }
    return {
        "tokenizer.json": tokenizer_json(tokenizer),
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }
