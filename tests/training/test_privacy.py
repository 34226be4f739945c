"""Clipping, Gaussian noise and the privacy accounting of training.privacy: the noise has the stated scale,
ε grows with releases as the Gaussian-DP composition says, and the curve is the one Google's
privacy-loss-distribution accountant computes."""

from __future__ import annotations

import math

import pytest
import torch

from tests.support.normal import assert_centred_normal
from training.privacy import (
    add_gaussian_noise,
    add_secure_gaussian_noise,
    clip_update,
    gaussian_epsilon,
    noise_multiplier_for,
    secure_normals,
    update_norm,
)


def _update(scale: float = 1.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.weight": scale * torch.randn(64, 32, generator=generator),
        "b.bias": scale * torch.randn(32, generator=generator),
    }


def test_clipping_bounds_the_whole_updates_norm_and_keeps_its_direction() -> None:
    update = _update(10.0)
    clipped, before = clip_update(update, max_norm=1.5)
    assert before == pytest.approx(update_norm(update)) and before > 1.5
    assert update_norm(clipped) == pytest.approx(1.5, rel=1e-5) and update_norm(clipped) <= 1.5
    for name in update:
        assert torch.allclose(clipped[name] * before / 1.5, update[name], rtol=1e-4, atol=1e-5)
    small = _update(1e-3)
    kept, _ = clip_update(small, max_norm=1.5)
    assert all(torch.equal(kept[n], small[n]) for n in small)  # already within the bound: untouched
    with pytest.raises(ValueError, match="not finite"):
        clip_update({"x": torch.tensor([math.nan])}, 1.0)
    with pytest.raises(ValueError, match="positive"):
        clip_update(small, 0.0)


def test_the_noise_has_the_stated_standard_deviation_and_no_bias() -> None:
    zeros = {"w": torch.zeros(1_000_000)}
    noisy = add_gaussian_noise(zeros, std=0.37, generator=torch.Generator().manual_seed(1))["w"].double()
    # With a million draws the sample std is within 0.3 % of the true one (its relative error is 1/√(2n)).
    assert float(noisy.std()) == pytest.approx(0.37, rel=0.003)
    assert abs(float(noisy.mean())) < 5 * 0.37 / 1000  # five standard errors
    again = add_gaussian_noise(zeros, std=0.37, generator=torch.Generator().manual_seed(1))["w"].double()
    assert torch.equal(noisy, again)  # a seeded generator makes it reproducible
    assert add_gaussian_noise(zeros, std=0.0)["w"] is zeros["w"]
    with pytest.raises(ValueError):
        add_gaussian_noise(zeros, std=-1.0)


def test_the_secret_noise_has_the_stated_scale_and_no_seed_reproduces_it() -> None:
    shaped = {"w": torch.zeros(600, 1001), "b": torch.zeros(7)}  # more than one chunk, an odd count
    torch.manual_seed(0)
    noisy = add_secure_gaussian_noise(shaped, std=0.37)
    torch.manual_seed(0)
    again = add_secure_gaussian_noise(shaped, std=0.37)
    assert noisy["w"].shape == (600, 1001) and noisy["b"].shape == (7,) and noisy["w"].dtype == torch.float32
    flat = noisy["w"].double().flatten()
    assert_centred_normal(flat, 0.37)
    beyond = float((flat.abs() > 2 * 0.37).double().mean())  # a normal's tails: 4.55 % beyond 2σ
    assert beyond == pytest.approx(0.0455, abs=5 * math.sqrt(0.0455 * 0.9545 / flat.numel()))
    assert not torch.equal(noisy["w"], again["w"])  # torch's seed has no say: the OS's randomness does
    assert add_secure_gaussian_noise(shaped, std=0.0)["w"] is shaped["w"]
    normals = secure_normals(1_000_001)
    assert normals.shape == (1_000_001,) and bool(torch.isfinite(normals).all())
    with pytest.raises(ValueError):
        add_secure_gaussian_noise(shaped, std=math.nan)


def test_epsilon_grows_with_releases_as_gaussian_dp_composes() -> None:
    delta = 1e-5
    epsilons = [gaussian_epsilon(1.5, k, delta) for k in (1, 4, 16, 64)]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    # k releases at noise z are exactly one release at noise z/√k: 4× the releases, half the noise.
    for k in (1, 4, 16):
        assert gaussian_epsilon(1.5, 4 * k, delta) == pytest.approx(gaussian_epsilon(0.75, k, delta), rel=1e-9)
    assert gaussian_epsilon(3.0, 16, delta) < gaussian_epsilon(1.5, 16, delta)  # more noise, less spent
    assert gaussian_epsilon(1.5, 16, 1e-3) < gaussian_epsilon(1.5, 16, 1e-7)  # a looser δ, a smaller ε
    assert gaussian_epsilon(0.0, 5, delta) == math.inf and gaussian_epsilon(1.0, 0, delta) == 0.0


@pytest.mark.parametrize("epsilon", [0.5, 2.0, 8.0])
@pytest.mark.parametrize("releases", [1, 10, 500])
def test_calibrating_the_noise_for_an_epsilon_spends_exactly_that_epsilon(epsilon: float, releases: int) -> None:
    z = noise_multiplier_for(epsilon, 1e-5, releases)
    assert gaussian_epsilon(z, releases, 1e-5) == pytest.approx(epsilon, rel=1e-6)
    assert gaussian_epsilon(z * 0.99, releases, 1e-5) > epsilon
    assert noise_multiplier_for(math.inf, 1e-5, releases) == 0.0


@pytest.mark.parametrize(("z", "k"), [(0.8, 1), (2.0, 10), (0.7, 100), (5.0, 1000), (1.1, 3)])
def test_the_curve_is_the_one_a_privacy_loss_distribution_accountant_computes(z: float, k: int) -> None:
    dp_accounting = pytest.importorskip(
        "dp_accounting", reason="dp-accounting is not installed (pip install -e '.[dev]')"
    )
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_accounting.GaussianDpEvent(z), k)
    rdp = rdp_privacy_accountant.RdpAccountant()
    rdp.compose(dp_accounting.GaussianDpEvent(z), k)
    ours = gaussian_epsilon(z, k, 1e-5)
    assert ours == pytest.approx(pld.get_epsilon(1e-5), rel=1e-4)
    assert ours <= rdp.get_epsilon(1e-5)  # RDP's conversion is an upper bound: never tighter than exact
