"""Per-volunteer trust driving adaptive replication, like BOINC's.

A new volunteer's units are always replicated to a second volunteer; every valid result earns
trust and the extra replication halves every `halving` consecutive valid results, down to the
campaign's base rate. A rejection that shows bad computation resets the streak and is remembered:
each past error makes trust slower to earn back, a replication mismatch (a result that disagreed
with another volunteer's) counts as `mismatch_penalty` errors.

    >>> tracker = TrustTracker()
    >>> state = TrustState()                              # a new volunteer
    >>> tracker.replication_probability(state, base_rate=0.05)
    1.0
    >>> state = tracker.update(state, valid=True)
    >>> store.save_trust(volunteer_id, state.to_dict())   # {"consecutive_valid": 1, "errors": 0}
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol.errors import ErrorCode

__all__ = ["TrustState", "TrustTracker"]

# Rejections that say nothing about the volunteer's computation: the model moved on, or the
# campaign ended, while it worked.
_BLAMELESS = frozenset({ErrorCode.STALE_UPDATE, ErrorCode.CAMPAIGN_CLOSED, ErrorCode.INCONCLUSIVE})


@dataclass(frozen=True)
class TrustState:
    consecutive_valid: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        if self.consecutive_valid < 0 or self.errors < 0:
            raise ValueError(f"trust counters can't be negative: {self}")

    def to_dict(self) -> dict[str, int]:
        return {"consecutive_valid": self.consecutive_valid, "errors": self.errors}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrustState:
        try:
            return cls(int(data["consecutive_valid"]), int(data["errors"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a trust state: {data!r}") from exc


@dataclass(frozen=True)
class TrustTracker:
    halving: float = 5.0  # consecutive valid results that halve the extra replication (no past errors)
    mismatch_penalty: int = 3  # errors that one replication mismatch counts as

    def __post_init__(self) -> None:
        if not self.halving > 0:
            raise ValueError(f"halving must be positive, got {self.halving}")
        if self.mismatch_penalty < 1:
            raise ValueError(f"mismatch_penalty must be at least 1, got {self.mismatch_penalty}")

    def replication_probability(self, state: TrustState, base_rate: float) -> float:
        """Chance that this volunteer's next unit is also sent to a second volunteer, in [base_rate, 1]."""
        if not 0.0 <= base_rate <= 1.0:
            raise ValueError(f"base_rate must be within [0, 1], got {base_rate}")
        earned = state.consecutive_valid / (self.halving * (1 + state.errors))
        return base_rate + (1.0 - base_rate) * math.pow(2.0, -earned)

    def trusted(self, state: TrustState) -> bool:
        """Whether the volunteer has earned trust: enough valid results in a row that its extra
        replication has halved at least once (more of them after past errors)."""
        return state.consecutive_valid >= self.halving * (1 + state.errors)

    def should_replicate(self, state: TrustState, base_rate: float, rng: random.Random) -> bool:
        return rng.random() < self.replication_probability(state, base_rate)

    def update(self, state: TrustState, valid: bool, code: ErrorCode | str | None = None) -> TrustState:
        """The state after one more result: `valid`, or rejected with `code`."""
        if valid:
            return TrustState(state.consecutive_valid + 1, state.errors)
        try:
            known: ErrorCode | None = None if code is None else ErrorCode(code)
        except ValueError:
            known = None  # an unknown reason still counts against the volunteer
        if known is not None and (known in _BLAMELESS or not known.rejects_update):
            return state
        penalty = self.mismatch_penalty if known is ErrorCode.REPLICATION_MISMATCH else 1
        return TrustState(0, state.errors + penalty)
