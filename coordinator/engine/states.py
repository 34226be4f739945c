"""The states and outcomes the engine works with, each named once.

They are `StrEnum`s, so a value read back from the store (a plain string) compares equal to its
member, and a member written to the store or the wire is its string.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CampaignStatus", "CloseReason", "OutcomeStatus", "SubmissionStatus", "UnitState"]


class CampaignStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    FINISHED = "finished"  # its token budget is spent
    STOPPED = "stopped"  # a lead or admin ended it


class UnitState(StrEnum):
    PENDING = "pending"  # waiting for a volunteer
    LEASED = "leased"
    DONE = "done"  # its result is recorded
    CANCELLED = "cancelled"  # its round closed before anyone took it


class SubmissionStatus(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PENDING_REPLICA = "pending_replica"  # valid; waiting for its replica to be compared
    PENDING_CHECK = "pending_check"  # valid; waiting for forward-only volunteers' holdout check (check units)


class OutcomeStatus(StrEnum):
    """What a volunteer is told about one submission (`result.status` on the wire)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"


class CloseReason(StrEnum):
    QUORUM = "quorum"
    DEADLINE = "deadline"
