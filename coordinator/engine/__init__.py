"""The coordinator's engine: scheduling work, ingesting updates, aggregating rounds.

    >>> runtime = CampaignRuntime.load(store, blobs, campaign_id)

`scheduler` (rounds, units, data slices, leases, memory fit), `ingest` (decode → validate → store →
accumulate, replica pairing) and `aggregator` (close a round: the outer step, publish the version)
share one campaign's `state`; `runtime.CampaignRuntime` is the facade the gateway, REST and the
service call. Values that cross that facade are in `models`, states and outcomes in `states`.
"""

from coordinator.engine.aggregator import initial_version
from coordinator.engine.models import Assignment, Counters, NoWork, Outcome, PreparedUpdate, SubmissionReport
from coordinator.engine.runtime import CampaignRuntime
from coordinator.engine.scheduler import estimate_training_bytes
from coordinator.engine.state import model_config_for, shard_plan
from coordinator.engine.states import CampaignStatus, CloseReason, OutcomeStatus, SubmissionStatus, UnitState

__all__ = [
    "Assignment",
    "CampaignRuntime",
    "CampaignStatus",
    "CloseReason",
    "Counters",
    "NoWork",
    "Outcome",
    "OutcomeStatus",
    "PreparedUpdate",
    "SubmissionReport",
    "SubmissionStatus",
    "UnitState",
    "estimate_training_bytes",
    "initial_version",
    "model_config_for",
    "shard_plan",
]
