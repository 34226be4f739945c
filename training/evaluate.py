"""Holdout loss: how the coordinator scores each published version, and how the simulator does.

>>> loss = evaluate(model, dataset.holdout, batch_size=8, seq_len=128)
"""

from __future__ import annotations

import numpy as np
import torch

from training.inner import sequence_batches
from training.model import GPT

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: GPT, holdout: np.ndarray, *, batch_size: int, seq_len: int) -> float:
    """Mean next-token loss over the holdout tokens, in fixed consecutive windows.

    The model is left in training mode afterwards, as the training loops expect.
    """
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for inputs, targets in sequence_batches(holdout, batch_size, seq_len):
        total += model.loss(inputs.to(device), targets.to(device)).item()
        count += 1
    model.train()
    if count == 0:
        raise ValueError(f"holdout has {len(holdout)} tokens, too few for one {batch_size}x{seq_len} batch")
    return total / count
