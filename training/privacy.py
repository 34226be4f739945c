"""Differential privacy for pseudo-gradients: clip an update's norm and add Gaussian noise; the privacy
spent over many releases is accounted in `training.privacy_accounting` (re-exported here).

    >>> clipped, norm = clip_update(delta, max_norm=1.0)             # the whole update's L2 norm ≤ 1
    >>> noisy = add_gaussian_noise(clipped, std=0.8 * 1.0, generator=torch.Generator().manual_seed(7))
    >>> round(gaussian_epsilon(noise_multiplier=2.0, releases=10, delta=1e-5), 2)
    7.51
"""

from __future__ import annotations

import math

import torch

from training.privacy_accounting import (
    gaussian_delta,
    gaussian_epsilon,
    noise_multiplier_for,
    releases_within,
)

__all__ = [
    "add_gaussian_noise",
    "clip_update",
    "gaussian_delta",
    "gaussian_epsilon",
    "noise_multiplier_for",
    "releases_within",
    "update_norm",
]


def update_norm(update: dict[str, torch.Tensor]) -> float:
    """The L2 norm of all the update's tensors taken as one vector (in float64)."""
    total = sum((t.detach().double().pow(2).sum() for t in update.values()), torch.zeros((), dtype=torch.float64))
    return float(total.sqrt())


def clip_update(update: dict[str, torch.Tensor], max_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """The update scaled so its norm is at most `max_norm` (unchanged if it already is), and its norm before."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norm = update_norm(update)
    if not math.isfinite(norm):
        raise ValueError("the update is not finite: it can't be clipped")
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {name: tensor * scale for name, tensor in update.items()}, norm


def add_gaussian_noise(
    update: dict[str, torch.Tensor], std: float, *, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Each coordinate plus independent N(0, std²) noise, drawn in float32 (from `generator` if given)."""
    if std < 0 or not math.isfinite(std):
        raise ValueError(f"std must be finite and ≥ 0, got {std}")
    if std == 0:
        return dict(update)
    noisy = {}
    for name, tensor in update.items():
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32, device=tensor.device)
        noisy[name] = (tensor.float() + std * noise).to(tensor.dtype)
    return noisy
