"""The volunteer's privacy ledger and the privatized update: ε grows with the updates sent as the
accountant says, the budget is kept, a damaged ledger is an error (never a fresh start), and the update
leaves clipped, with noise of the stated scale that the unit's seed does not predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from protocol.messages import BlobRef, PrivateRecipe
from tests.support.normal import assert_centred_normal
from training.privacy import update_norm
from training.privacy_accounting import gaussian_epsilon, releases_within
from volunteer_app.privacy_ledger import (
    BudgetSpent,
    LedgerEntry,
    LedgerError,
    PrivacyLedger,
    PrivacyTerms,
    TermsChanged,
)
from volunteer_app.unit_runner import privatize

TERMS = PrivacyTerms("7", "notes", noise_multiplier=2.0, delta=1e-5, clip_norm=1.0, epsilon_budget=8.0)


def recipe(z: float, clip: float = 1.0) -> PrivateRecipe:
    return PrivateRecipe(BlobRef("0" * 64, 1), (".txt",), 1 << 20, 1 << 30, 0, clip, z, 1e-5, None)


def test_epsilon_grows_with_each_update_as_the_accountant_says(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    assert ledger.entries() == [] and ledger.entry("7") is None
    spent = [ledger.spend(TERMS).epsilon for _ in range(5)]
    assert spent == [gaussian_epsilon(2.0, k, 1e-5) for k in range(1, 6)]
    assert spent == sorted(set(spent))  # strictly growing
    # Written through: a new ledger on the same file (the app's, the next run's) reads the same.
    again = PrivacyLedger(tmp_path / "ledger.json").entry("7")
    assert again is not None and again.releases == 5
    assert again.describe() == f"notes: 5 updates, ε = {spent[-1]:.2f} of 8 (δ = 1e-05)"


def test_the_budget_allows_exactly_the_updates_the_accountant_allows(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    allowed = releases_within(8.0, 1e-5, 2.0)
    assert allowed == 11
    for _ in range(allowed):
        assert not ledger.would_exceed(TERMS)
        ledger.spend(TERMS)
    assert ledger.would_exceed(TERMS)
    with pytest.raises(BudgetSpent):  # spending checks too, in the same step: nothing is recorded
        ledger.spend(TERMS)
    assert ledger.entry("7") == LedgerEntry(TERMS, allowed)
    unlimited = PrivacyTerms("8", "open", 2.0, 1e-5, 1.0, math.inf)
    assert not ledger.would_exceed(unlimited)


def test_a_campaign_is_held_to_the_terms_of_its_first_update(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "ledger.json")
    ledger.spend(TERMS)
    renamed = PrivacyTerms("7", "notes, renamed", 2.0, 1e-5, 1.0, 8.0)
    assert ledger.spend(renamed).releases == 2  # a new name is no new promise
    for changed in (
        PrivacyTerms("7", "notes", 0.5, 1e-5, 1.0, 8.0),  # less noise: each update would cost more
        PrivacyTerms("7", "notes", 2.0, 1e-5, 1.0, 1000.0),  # a larger budget
        PrivacyTerms("7", "notes", 2.0, 1e-3, 1.0, 8.0),
        PrivacyTerms("7", "notes", 2.0, 1e-5, 4.0, 8.0),
    ):
        with pytest.raises(TermsChanged, match="other privacy terms"):
            ledger.would_exceed(changed)
        with pytest.raises(TermsChanged):
            ledger.spend(changed)
    assert ledger.entry("7") == LedgerEntry(renamed, 2)


@pytest.mark.parametrize(
    "content",
    [b"{", b'{"campaigns": 3}', b'{"campaigns": [{"terms": {}, "releases": 1}]}',
     json.dumps({"campaigns": [{"terms": {"campaign_id": "7", "campaign_name": "n", "noise_multiplier": 1.0,
                                          "delta": 1e-5, "clip_norm": 1.0, "epsilon_budget": 8.0},
                                "releases": -1}]}).encode(),
     b"x" * (2 << 20)],
    ids=["truncated", "not-a-list", "missing-terms", "negative-count", "too-large"],
)  # fmt: skip
def test_a_damaged_ledger_is_an_error_not_a_fresh_start(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    ledger = PrivacyLedger(path)
    with pytest.raises(LedgerError):
        ledger.spend(TERMS)
    with pytest.raises(LedgerError):
        ledger.would_exceed(TERMS)
    assert path.read_bytes() == content  # nothing overwritten


def test_the_update_leaves_clipped_with_noise_of_the_stated_scale() -> None:
    delta = {"a": torch.full((300, 300), 0.5), "b": torch.full((1000,), -2.0)}
    clipped = privatize(delta, recipe(0.0, clip=3.0))
    assert 3.0 * (1 - 1e-5) < update_norm(clipped) <= 3.0  # z = 0: clipped (never past C), nothing added
    noisy = privatize(delta, recipe(0.5, clip=3.0))
    residual = torch.cat([(noisy[n] - clipped[n]).flatten() for n in delta])
    assert_centred_normal(residual, 0.5 * 2 * 3.0)  # z·2C


def test_the_noise_is_not_drawn_from_anything_the_coordinator_knows() -> None:
    delta = {"a": torch.zeros(1000)}
    torch.manual_seed(1234)  # the unit's seed, which the coordinator chose
    first = privatize(delta, recipe(1.0))
    torch.manual_seed(1234)
    second = privatize(delta, recipe(1.0))
    assert not torch.equal(first["a"], second["a"])
