"""A model trained on real text (the embedded corpus) for the export tests, and the text to check on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from training.data import TokenDataset
from training.data.tokenizer import Tokenizer
from training.inner import InnerConfig, InnerLoop
from training.model import GPT, ModelConfig, build_model, preset


@dataclass(frozen=True)
class Trained:
    model: GPT
    config: ModelConfig
    tokenizer: Tokenizer
    weights: dict[str, torch.Tensor]
    text: str  # holdout text the model never trained on


@pytest.fixture(scope="session")
def trained(small_dataset: Path) -> Trained:
    data = TokenDataset.open(small_dataset)
    tokenizer = data.tokenizer()
    config = preset("tiny", vocab_size=tokenizer.vocab_size)
    model = build_model(config, seed=0)
    inner = InnerConfig(steps=40, batch_size=4, seq_len=64, lr=3e-3)
    result = InnerLoop(model, inner, global_step=0).run(data.train_slice(0, inner.tokens_needed))
    assert result.losses[-1] < result.losses[0], "the fixture's model learned something"
    model.eval()
    text = tokenizer.decode(data.holdout_slice(0, 400).tolist())
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    return Trained(model, config, tokenizer, weights, text)
