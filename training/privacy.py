"""Differential privacy for pseudo-gradients: clip an update's norm, add Gaussian noise, and account for the
privacy spent over many releases.

    >>> clipped, norm = clip_update(delta, max_norm=1.0)             # the whole update's L2 norm ≤ 1
    >>> noisy = add_gaussian_noise(clipped, std=0.8 * 1.0, generator=torch.Generator().manual_seed(7))
    >>> round(gaussian_epsilon(noise_multiplier=2.0, releases=10, delta=1e-5), 2)
    7.51
    >>> round(noise_multiplier_for(epsilon=8.0, delta=1e-5, releases=10), 3)
    1.898

The accounting is for the Gaussian mechanism applied `releases` times to a quantity whose L2 sensitivity
is the clipping norm C, with noise of standard deviation z·C (z, the noise multiplier): each release is
(1/z)-GDP, and k of them compose exactly to (√k/z)-GDP (Dong, Roth and Su, "Gaussian Differential
Privacy", 2019, Corollary 3.3). A μ-GDP mechanism is (ε, δ(ε))-DP for every ε with

    δ(ε) = Φ(−ε/μ + μ/2) − e^ε · Φ(−ε/μ − μ/2)        (their Corollary 2.13; tight)

so `gaussian_epsilon` solves that for ε. Without subsampling this is the exact privacy curve, the same
one a privacy-loss-distribution accountant converges to (the tests compare it with Google's
dp-accounting); an RDP accountant gives a slightly larger ε. Which neighbouring datasets the guarantee
is about (one volunteer's data in or out of a sum, with sensitivity C, or replaced, with 2C) is the
caller's to state: pass the noise multiplier relative to that sensitivity.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "add_gaussian_noise",
    "clip_update",
    "gaussian_delta",
    "gaussian_epsilon",
    "noise_multiplier_for",
    "update_norm",
]

MAX_EPSILON = 1e4  # beyond this an ε means nothing; reported as infinity


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


def _phi(x: float) -> float:
    """The standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def gaussian_delta(epsilon: float, mu: float) -> float:
    """The δ at `epsilon` of a μ-GDP mechanism."""
    if mu <= 0:
        return 0.0
    first = _phi(-epsilon / mu + mu / 2)
    tail = _phi(-epsilon / mu - mu / 2)
    second = math.exp(epsilon + math.log(tail)) if tail > 0 else 0.0
    return max(0.0, first - second)


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """The smallest ε such that `releases` Gaussian releases with this noise multiplier are (ε, δ)-DP;
    infinity without noise (or past `MAX_EPSILON`), 0 for no release."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be between 0 and 1, got {delta}")
    if releases < 0 or noise_multiplier < 0:
        raise ValueError("releases and the noise multiplier can't be negative")
    if releases == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    mu = math.sqrt(releases) / noise_multiplier
    if gaussian_delta(0.0, mu) <= delta:
        return 0.0
    if gaussian_delta(MAX_EPSILON, mu) > delta:
        return math.inf
    low, high = 0.0, 1.0
    while gaussian_delta(high, mu) > delta:  # δ(ε) falls as ε grows: bracket, then bisect
        low, high = high, min(2 * high, MAX_EPSILON)
    for _ in range(100):
        middle = (low + high) / 2
        if gaussian_delta(middle, mu) > delta:
            low = middle
        else:
            high = middle
    return high


def noise_multiplier_for(epsilon: float, delta: float, releases: int) -> float:
    """The smallest noise multiplier that keeps `releases` Gaussian releases (ε, δ)-DP (0 for ε = ∞)."""
    if math.isinf(epsilon):
        return 0.0
    if epsilon <= 0 or releases < 1:
        raise ValueError("epsilon must be positive and there must be at least one release")
    low, high = 0.0, 1.0
    while gaussian_epsilon(high, releases, delta) > epsilon:
        low, high = high, 2 * high
    for _ in range(100):
        middle = (low + high) / 2
        if gaussian_epsilon(middle, releases, delta) > epsilon:
            low = middle
        else:
            high = middle
    return high
