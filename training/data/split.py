"""Which documents are held out: decided by a hash of each document's content, never by chance.

A document goes to the holdout split when its 64-bit key (see `sources.document_key`) falls
below a cut of `fraction * 2**64`. The same text therefore always lands on the same side, whatever
its path, its position in the corpus or the machine that prepares it, and duplicated documents
cannot leak from train into holdout. Two corrections keep both splits useful: a corpus of two or
more distinct documents always holds out at least one, and never all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

_KEY_SPACE = 1 << 64


@dataclass(frozen=True)
class HoldoutSplit:
    """Documents whose key is below `cut` are held out."""

    cut: int

    def is_holdout(self, key: int) -> bool:
        return key < self.cut


class HoldoutPlanner:
    """Sees every document key once (the first pass), then plans the split (for the second).

    >>> planner = HoldoutPlanner(0.5)
    >>> for key in (1, 2**63 + 1):
    ...     planner.add(key)
    >>> split = planner.plan()
    >>> split.is_holdout(1), split.is_holdout(2**63 + 1)
    (True, False)
    """

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.threshold = min(int(fraction * _KEY_SPACE), _KEY_SPACE)
        self.count = 0
        self.below = 0
        self.lowest = _KEY_SPACE
        self.highest = -1

    def add(self, key: int) -> None:
        self.count += 1
        self.below += key < self.threshold
        self.lowest = min(self.lowest, key)
        self.highest = max(self.highest, key)

    def plan(self) -> HoldoutSplit:
        if self.fraction <= 0 or self.count < 2 or self.lowest == self.highest:
            return HoldoutSplit(0)
        if self.below == 0:
            return HoldoutSplit(self.lowest + 1)  # hold out the document nearest the cut
        if self.below == self.count:
            return HoldoutSplit(self.highest)  # keep the document furthest from it for training
        return HoldoutSplit(self.threshold)
