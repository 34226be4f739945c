"""Generation: greedy is the argmax continuation, sampling is reproducible for a seed, and every
stop — length, end-of-document, time — is reported."""

from __future__ import annotations

import itertools

import pytest
import torch

from training.checkpoint import CheckpointError, save_weights
from training.data.tokenizer import ByteTokenizer
from training.generate import config_for_weights, generate, model_from_checkpoint
from training.model import PRESETS, build_model, preset


@pytest.fixture
def model() -> torch.nn.Module:
    return build_model(preset("tiny", vocab_size=257, max_seq_len=32), seed=4).eval()


def test_greedy_generation_takes_the_argmax_each_step_over_a_sliding_window(model: torch.nn.Module) -> None:
    tokenizer = ByteTokenizer()
    result = generate(model, tokenizer, "x" * 40, max_new_tokens=6)  # longer than the context: the window slides
    context = tokenizer.encode("x" * 40)
    expected = []
    with torch.no_grad():
        for _ in range(6):
            token = int(model(torch.tensor([context[-32:]]))[0, -1].argmax())
            if token == tokenizer.eos_id:
                break
            expected.append(token)
            context.append(token)
    assert result.ids == expected and result.prompt_tokens == 40
    assert result.stopped == ("length" if len(expected) == 6 else "eos")


def test_sampling_repeats_for_a_seed_and_varies_across_seeds(model: torch.nn.Module) -> None:
    tokenizer = ByteTokenizer()
    runs = [generate(model, tokenizer, "ab", max_new_tokens=12, temperature=1.5, seed=s).ids for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
    top1 = generate(model, tokenizer, "ab", max_new_tokens=5, temperature=1.0, top_k=1)
    assert top1.ids == generate(model, tokenizer, "ab", max_new_tokens=5).ids[: len(top1.ids)]


def test_odd_sampling_settings_are_refused_or_safe(model: torch.nn.Module) -> None:
    tokenizer = ByteTokenizer()
    with pytest.raises(ValueError, match="top_k"):
        generate(model, tokenizer, "ab", temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, tokenizer, "ab", temperature=-1.0)
    tiny = generate(model, tokenizer, "ab", max_new_tokens=4, temperature=1e-30)
    assert tiny.ids == generate(model, tokenizer, "ab", max_new_tokens=4).ids, "a temperature near 0 is greedy"


def test_generation_stops_at_its_time_limit(model: torch.nn.Module) -> None:
    ticks = itertools.count()
    result = generate(
        model, ByteTokenizer(), "ab", max_new_tokens=50, time_limit_s=3.5, clock=lambda: float(next(ticks))
    )
    assert result.stopped == "time" and len(result.ids) == 3


def test_a_checkpoints_shape_finds_its_preset_and_other_shapes_are_refused() -> None:
    config = preset("small", vocab_size=300)
    weights = dict(build_model(config, seed=0).named_parameters())
    found = config_for_weights(weights)
    assert found == config
    assert model_from_checkpoint(save_weights(weights)).config == config
    assert config_for_weights(weights, max_seq_len=64).max_seq_len == 64
    with pytest.raises(CheckpointError, match="no model preset"):
        config_for_weights(weights, preset="tiny")
    with pytest.raises(CheckpointError, match="not a Commonweights model"):
        config_for_weights({"x": torch.zeros(2)})
    assert set(PRESETS) >= {"tiny", "small"}
