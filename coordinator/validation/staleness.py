"""StalenessCheck: an update computed against a model version too far behind the current one."""

from __future__ import annotations

from dataclasses import dataclass

from coordinator.validation.cohort import CohortStats
from coordinator.validation.interface import Candidate, Verdict
from protocol.errors import ErrorCode

__all__ = ["StalenessCheck"]


@dataclass(frozen=True)
class StalenessCheck:
    """Async DiLoCo accepts late updates up to `max_staleness` versions behind (down-weighted by the
    aggregator); beyond that the model has moved too far for the update to help."""

    max_staleness: int = 4
    name = "staleness"

    def check(self, candidate: Candidate, stats: CohortStats) -> Verdict | None:
        if 0 <= candidate.staleness <= self.max_staleness:
            return None
        unit = "the update" if candidate.version is None else f"the update, from model version {candidate.version},"
        if candidate.staleness < 0:
            return Verdict.reject(
                ErrorCode.STALE_UPDATE,
                f"{unit} claims a model version {-candidate.staleness} ahead of the campaign's current one; "
                "fetch a new work unit",
            )
        return Verdict.reject(
            ErrorCode.STALE_UPDATE,
            f"{unit} is {candidate.staleness} versions behind the current model "
            f"(limit: {self.max_staleness}); fetch a new work unit and submit sooner, "
            "or pick smaller units in the app's settings",
        )
