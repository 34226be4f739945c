"""The volunteer's own record of the privacy they have spent, per campaign that trains on their files.

    ledger = PrivacyLedger(data_dir / "privacy-ledger.json")
    entry = ledger.spend(recipe_of(unit))      # before the update leaves: one more Gaussian release
    entry.epsilon, entry.budget                # what has been spent, of what the campaign promised
    ledger.entries()                           # every campaign, for the settings window and the CLI

Each update of a `data = "volunteer"` campaign is one Gaussian release of the volunteer's data (its
noise multiplier and δ stated by the campaign), so k updates cost ε(z, k, δ)
(`training.privacy_accounting`). The ledger is written *before* an update is sent, so a crash can
only overcount. The coordinator counts the same releases on its side; this count is the one the
volunteer can trust, and the worker refuses a unit that would take it past the campaign's budget.

The terms a campaign stated with its first release are the ones it is held to: a later unit whose
terms differ (less noise, a larger budget) is refused, or the count would be composed under terms the
earlier releases never had. Checking and spending happen in one step under a lock that other
processes sharing the data folder respect too (flock; on Windows, within one process only).

A ledger that can't be read is an error, never a fresh start: starting from zero would forget what
was spent.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from training.atomic_write import write_atomically
from training.privacy_accounting import gaussian_epsilon

if sys.platform != "win32":
    import fcntl

__all__ = [
    "LEDGER_FILE",
    "BeyondOwnersLimit",
    "BudgetSpent",
    "LedgerEntry",
    "LedgerError",
    "PrivacyLedger",
    "PrivacyTerms",
    "TermsChanged",
]

LEDGER_FILE = "privacy-ledger.json"  # in the volunteer's data folder (credentials.volunteer_data_dir)
MAX_LEDGER_BYTES = 1 << 20
MAX_CAMPAIGNS = 10_000


class LedgerError(ValueError):
    """The ledger file is unreadable or was tampered with; nothing private is trained until it is fixed."""


class TermsChanged(LedgerError):
    """A unit states other privacy terms than the campaign's first release did."""


class BudgetSpent(LedgerError):
    """One more release would take the campaign past its ε budget."""


class BeyondOwnersLimit(LedgerError):
    """The campaign's ε budget is larger than the owner accepts (local-data.toml's max_epsilon)."""


@dataclass(frozen=True)
class PrivacyTerms:
    """What a campaign states about each release: noise multiplier z (relative to the sensitivity),
    δ, the clipping norm C, and the ε a volunteer's releases may add up to (inf: no limit)."""

    campaign_id: str
    campaign_name: str
    noise_multiplier: float
    delta: float
    clip_norm: float
    epsilon_budget: float

    def epsilon_after(self, releases: int) -> float:
        return gaussian_epsilon(self.noise_multiplier, releases, self.delta)

    def binding(self) -> tuple[float, float, float, float]:
        """What a campaign may not change once a release was made under it (its name may change)."""
        return (self.noise_multiplier, self.delta, self.clip_norm, self.epsilon_budget)


@dataclass(frozen=True)
class LedgerEntry:
    """One campaign's releases so far, under the terms of its latest unit."""

    terms: PrivacyTerms
    releases: int

    @property
    def epsilon(self) -> float:
        return self.terms.epsilon_after(self.releases)

    @property
    def budget(self) -> float:
        return self.terms.epsilon_budget

    def describe(self) -> str:
        """A line for people: "stdlib-private: 12 updates, ε = 3.41 of 8 (δ = 1e-05)"."""
        spent = "∞" if math.isinf(self.epsilon) else f"{self.epsilon:.2f}"
        budget = "no limit" if math.isinf(self.budget) else f"{self.budget:g}"
        return (
            f"{self.terms.campaign_name}: {self.releases} update{'s' if self.releases != 1 else ''}, "
            f"ε = {spent} of {budget} (δ = {self.terms.delta:g})"
        )


class PrivacyLedger:
    """The releases per campaign, in a small JSON file written atomically; safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def entries(self) -> list[LedgerEntry]:
        """Every campaign's entry, most releases first."""
        with self._lock:
            return sorted(self._read().values(), key=lambda e: (-e.releases, e.terms.campaign_name))

    def entry(self, campaign_id: str) -> LedgerEntry | None:
        with self._lock:
            return self._read().get(campaign_id)

    def would_exceed(self, terms: PrivacyTerms) -> bool:
        """Whether one more release under `terms` would take this campaign past its budget; TermsChanged
        if `terms` are not those the campaign's first release was made under."""
        with self._locked():
            current = self._read().get(terms.campaign_id)
        _same_terms(current, terms)
        releases = current.releases if current else 0
        return terms.epsilon_after(releases + 1) > terms.epsilon_budget

    def spend(self, terms: PrivacyTerms) -> LedgerEntry:
        """Check and record one release under `terms`, durably, in one step; the new entry. BudgetSpent
        or TermsChanged (nothing recorded) where the release may not be made."""
        with self._locked():
            entries = self._read()
            current = entries.get(terms.campaign_id)
            _same_terms(current, terms)
            releases = (current.releases if current else 0) + 1
            if terms.epsilon_after(releases) > terms.epsilon_budget:
                raise BudgetSpent(f"the privacy budget of {terms.campaign_name} is spent")
            entry = LedgerEntry(terms, releases)
            entries[terms.campaign_id] = entry
            self._write(entries)
            return entry

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's lock, and an advisory lock on `<ledger>.lock` that other processes take too."""
        with self._lock:
            if sys.platform == "win32":
                yield
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_name(self.path.name + ".lock"), "a+b") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _read(self) -> dict[str, LedgerEntry]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as error:
            raise LedgerError(f"can't read the privacy ledger {self.path}: {error}") from error
        if len(raw) > MAX_LEDGER_BYTES:
            raise LedgerError(f"the privacy ledger {self.path} is larger than {MAX_LEDGER_BYTES} bytes")
        try:
            document = json.loads(raw)
            rows = document["campaigns"]
            if not isinstance(rows, list) or len(rows) > MAX_CAMPAIGNS:
                raise TypeError("campaigns must be a list")
            entries = {}
            for row in rows:
                terms = PrivacyTerms(**row["terms"])
                releases = row["releases"]
                _check(terms, releases)
                entries[terms.campaign_id] = LedgerEntry(terms, releases)
            return entries
        except (ValueError, TypeError, KeyError) as error:
            raise LedgerError(
                f"the privacy ledger {self.path} is damaged ({error}); fix or remove it by hand (removing it "
                "forgets the privacy already spent)"
            ) from error

    def _write(self, entries: dict[str, LedgerEntry]) -> None:
        rows = [{"terms": asdict(e.terms), "releases": e.releases} for e in entries.values()]
        text = json.dumps({"campaigns": rows}, indent=1, allow_nan=True) + "\n"
        write_atomically(self.path, text)


def _same_terms(current: LedgerEntry | None, terms: PrivacyTerms) -> None:
    if current is not None and current.releases > 0 and current.terms.binding() != terms.binding():
        raise TermsChanged(
            f"{terms.campaign_name} now states other privacy terms (z = {terms.noise_multiplier:g}, δ = "
            f"{terms.delta:g}, C = {terms.clip_norm:g}, budget {terms.epsilon_budget:g}) than the ones your "
            f"earlier updates were sent under (z = {current.terms.noise_multiplier:g}, δ = {current.terms.delta:g}, "
            f"C = {current.terms.clip_norm:g}, budget {current.terms.epsilon_budget:g}); no more updates go to it"
        )


def _check(terms: PrivacyTerms, releases: object) -> None:
    if not isinstance(releases, int) or isinstance(releases, bool) or releases < 0:
        raise ValueError(f"releases must be a count, got {releases!r}")
    for name in ("campaign_id", "campaign_name"):
        value = getattr(terms, name)
        if not isinstance(value, str) or not 0 < len(value) <= 128:
            raise ValueError(f"{name} must be a short string")
    numbers = (terms.noise_multiplier, terms.delta, terms.clip_norm, terms.epsilon_budget)
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
        raise ValueError("the terms' numbers must be numbers")
    if not (0 <= terms.noise_multiplier < math.inf and 0 < terms.delta < 1 and 0 < terms.clip_norm < math.inf):
        raise ValueError("noise_multiplier, delta or clip_norm is out of range")
    if not terms.epsilon_budget > 0:
        raise ValueError("epsilon_budget must be positive")
