"""Checks that unseeded draws are centred Gaussian noise of a stated standard deviation."""

from __future__ import annotations

import math

import pytest
import torch


def assert_centred_normal(sample: torch.Tensor, std: float) -> None:
    """The sample's mean is zero and its standard deviation `std`, each within five standard errors (the
    mean's is std/√n, the sample std's relative one 1/√(2n)): an honest sample fails one run in about
    two million. Tighter bounds fail CI for no fault (two standard errors on the mean failed one run)."""
    values = sample.double().flatten()
    n = values.numel()
    assert abs(float(values.mean())) < 5 * std / math.sqrt(n)
    assert float(values.std()) == pytest.approx(std, rel=5 / math.sqrt(2 * n))
