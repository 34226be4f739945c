"""One live campaign on the coordinator, behind one small facade the gateway, the REST API and the
service call: its scheduler (leases), ingest (updates) and aggregator (rounds) over shared state.

    >>> runtime = CampaignRuntime.load(store, blobs, campaign_id)
    >>> assignment = runtime.lease(volunteer, memory_bytes=8 << 30)   # or a NoWork with a reason
    >>> outcome = runtime.submit(volunteer_id, unit_id, lease_id, payload, report)

The flow of an update: `prepare` (any thread: blob written, tensors decoded) → `commit` (the
campaign's lane: lease and staleness rules, validation, durable verdict, accumulation) → at quorum
`close_if_due` (the outer step; θ_{v+1} published). `submit` runs all three, for callers without
a lane.

Where several coordinator replicas share the store, only the campaign's leader runs its runtime, under
the campaign lease it holds (`lease`): leases, heartbeats and verdicts happen in a transaction that
first checks that lease and holds it until the commit (`Store.hold_campaign`), a round's close is
checked by the store as it publishes, and a tick starts with the check; so a leader that lost its term
(paused past it, cut off) gets `LeaseLost` and is dropped.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from coordinator.campaign import CampaignSpec
from coordinator.engine.aggregator import Aggregator
from coordinator.engine.ingest import Ingest
from coordinator.engine.models import (
    Assignment,
    Counters,
    NoWork,
    Outcome,
    PreparedUpdate,
    RoundState,
    SubmissionReport,
)
from coordinator.engine.scheduler import Scheduler
from coordinator.engine.state import CampaignState, Clock
from coordinator.engine.states import CloseReason
from coordinator.store import CampaignRow, Store, VersionRow
from coordinator.store.blobs import Blobs
from coordinator.validation import TrustState
from training.data import TokenDataset
from training.inner import InnerConfig
from training.model import ModelConfig

__all__ = ["CampaignRuntime"]


class CampaignRuntime:
    def __init__(
        self,
        store: Store,
        blobs: Blobs,
        row: CampaignRow,
        dataset: TokenDataset,
        *,
        work_dir: Path,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        """`work_dir` is a folder on this machine's disk for the aggregator's work files."""
        self.state = CampaignState(store, blobs, row, dataset, clock=clock, rng=rng)
        self.scheduler = Scheduler(self.state)
        self.ingest = Ingest(self.state, self.scheduler)
        self.aggregator = Aggregator(self.state, self.scheduler, work_dir / f"campaign-{row.id}")
        self.on_version: Callable[[CampaignRuntime, VersionRow], None] | None = None

    @classmethod
    def load(
        cls, store: Store, blobs: Blobs, campaign_id: int, *, lease: tuple[str, int] | None = None, **kwargs: Any
    ) -> CampaignRuntime:
        """The campaign's runtime, its state rebuilt from the store (under `lease`, where replicas share it)."""
        runtime = cls.view(store, blobs, campaign_id, **kwargs)
        runtime.state.lease = lease
        runtime.restore()
        return runtime

    @classmethod
    def view(cls, store: Store, blobs: Blobs, campaign_id: int, **kwargs: Any) -> CampaignRuntime:
        """The campaign's description (spec, model, shards) without its state: what a replica that
        forwards the campaign's work to its leader reads. Only `load` gives a runtime that may change it."""
        row = store.campaign(campaign_id)
        if row is None:
            raise KeyError(f"no campaign {campaign_id}")
        return cls(store, blobs, row, TokenDataset.open(Path(row.dataset_path)), **kwargs)

    # what callers read ----------------------------------------------------------------------------

    @property
    def row(self) -> CampaignRow:
        return self.state.row

    @property
    def spec(self) -> CampaignSpec:
        return self.state.spec

    @property
    def dataset(self) -> TokenDataset:
        return self.state.dataset

    @property
    def model_config(self) -> ModelConfig:
        return self.state.model_config

    @property
    def inner_config(self) -> InnerConfig:
        return self.state.inner_config

    @property
    def shards(self) -> list[list[str]]:
        """The parameter names of each shard, by shard index."""
        return self.state.shards

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.state.shapes

    @property
    def round(self) -> RoundState | None:
        return self.state.round

    @property
    def counters(self) -> Counters:
        return self.state.counters

    @property
    def close_due(self) -> CloseReason | None:
        return self.state.close_due

    def refresh(self) -> CampaignRow:
        return self.state.refresh()

    def restore(self) -> None:
        self.aggregator.restore()

    def snapshot(self) -> dict[str, torch.Tensor]:
        return self.aggregator.snapshot()

    # work ------------------------------------------------------------------------------------------

    def lease(self, volunteer_id: str, *, memory_bytes: int, trust: TrustState | None = None) -> Assignment | NoWork:
        with self._as_leader():
            return self.scheduler.lease(volunteer_id, memory_bytes=memory_bytes, trust=trust)

    def heartbeat(
        self, volunteer_id: str, unit_id: str, lease_id: str, *, step: int | None = None
    ) -> float | tuple[str, str]:
        with self._as_leader():
            return self.scheduler.heartbeat(volunteer_id, unit_id, lease_id, step=step)

    def abandon(self, volunteer_id: str, unit_id: str, lease_id: str) -> None:
        with self._as_leader():
            self.scheduler.abandon(volunteer_id, unit_id, lease_id)

    # updates ----------------------------------------------------------------------------------------

    def submit(
        self,
        volunteer_id: str,
        unit_id: str,
        lease_id: str,
        payload: bytes,
        report: SubmissionReport,
        *,
        moments: bytes = b"",
    ) -> Outcome:
        """Judge one submission from start to end (`prepare`, `commit`, and the round's close at quorum)."""
        prepared = self.prepare(volunteer_id, unit_id, lease_id, payload, moments=moments)
        outcome = self.commit(volunteer_id, lease_id, prepared, report)
        self.close_if_due()
        return outcome

    def prepare(
        self,
        volunteer_id: str,
        unit_id: str,
        lease_id: str,
        payload: bytes,
        *,
        sha256: str | None = None,
        moments: bytes = b"",
    ) -> PreparedUpdate:
        return self.ingest.prepare(volunteer_id, unit_id, lease_id, payload, sha256=sha256, moments=moments)

    def prepare_stored(
        self, volunteer_id: str, unit_id: str, lease_id: str, sha256: str, size: int, *, moments_sha: str | None = None
    ) -> PreparedUpdate:
        """`prepare`, for an update another replica stored (`Ingest.prepare_stored`)."""
        return self.ingest.prepare_stored(volunteer_id, unit_id, lease_id, sha256, size, moments_sha=moments_sha)

    def commit(self, volunteer_id: str, lease_id: str, prepared: PreparedUpdate, report: SubmissionReport) -> Outcome:
        with self._as_leader():
            return self.ingest.commit(volunteer_id, lease_id, prepared, report)

    # rounds -----------------------------------------------------------------------------------------

    # A close is heavy (the outer step, checkpoints stored): it runs in no held transaction, and the store
    # checks the lease when it publishes (`close_round(lease=…)`), so a stale leader's close publishes nothing.

    def close_if_due(self) -> VersionRow | None:
        return self._published(self.aggregator.close_if_due())

    def close_round(self, reason: str) -> VersionRow:
        version = self._published(self.aggregator.close_round(reason))
        assert version is not None
        return version

    def tick(self) -> None:
        """Periodic work: a quorum's close, expired leases, updates whose holdout check is settled, a
        round whose deadline passed, the space of long-rejected updates."""
        self._check_term()  # each step below commits on its own; a leader out of its term does none
        self.close_if_due()
        with self.state.lock:
            self.scheduler.expire_leases()
            self.ingest.settle_checks()
            self.close_if_due()
            self._published(self.aggregator.close_at_deadline())
            self.ingest.purge_rejected()

    def _check_term(self) -> None:
        if self.state.lease is not None:
            self.state.store.hold_campaign(self.row.id, *self.state.lease)

    @contextlib.contextmanager
    def _as_leader(self) -> Iterator[None]:
        """A transaction that is this process's only while it holds the campaign's lease (`LeaseLost` if it
        doesn't); nothing to check for the one coordinator of a store."""
        lease = self.state.lease
        if lease is None:
            yield
            return
        with self.state.store.transaction():
            self._check_term()
            yield

    def _published(self, version: VersionRow | None) -> VersionRow | None:
        """Tell listeners about a new version, and open the next round."""
        if version is not None:
            if self.on_version is not None:
                self.on_version(self, version)
            self.scheduler.ensure_round()
        return version
