"""Rolling statistics of accepted updates, across rounds: what "normal" looks like for a campaign.

    >>> stats = CohortStats(window=64)                       # one per campaign
    >>> verdict = pipeline.validate(candidate, stats)
    >>> if verdict.accepted:
    ...     stats.record(candidate)                          # only accepted updates shape the cohort
    >>> stats.norm_spread(candidate.shard)                   # NormSpread(median=4.2, mad=0.3, n=17)
    >>> saved = stats.state_dict()                           # plain numbers, lists and fp32 tensors

Norms are kept per model shard, because updates to different sets of parameters have norms that
are not comparable; the running direction is kept per tensor, so an update is compared with what
accepted updates did to the same tensors, whichever shard they came from. It is a decayed sum of
accepted updates, each scaled to unit norm so no single volunteer dominates it: memory is
O(parameters), however many volunteers contribute.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from coordinator.validation.interface import Candidate

__all__ = ["CohortStats", "NormSpread"]

# First-step losses are only comparable between units that started from the same version; keep
# those of the most recent few versions, enough for late (stale) updates to still find theirs.
_LOSS_VERSIONS = 8


@dataclass(frozen=True)
class NormSpread:
    """Median and median absolute deviation of a shard's accepted norms in the window."""

    median: float
    mad: float
    n: int


class CohortStats:
    def __init__(self, window: int = 64, direction_decay: float = 0.95) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if not 0.0 < direction_decay <= 1.0:
            raise ValueError(f"direction_decay must be within (0, 1], got {direction_decay}")
        self.window = window
        self.direction_decay = direction_decay
        self.count = 0  # accepted updates recorded, ever
        self._norms: dict[tuple[str, ...], deque[float]] = {}
        self._direction: dict[str, torch.Tensor] = {}
        self._support: dict[str, int] = {}  # accepted updates folded into each tensor's direction
        self._first_losses: dict[int, deque[float]] = {}
        self._evidence: dict[int, deque[tuple[float, float]]] = {}  # (holdout gain, fit) per version
        # (shard, scaled norm) per version: updates from the same θ are far more alike than the window's
        # (honest ones within 0.87–1.16× of their version's median in bench adversarial, while the
        # window's norms shrink several-fold over a campaign as Adam's steps get noisier).
        self._version_norms: dict[int, deque[tuple[tuple[str, ...], float]]] = {}

    # -- recording ---------------------------------------------------------------------------------

    def record(self, candidate: Candidate, norm: float | None = None) -> None:
        """Fold an accepted update into the cohort: its norm, its direction and its first loss.

        `norm` is the raw ‖Δ‖ when the caller already has it; the cohort keeps it divided by the
        candidate's `norm_scale`.
        """
        norm = candidate.norm if norm is None else float(norm)
        self.count += 1
        norms = self._norms.setdefault(candidate.shard, deque(maxlen=self.window))
        norms.append(norm / candidate.norm_scale)
        if candidate.version is not None:
            _remember(
                self._version_norms, candidate.version, (candidate.shard, norm / candidate.norm_scale), self.window
            )
        if norm > 0:
            for name, tensor in candidate.delta.items():
                self._fold(name, tensor, norm)
        if candidate.version is not None and candidate.losses:
            _remember(self._first_losses, candidate.version, float(candidate.losses[0]), self.window)
        measured = candidate.measurements if candidate.evidence is not None else None
        if candidate.version is not None and measured is not None:
            _remember(self._evidence, candidate.version, (measured.holdout_gain, measured.fit), self.window)

    def _fold(self, name: str, tensor: torch.Tensor, norm: float) -> None:
        update = tensor.detach().to("cpu", torch.float32)
        running = self._direction.get(name)
        if running is None or running.shape != update.shape:
            self._direction[name] = update / norm
            self._support[name] = 1
        else:
            running.mul_(self.direction_decay).add_(update, alpha=1.0 / norm)  # no temporary copy
            self._support[name] += 1

    # -- reading -----------------------------------------------------------------------------------

    def norms(self, shard: Iterable[str]) -> tuple[float, ...]:
        """A shard's accepted norms in the window (each divided by its `norm_scale`), oldest first."""
        return tuple(self._norms.get(tuple(sorted(shard)), ()))

    def norm_spread(self, shard: Iterable[str]) -> NormSpread | None:
        """Median and MAD of a shard's windowed (scaled) norms, or None before its first accepted update."""
        norms = self._norms.get(tuple(sorted(shard)))
        if not norms:
            return None
        median = statistics.median(norms)
        mad = statistics.median(abs(x - median) for x in norms)
        return NormSpread(median=median, mad=mad, n=len(norms))

    def version_norms(self, version: int, shard: Iterable[str]) -> tuple[float, ...]:
        """A shard's accepted (scaled) norms of updates trained from model `version`."""
        key = tuple(sorted(shard))
        return tuple(norm for names, norm in self._version_norms.get(version, ()) if names == key)

    def direction(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor] | None:
        """The running direction of `names` (all tensors when None), or None if some has none yet.

        The tensors are the cohort's own: treat them as read-only.
        """
        wanted = list(self._direction) if names is None else list(names)
        if not wanted or any(n not in self._direction for n in wanted):
            return None
        return {n: self._direction[n] for n in wanted}

    def support(self, names: Iterable[str]) -> int:
        """How many accepted updates the running direction of `names` rests on (the least of them)."""
        return min((self._support.get(n, 0) for n in names), default=0)

    def first_losses(self, version: int) -> tuple[float, ...]:
        """First-step losses of recent accepted units that started from model `version`."""
        return tuple(self._first_losses.get(version, ()))

    def evidence(self, version: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Holdout gains and fits (EvidenceCheck) of recent measured and accepted updates from `version`."""
        pairs = self._evidence.get(version, ())
        return tuple(g for g, _ in pairs), tuple(f for _, f in pairs)

    # -- persistence -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the cohort: ints, floats, strings, lists and fp32 tensors."""
        return {
            "count": self.count,
            "shards": [{"names": list(shard), "norms": list(norms)} for shard, norms in self._norms.items()],
            "direction": {n: t.detach().clone() for n, t in self._direction.items()},
            "support": dict(self._support),
            "first_losses": {str(v): list(losses) for v, losses in self._first_losses.items()},
            "evidence": {str(v): [list(pair) for pair in pairs] for v, pairs in self._evidence.items()},
            "version_norms": {
                str(v): [[list(names), norm] for names, norm in entries] for v, entries in self._version_norms.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from `state_dict()`; this instance's window and decay apply from now on."""
        try:
            count = int(state["count"])
            norms = {
                tuple(sorted(str(n) for n in entry["names"])): deque(
                    (float(x) for x in entry["norms"]), maxlen=self.window
                )
                for entry in state["shards"]
            }
            direction = {
                str(n): torch.as_tensor(t, dtype=torch.float32).detach().clone() for n, t in state["direction"].items()
            }
            support = {str(n): int(k) for n, k in state["support"].items()}
            first_losses = {
                int(v): deque((float(x) for x in losses), maxlen=self.window)
                for v, losses in state["first_losses"].items()
            }
            evidence = {  # absent from states saved before the evidence check existed
                int(v): deque(((float(g), float(f)) for g, f in pairs), maxlen=self.window)
                for v, pairs in state.get("evidence", {}).items()
            }
            version_norms = {  # absent from states saved before per-version norms were kept
                int(v): deque(
                    ((tuple(sorted(str(n) for n in names)), float(norm)) for names, norm in entries),
                    maxlen=self.window,
                )
                for v, entries in state.get("version_norms", {}).items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a CohortStats state: {exc!r}") from exc
        if set(support) != set(direction) or any(k < 1 for k in support.values()):
            raise ValueError("not a CohortStats state: direction and support name different tensors")
        if any(x < 0 for shard in norms.values() for x in shard) or any(
            x < 0 for entries in version_norms.values() for _, x in entries
        ):
            raise ValueError("not a CohortStats state: a negative norm")
        self.count = count
        self._norms = norms
        self._direction = direction
        self._support = support
        self._first_losses = first_losses
        self._evidence = evidence
        self._version_norms = version_norms


def _remember(per_version: dict[int, deque[Any]], version: int, value: Any, window: int) -> None:
    """Keep `value` among the version's recent values; forget all but the newest few versions."""
    per_version.setdefault(version, deque(maxlen=window)).append(value)
    for old in sorted(per_version)[:-_LOSS_VERSIONS]:
        del per_version[old]
