"""A Hugging Face model folder: `transformers` loads it as a LlamaForCausalLM, without custom code.

    >>> write_hf(out, weights, config, tokenizer, card=card)
    >>> model = AutoModelForCausalLM.from_pretrained(out)     # and AutoTokenizer.from_pretrained(out)

The folder holds `config.json`, `generation_config.json`, `model.safetensors` (Llama's tensor names;
the output head is tied to the embedding, so it is not stored), the tokenizer files and, given the
campaign's records, a model card (`README.md`) with its loss chart (`holdout-loss.png`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from training.data.tokenizer import Tokenizer
from training.export.card import CampaignRecord, write_card
from training.export.llama import ExportError, llama_config, llama_tensors
from training.export.tokenizer_files import hf_tokenizer_files
from training.model import ModelConfig

__all__ = ["HF_FILES", "write_hf"]

HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def write_hf(
    out: Path,
    weights: Mapping[str, torch.Tensor],
    config: ModelConfig,
    tokenizer: Tokenizer,
    *,
    card: CampaignRecord | None = None,
) -> list[Path]:
    """Write the folder (created if missing; files of the same names replaced); the files written."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ExportError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}")
    tensors = llama_tensors(weights, config)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def text(name: str, content: str) -> None:
        (out / name).write_text(content, encoding="utf-8")
        written.append(out / name)

    text("config.json", json.dumps(llama_config(config, eos_id=tokenizer.eos_id), indent=2) + "\n")
    generation = {
        "bos_token_id": tokenizer.eos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.eos_id,
    }
    text("generation_config.json", json.dumps(generation, indent=2) + "\n")
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    written.append(out / "model.safetensors")
    for name, content in hf_tokenizer_files(tokenizer, max_seq_len=config.max_seq_len).items():
        text(name, content)
    if card is not None:
        written += write_card(out, card, formats="hf")
    return written
