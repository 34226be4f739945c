from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from training.inner import InnerConfig, InnerLoop, learning_rate, sequence_batches
from training.model import build_model, parameter_groups, preset

VOCAB = 64


def text_like_tokens(n: int, seed: int = 0) -> np.ndarray:
    """A learnable stream: a repeating pattern with noise, so loss can visibly fall."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(16), n // 16 + 1)[:n]
    noise = rng.integers(0, VOCAB, n)
    return np.where(rng.random(n) < 0.1, noise, base).astype(np.int64)


def small_model(seed: int = 0) -> torch.nn.Module:
    return build_model(preset("tiny", vocab_size=VOCAB, max_seq_len=32), seed=seed)


def test_same_seed_same_losses_and_same_delta_on_cpu() -> None:
    config = InnerConfig(steps=5, batch_size=2, seq_len=32, lr=1e-2)
    tokens = text_like_tokens(config.tokens_needed)
    runs = [InnerLoop(small_model(), config, global_step=0).run(tokens) for _ in range(2)]
    assert runs[0].losses == runs[1].losses
    for name, delta in runs[0].delta.items():
        assert torch.equal(delta, runs[1].delta[name])


def test_loss_falls_over_a_unit_on_a_learnable_stream() -> None:
    config = InnerConfig(steps=30, batch_size=4, seq_len=32, lr=1e-2)
    result = InnerLoop(small_model(), config, global_step=0).run(text_like_tokens(config.tokens_needed))
    assert np.mean(result.losses[-5:]) < 0.7 * np.mean(result.losses[:5])
    assert result.tokens == 30 * 4 * 32


def test_delta_is_start_minus_end_for_the_trained_shard_only() -> None:
    model = small_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    shard = parameter_groups(model)["block.1"]
    config = InnerConfig(steps=3, batch_size=2, seq_len=32)
    result = InnerLoop(model, config, global_step=0, trainable=shard).run(text_like_tokens(config.tokens_needed))
    assert sorted(result.delta) == sorted(shard)
    for name, param in model.named_parameters():
        if name in shard:
            assert torch.allclose(result.delta[name], start[name] - param.detach())
            assert result.delta[name].abs().sum() > 0
        else:
            assert torch.equal(param.detach(), start[name]), f"frozen {name} moved"


def test_gradient_accumulation_matches_one_big_batch() -> None:
    tokens = text_like_tokens(4 * 2 * 32 + 1)
    big = InnerConfig(steps=1, batch_size=4, seq_len=32, grad_clip=0)
    accumulated = InnerConfig(steps=1, batch_size=2, seq_len=32, grad_accum=2, grad_clip=0)
    a = InnerLoop(small_model(), big, global_step=0).run(tokens)
    b = InnerLoop(small_model(), accumulated, global_step=0).run(tokens)
    assert a.losses[0] == pytest.approx(b.losses[0], rel=1e-5)
    # Adam's first step is ~lr·sign(g): where a gradient is near eps, float summation order shows, so
    # compare to a small fraction of the step size (lr 3e-3) rather than relatively.
    for name in a.delta:
        torch.testing.assert_close(a.delta[name], b.delta[name], rtol=0, atol=1e-5)


def test_schedule_warms_up_then_decays_by_cosine_to_the_floor() -> None:
    config = InnerConfig(steps=1, batch_size=1, seq_len=8, lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 60) == pytest.approx(0.55)
    assert learning_rate(config, 110) == pytest.approx(0.1)
    assert learning_rate(config, 500) == pytest.approx(0.1)
    rates = [learning_rate(config, s) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(rates))


def test_stopping_at_a_step_boundary_and_resuming_from_state_matches_an_uninterrupted_run() -> None:
    config = InnerConfig(steps=6, batch_size=2, seq_len=32, lr=1e-2, warmup_steps=2, total_steps=6)
    tokens = text_like_tokens(config.tokens_needed)
    whole = InnerLoop(small_model(), config, global_step=0).run(tokens)

    first = InnerLoop(small_model(), config, global_step=0)
    partial = first.run(tokens, should_stop=lambda: first.step >= 3)
    assert not partial.finished and len(partial.losses) == 3
    saved = first.state_dict()

    resumed = InnerLoop(small_model(seed=99), config, global_step=0)  # different weights: state must win
    resumed.load_state_dict(saved)
    final = resumed.run(tokens)
    assert final.finished
    assert final.losses == whole.losses
    for name in whole.delta:
        assert torch.equal(final.delta[name], whole.delta[name])


def test_a_slice_shorter_than_the_unit_is_refused() -> None:
    config = InnerConfig(steps=2, batch_size=2, seq_len=32)
    with pytest.raises(ValueError, match="needs 129"):
        InnerLoop(small_model(), config, global_step=0).run(text_like_tokens(100))


def test_divergence_raises_instead_of_returning_nan() -> None:
    model = small_model()
    with torch.no_grad():
        model.embed.weight.fill_(math.inf)
    config = InnerConfig(steps=1, batch_size=1, seq_len=32)
    with pytest.raises(FloatingPointError, match="diverged"):
        InnerLoop(model, config, global_step=0).run(text_like_tokens(config.tokens_needed))


def test_sequence_batches_shift_targets_by_one() -> None:
    tokens = np.arange(2 * 2 * 4 + 1)
    batches = list(sequence_batches(tokens, 2, 4))
    assert len(batches) == 2
    inputs, targets = batches[1]
    assert inputs.tolist() == [[8, 9, 10, 11], [12, 13, 14, 15]]
    assert targets.tolist() == [[9, 10, 11, 12], [13, 14, 15, 16]]


def test_invalid_config_is_refused_with_every_problem() -> None:
    with pytest.raises(ValueError, match=r"steps must be positive.*lr must be a positive"):
        InnerConfig(steps=0, batch_size=1, seq_len=8, lr=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_unit_trains_on_cuda_with_bf16_autocast() -> None:
    model = build_model(preset("tiny", vocab_size=VOCAB, max_seq_len=32), seed=0, device="cuda")
    config = InnerConfig(steps=10, batch_size=4, seq_len=32, lr=1e-2)
    result = InnerLoop(model, config, global_step=0).run(text_like_tokens(config.tokens_needed))
    assert all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < result.losses[0]
    assert all(d.device.type == "cpu" for d in result.delta.values())


def test_a_local_checkpoint_through_safetensors_resumes_the_optimizer_exactly() -> None:
    """The volunteer's unit checkpoint goes through save_state (no pickle); AdamW's int-keyed state must survive."""
    from training.checkpoint import load_state, save_state

    config = InnerConfig(steps=4, batch_size=2, seq_len=32, lr=1e-2)
    tokens = text_like_tokens(config.tokens_needed)
    whole = InnerLoop(small_model(), config, global_step=0).run(tokens)
    first = InnerLoop(small_model(), config, global_step=0)
    first.run(tokens, should_stop=lambda: first.step >= 2)
    restored = load_state(save_state(first.state_dict()))
    assert set(restored["optimizer"]["state"]) == set(first.optimizer.state_dict()["state"])
    resumed = InnerLoop(small_model(), config, global_step=0)
    resumed.load_state_dict(restored)
    assert resumed.run(tokens).losses == whole.losses
