"""Differential privacy for pseudo-gradients: clip an update's norm and add Gaussian noise; the privacy
spent over many releases is accounted in `training.privacy_accounting` (re-exported here).

    >>> clipped, norm = clip_update(delta, max_norm=1.0)             # the whole update's L2 norm ≤ 1
    >>> noisy = add_gaussian_noise(clipped, std=0.8 * 1.0, generator=torch.Generator().manual_seed(7))
    >>> round(gaussian_epsilon(noise_multiplier=2.0, releases=10, delta=1e-5), 2)
    7.51
"""

from __future__ import annotations

import math
import os

import torch

from training.privacy_accounting import (
    gaussian_delta,
    gaussian_epsilon,
    noise_multiplier_for,
    releases_within,
)

__all__ = [
    "add_gaussian_noise",
    "add_secure_gaussian_noise",
    "clip_update",
    "gaussian_delta",
    "gaussian_epsilon",
    "noise_multiplier_for",
    "releases_within",
    "secure_normals",
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
    # The scale is applied in the tensors' own precision (float32), which may round the norm up a little:
    # a hair under C keeps the clipped norm at most C.
    scale = min(1.0, max_norm / norm * (1 - 1e-6)) if norm > 0 else 1.0
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


SECURE_CHUNK = 1 << 20  # normals drawn at once: 16 MiB of random bytes and float64 work


def add_secure_gaussian_noise(update: dict[str, torch.Tensor], std: float) -> dict[str, torch.Tensor]:
    """Each coordinate plus independent N(0, std²) noise drawn from the operating system's cryptographic
    randomness (`os.urandom`), for noise that must stay secret from whoever sees the result.

    torch's generators are Mersenne Twisters: their state can be solved from enough of their output,
    and a noised update shows a million outputs with little else mixed in, so the party the noise
    hides the update from could rebuild and subtract it. Box–Muller on 53-bit uniforms in (0, 1]
    (tails to 8.6 standard deviations), computed in float64 and added in the tensor's float32.
    """
    if std < 0 or not math.isfinite(std):
        raise ValueError(f"std must be finite and ≥ 0, got {std}")
    if std == 0:
        return dict(update)
    noisy = {}
    for name, tensor in update.items():
        flat = tensor.detach().float().flatten().clone()
        for start in range(0, flat.numel(), SECURE_CHUNK):
            part = flat[start : start + SECURE_CHUNK]
            part += (std * secure_normals(part.numel())).to(part.dtype).to(part.device)
        noisy[name] = flat.view(tensor.shape).to(tensor.dtype)
    return noisy


def secure_normals(count: int) -> torch.Tensor:
    """`count` independent standard normal float64 draws from `os.urandom` (Box–Muller)."""
    pairs = (count + 1) // 2
    words = torch.frombuffer(bytearray(os.urandom(16 * pairs)), dtype=torch.int64).view(pairs, 2)
    uniform = ((words >> 11) & ((1 << 53) - 1)).double().add_(1.0).mul_(2.0**-53)  # in (0, 1]
    radius = torch.sqrt(-2.0 * torch.log(uniform[:, 0]))
    angle = (2 * math.pi) * uniform[:, 1]
    return torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=1).flatten()[:count]
