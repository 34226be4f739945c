"""DiLoCo's update math, checked against plain training where the two must agree."""

from __future__ import annotations

import torch

from tests.training.test_inner import small_model, text_like_tokens
from training.inner import InnerConfig, InnerLoop
from training.outer import AveragingOuter

STEPS = 12


def test_one_worker_with_h1_and_plain_averaging_reproduces_plain_adamw_training() -> None:
    schedule = dict(batch_size=2, seq_len=32, lr=1e-2, warmup_steps=3, total_steps=STEPS)
    tokens = text_like_tokens(InnerConfig(steps=STEPS, **schedule).tokens_needed)  # type: ignore[arg-type]
    span = 2 * 32

    plain_model = small_model()
    plain = InnerLoop(plain_model, InnerConfig(steps=STEPS, **schedule), global_step=0).run(tokens)  # type: ignore[arg-type]

    global_model, worker = small_model(), small_model()
    global_params = dict(global_model.named_parameters())
    outer = AveragingOuter(lr=1.0)
    optimizer = None
    losses = []
    for step in range(STEPS):
        worker.load_state_dict(global_model.state_dict())
        loop = InnerLoop(worker, InnerConfig(steps=1, **schedule), global_step=step, optimizer=optimizer)  # type: ignore[arg-type]
        optimizer = loop.optimizer  # the worker keeps its AdamW state across rounds
        unit = loop.run(tokens[step * span : (step + 1) * span + 1])
        outer.step(global_params, unit.delta)
        losses.extend(unit.losses)

    # Equal up to fp32 rounding: θ − (θ − θ') is θ' bit for bit only where θ and θ' are within a
    # factor of two (Sterbenz); a weight that crosses zero can differ in its last bit, and that
    # difference then propagates. Anything beyond rounding (a wrong sign, schedule, lost optimizer
    # state, an lr applied twice) shows up orders of magnitude above these tolerances.
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(plain.losses), rtol=1e-6, atol=0)
    for name, param in plain_model.named_parameters():
        torch.testing.assert_close(global_params[name], param, rtol=0, atol=1e-6, msg=name)
    assert plain.losses[-1] < plain.losses[0]
