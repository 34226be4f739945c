"""The privacy spent by Gaussian releases: ε of k releases at noise multiplier z, and back. Pure Python
(no torch, no numpy), so the desktop app, whose process carries neither, can show a volunteer what
they have spent.

    >>> round(gaussian_epsilon(noise_multiplier=2.0, releases=10, delta=1e-5), 2)
    7.51
    >>> round(noise_multiplier_for(epsilon=8.0, delta=1e-5, releases=10), 3)
    1.898
    >>> releases_within(epsilon=8.0, delta=1e-5, noise_multiplier=2.0)
    11

Each release is the Gaussian mechanism on a quantity of L2 sensitivity S with noise of standard
deviation z·S (z, the noise multiplier): (1/z)-GDP. k of them compose exactly, adaptively too, to
(√k/z)-GDP (Dong, Roth and Su, "Gaussian Differential Privacy", 2019, Corollary 3.3). A μ-GDP
mechanism is (ε, δ(ε))-DP for every ε with

    δ(ε) = Φ(−ε/μ + μ/2) − e^ε · Φ(−ε/μ − μ/2)        (their Corollary 2.13; tight)

so `gaussian_epsilon` solves that for ε. Without subsampling this is the exact privacy curve, the
same one a privacy-loss-distribution accountant converges to (the tests compare it with Google's
dp-accounting); an RDP accountant gives a slightly larger ε. Which neighbouring datasets the
guarantee is about, and so what S is, is the caller's to state.
"""

from __future__ import annotations

import math

__all__ = ["MAX_EPSILON", "gaussian_delta", "gaussian_epsilon", "noise_multiplier_for", "releases_within"]

MAX_EPSILON = 1e4  # beyond this an ε means nothing; reported as infinity


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


def releases_within(epsilon: float, delta: float, noise_multiplier: float) -> int | None:
    """How many releases at `noise_multiplier` stay within (ε, δ); None when any number does (ε = ∞)."""
    if math.isinf(epsilon):
        return None
    if noise_multiplier == 0:
        return 0
    # ε grows with k through μ = √k/z alone: find the largest μ within ε, then k = ⌊(μ·z)²⌋.
    low, high = 0.0, 1.0
    while gaussian_delta(epsilon, high) <= delta:
        low, high = high, 2 * high
    for _ in range(100):
        middle = (low + high) / 2
        if gaussian_delta(epsilon, middle) <= delta:
            low = middle
        else:
            high = middle
    releases = math.floor((low * noise_multiplier) ** 2)
    while releases > 0 and gaussian_epsilon(noise_multiplier, releases, delta) > epsilon:
        releases -= 1  # the float floor may land one over
    while gaussian_epsilon(noise_multiplier, releases + 1, delta) <= epsilon:
        releases += 1
    return releases
