"""The shared second moment: its compact form, the round's median, and an AdamW seeded from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.inner import InnerConfig, InnerLoop
from training.model import build_model, preset
from training.moments import expand, factor, median_moments, seeded_adamw, unit_moments


def test_a_rank_one_second_moment_survives_its_factors_and_a_vector_is_kept_whole() -> None:
    rows, cols = torch.rand(6) + 0.1, torch.rand(10) + 0.1
    v = torch.outer(rows, cols)
    back = expand(factor(v), v.shape)
    assert torch.allclose(back, v, rtol=1e-5)
    vector = torch.rand(7)
    (whole,) = factor(vector)
    assert torch.equal(whole, vector) and torch.equal(expand((whole,), (7,)), vector)
    # More than two dimensions: rows by everything else.
    cube = torch.rand(3, 4, 5)
    r, c = factor(cube)
    assert r.shape == (3,) and c.shape == (20,)
    assert expand((r, c), cube.shape).shape == cube.shape


def test_factors_keep_each_rows_and_columns_mean() -> None:
    v = torch.rand(5, 8) ** 4  # far from rank one
    back = expand(factor(v), v.shape)
    assert torch.allclose(back.mean(dim=1), v.mean(dim=1), rtol=1e-5)
    assert torch.allclose(back.mean(dim=0), v.mean(dim=0), rtol=1e-5)


def test_an_all_zero_moment_expands_to_zeros_not_nan() -> None:
    assert torch.equal(expand(factor(torch.zeros(3, 4)), (3, 4)), torch.zeros(3, 4))


def test_the_median_ignores_a_minority_of_liars() -> None:
    honest = [{"w": (torch.full((4,), 1.0 + i / 10), torch.full((3,), 2.0))} for i in range(3)]
    liars = [{"w": (torch.full((4,), 1e30), torch.zeros(3))} for _ in range(2)]
    shared = median_moments(honest + liars)
    rows, cols = shared["w"]
    assert torch.all(rows <= 1.2 + 1e-6) and torch.all(cols == 2.0)
    # A parameter only some units trained takes the median of those.
    partial = median_moments([{"w": (torch.ones(2), torch.ones(2))}, {"b": (torch.full((2,), 3.0),)}])
    assert sorted(partial) == ["b", "w"] and torch.equal(partial["b"][0], torch.full((2,), 3.0))


def _model_and_tokens() -> tuple[torch.nn.Module, InnerConfig, np.ndarray]:
    model = build_model(preset("tiny"), seed=0)
    config = InnerConfig(steps=3, batch_size=2, seq_len=32)
    tokens = np.random.default_rng(0).integers(0, 4096, size=config.tokens_needed)
    return model, config, tokens


def test_a_units_moments_cover_its_shard_with_the_factored_shapes() -> None:
    model, config, tokens = _model_and_tokens()
    shard = ["embed.weight", "norm.weight"]
    loop = InnerLoop(model, config, global_step=0, trainable=shard)
    assert unit_moments(loop) == {}  # no step yet
    loop.run(tokens)
    moments = unit_moments(loop)
    assert sorted(moments) == shard
    vocab, width = model.embed.weight.shape
    assert [f.shape for f in moments["embed.weight"]] == [(vocab,), (width,)]
    assert [f.shape for f in moments["norm.weight"]] == [(width,)]
    assert all(torch.all(f >= 0) for fs in moments.values() for f in fs)


def test_a_seeded_adamw_takes_its_first_step_from_the_shared_moment() -> None:
    model, config, tokens = _model_and_tokens()
    config = InnerConfig(steps=1, batch_size=2, seq_len=32, grad_clip=0.0, weight_decay=0.0)
    params = dict(model.named_parameters())
    v0 = {
        name: (torch.rand(p.shape[0]) + 0.5, torch.rand(p.numel() // p.shape[0]) + 0.5)
        for name, p in params.items()
        if p.dim() >= 2
    }
    v0.update({name: (torch.rand(p.numel()) + 0.5,) for name, p in params.items() if p.dim() < 2})
    optimizer = seeded_adamw(params, config, v0)
    start = {name: p.detach().clone() for name, p in params.items()}
    loop = InnerLoop(model, config, global_step=config.warmup_steps, optimizer=optimizer)
    # The gradient the step will see, computed on the same batch.
    probe = build_model(preset("tiny"), seed=0)
    inputs = torch.as_tensor(tokens[: config.seq_len * 2].reshape(2, -1).astype(np.int64))
    targets = torch.as_tensor(tokens[1 : config.seq_len * 2 + 1].reshape(2, -1).astype(np.int64))
    probe.loss(inputs, targets).backward()
    loop.run(tokens)
    b1, b2 = config.beta1, config.beta2
    for name, param in params.items():
        grad = dict(probe.named_parameters())[name].grad
        assert grad is not None
        # m starts at zero, v at the seed, and t at 1: AdamW's bias corrections weigh the seed 1/(1 − β2).
        m = (1 - b1) * grad / (1 - b1)
        v = (b2 * expand(v0[name], param.shape) + (1 - b2) * grad**2) / (1 - b2)
        expected = start[name] - config.lr * m / (v.sqrt() + config.eps)
        assert torch.allclose(param.detach(), expected, rtol=1e-4, atol=1e-7), name
    assert float(optimizer.state[params["embed.weight"]]["step"]) == 1
    # Not a sign step: the seed dominates where it is large against the gradient.
    moved = (start["norm.weight"] - params["norm.weight"].detach()).abs() / config.lr
    assert float(moved.max()) < 0.5


def test_a_parameter_without_a_shared_moment_starts_fresh() -> None:
    model, config, _ = _model_and_tokens()
    params = dict(model.named_parameters())
    optimizer = seeded_adamw(params, config, {"norm.weight": (torch.ones(params["norm.weight"].numel()),)})
    assert params["embed.weight"] not in optimizer.state
    assert torch.equal(optimizer.state[params["norm.weight"]]["exp_avg_sq"], torch.ones_like(params["norm.weight"]))


@pytest.mark.parametrize("bad", [(torch.ones(3),), (torch.ones(3), torch.ones(4), torch.ones(5))])
def test_factors_of_the_wrong_count_are_refused(bad: tuple[torch.Tensor, ...]) -> None:
    with pytest.raises(ValueError):
        expand(bad, (3, 4))


def test_a_units_moments_travel_in_a_moments_frame_and_come_back_equal() -> None:
    from protocol.moments import decode_moments, encode_moments, moments_size
    from training.moments import as_records, from_records

    model, config, tokens = _model_and_tokens()
    loop = InnerLoop(model, config, global_step=0)
    loop.run(tokens)
    moments = unit_moments(loop)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    frame = encode_moments(as_records(moments))
    assert len(frame) == moments_size(shapes)
    back = from_records(decode_moments(frame, shapes), shapes)
    assert sorted(back) == sorted(moments)
    assert all(
        torch.equal(a, b.bfloat16().float()) for name in moments for a, b in zip(back[name], moments[name], strict=True)
    )
