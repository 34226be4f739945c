"""Holdout loss (training/evaluate.py): what the coordinator reports for every published version."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluate import evaluate
from training.model import build_model, preset

VOCAB = 64


def tokens(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, VOCAB, n).astype(np.int64)


def test_an_untrained_model_scores_about_the_uniform_loss_and_the_same_twice() -> None:
    model = build_model(preset("tiny", vocab_size=VOCAB, max_seq_len=16), seed=0)
    holdout = tokens(4 * 16 * 3 + 1)
    loss = evaluate(model, holdout, batch_size=4, seq_len=16)
    assert abs(loss - math.log(VOCAB)) < 0.5
    assert evaluate(model, holdout, batch_size=4, seq_len=16) == loss
    assert model.training, "the model is handed back in training mode"


def test_a_holdout_too_short_for_one_batch_is_refused_with_its_size() -> None:
    model = build_model(preset("tiny", vocab_size=VOCAB, max_seq_len=16), seed=0)
    with pytest.raises(ValueError, match="holdout has 10 tokens"):
        evaluate(model, tokens(10), batch_size=4, seq_len=16)
