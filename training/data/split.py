"""Which text is held out: decided by a hash of its content, never by chance.

A document goes to the holdout split when its 64-bit key (see `sources.document_key`) falls
below a cut of `fraction * 2**64`. The same text therefore always lands on the same side, whatever
its path, its position in the corpus or the machine that prepares it, and duplicated documents
cannot leak from train into holdout. Two corrections keep both splits useful: a corpus of two or
more distinct documents always holds out at least one, and never all of them.

A corpus of too few documents for the fraction (one large file, a few books: fewer than
1 / fraction) is split by *section* instead: each piece of a document (about 64 KiB, cut at a line
end; `sources.PIECE_BYTES`) is keyed by its own content and goes to one side, the same rules
applied to sections. A held-out section is text the model never trains on; duplicated sections
land on the same side, as duplicated documents do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

_KEY_SPACE = 1 << 64

SplitUnit = Literal["document", "section"]


@dataclass(frozen=True)
class HoldoutSplit:
    """Documents (or sections, by `unit`) whose key is below `cut` are held out."""

    cut: int
    unit: SplitUnit = "document"

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

    def __init__(self, fraction: float, *, sections: bool = True) -> None:
        self.fraction = fraction
        self.sections = HoldoutPlanner(fraction, sections=False) if sections else None
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

    def add_section(self, key: int) -> None:
        """A section's key (every piece of every document, the first included)."""
        if self.sections is not None:
            self.sections.add(key)

    def plan(self) -> HoldoutSplit:
        too_few = self.fraction > 0 and self.count * self.fraction < 1
        if too_few and self.sections is not None and self.sections.count > self.count:
            return HoldoutSplit(self.sections.plan().cut, "section")
        if self.fraction <= 0 or self.count < 2 or self.lowest == self.highest:
            return HoldoutSplit(0)
        if self.below == 0:
            return HoldoutSplit(self.lowest + 1)  # hold out the document nearest the cut
        if self.below == self.count:
            return HoldoutSplit(self.highest)  # keep the document furthest from it for training
        return HoldoutSplit(self.threshold)
