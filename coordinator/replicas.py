"""Several coordinator replicas over one PostgreSQL database and one object store.

    >>> cluster = Cluster(service, name="coord-2", url="http://10.0.0.2:8470")
    >>> cluster.step()                      # every LEASE_TTL_S / 3, off the event loop
    >>> cluster.leads(campaign_id)          # this replica aggregates it
    >>> service.followed[campaign_id]       # else a FollowerRuntime: its work goes to the leader

Any replica accepts any volunteer. Per campaign one replica is its leader: it holds the campaign's
lease in the store (`Store.claim_campaign`) and runs its `CampaignRuntime`, the only one that
changes the campaign (leases, verdicts, the accumulator, closing rounds). Every other replica keeps a
`FollowerRuntime`: the campaign's description, enough to tell volunteers about units, and it forwards
the campaign's work to the leader (`coordinator.forwarding`) — an update only by its digest, after
storing the bytes itself, so the leader reads them back from the object store and nothing large
crosses between replicas.

Leadership. Each replica renews what it leads and claims what nobody holds every TTL/3. A replica
that dies stops renewing; once its lease lapses (TTL) the next replica to step claims the campaign in
a new term and rebuilds its state from the store (`CampaignRuntime.load`), which holds every acked
update. The old leader, if it was only paused, is fenced: every change it makes checks its term in
the same transaction (`Store.hold_campaign`), so it gets `LeaseLost` and drops the campaign.

Replicas prove themselves to each other with a token each makes at start and registers, hashed,
in the store's `replicas` table together with the URL the others reach it at.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from typing import TYPE_CHECKING

from coordinator.engine import Assignment, CampaignRuntime
from coordinator.store import CampaignRow, LeaseLost
from training.data import TokenDataset
from training.inner import InnerConfig
from training.model import ModelConfig

if TYPE_CHECKING:
    from coordinator.campaign import CampaignSpec
    from coordinator.service import Coordinator

__all__ = ["LEASE_TTL_S", "Cluster", "FollowerRuntime", "LeaderUnavailable", "Served", "replica_of"]

log = logging.getLogger(__name__)

LEASE_TTL_S = 10.0  # how long a dead leader holds its campaigns up, at most (plus one step)


class LeaderUnavailable(Exception):
    """The campaign's leader could not be reached, or no longer leads it: the volunteer reconnects
    and tries again once another replica took the campaign over."""


class FollowerRuntime:
    """A campaign another replica leads, as this replica's gateway sees it: the description a
    `CampaignRuntime` gives (spec, model, shards), and nothing that changes the campaign."""

    def __init__(self, view: CampaignRuntime) -> None:
        self.view = view
        self.close_due = None  # rounds close at the leader

    @property
    def row(self) -> CampaignRow:
        return self.view.row

    @property
    def spec(self) -> CampaignSpec:
        return self.view.spec

    @property
    def model_config(self) -> ModelConfig:
        return self.view.model_config

    @property
    def inner_config(self) -> InnerConfig:
        return self.view.inner_config

    @property
    def dataset(self) -> TokenDataset:
        return self.view.dataset

    @property
    def shards(self) -> list[list[str]]:
        return self.view.shards

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.view.shapes

    def refresh(self) -> CampaignRow:
        return self.view.refresh()

    def assignment(self, unit_id: str, lease_id: str, deadline: float) -> Assignment:
        """What the volunteer is told about a unit the leader granted it."""
        return self.view.scheduler.assignment(unit_id, lease_id, deadline)

    def store_update(self, volunteer_id: str, unit_id: str, lease_id: str, payload: bytes, moments: bytes) -> bool:
        """Make an update durable before it is forwarded: only one that may still count (its unit's
        current lease, none sent before), so a volunteer can't fill the object store through a
        follower with what the leader would never read. Whether it was stored."""
        unit, holds = self.view.ingest._holding(volunteer_id, unit_id, lease_id)
        if unit is None or not holds:
            return False
        self.view.state.blobs.put(payload)
        if moments:
            self.view.state.blobs.put(moments)
        return True


# A campaign as a replica serves it: led here, or followed.
Served = CampaignRuntime | FollowerRuntime


def replica_of(holder: str) -> str:
    """The replica name in a lease holder (NAME#PROCESS)."""
    return holder.rsplit("#", 1)[0]


def hash_secret(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Cluster:
    """This replica's part in leading campaigns: its name, its token, and the campaigns it leads
    (`service.runtimes`) or follows (`service.followed`)."""

    def __init__(self, service: Coordinator, *, name: str, url: str, ttl_s: float = LEASE_TTL_S) -> None:
        self.service = service
        self.name = name
        self.url = url.rstrip("/")
        self.ttl_s = ttl_s
        self.token = "cw-replica-" + secrets.token_urlsafe(24)
        # The lease holder: this process, not just the name, so that a replica restarted under the same name
        # while the old process still runs (stalled, say) can never share a term with it.
        self.holder = f"{name}#{secrets.token_hex(4)}"
        self._lock = threading.Lock()  # one step at a time (the background task, or a new campaign)
        store = service.store
        store.register_replica(name, self.url, hash_secret(self.token))
        # A replica restarted under the same name takes over what it led at once: it restarts from the store.
        for lease in store.campaign_leases():
            if replica_of(lease.holder) == name:
                store.release_campaign(lease.campaign_id, lease.holder)

    def leads(self, campaign_id: int) -> bool:
        return campaign_id in self.service.runtimes

    def authorized(self, name: str, token: str) -> bool:
        """Whether `token` is replica `name`'s (it forwards work to this one)."""
        row = self.service.store.replica(name)
        return row is not None and secrets.compare_digest(row.token_hash, hash_secret(token))

    def leader_url(self, campaign_id: int) -> str | None:
        """Where the campaign's leader is reached, as the store says now (None while nobody leads it)."""
        store = self.service.store
        lease = store.campaign_lease(campaign_id)
        if lease is None or lease.holder == self.holder:
            return None
        replica = store.replica(replica_of(lease.holder))
        return replica.url if replica else None

    def step(self) -> None:
        """Renew the leases this replica holds, claim the campaigns nobody holds, follow the rest."""
        with self._lock:
            service, store = self.service, self.service.store
            store.touch_replica(self.name)
            rows = store.campaigns(("active", "paused"))
            live = {row.id for row in rows}
            for row in rows:
                try:
                    self._settle(row.id)
                except Exception:  # one campaign's trouble (its dataset missing here, S3 down) is not the others'
                    log.exception("replica %s could not take its part in campaign %d", self.name, row.id)
                    if row.id not in service.runtimes:
                        store.release_campaign(row.id, self.holder)  # let a replica that can lead it
            for campaign_id in list(service.runtimes):
                if campaign_id not in live:
                    store.release_campaign(campaign_id, self.holder)
                    service.runtimes.pop(campaign_id, None)
            for campaign_id in list(service.followed):
                if campaign_id not in live:
                    service.followed.pop(campaign_id, None)

    def adopt(self, campaign_id: int) -> None:
        """A campaign just created here: lead it if nobody does (the usual case), else follow it."""
        with self._lock:
            self._settle(campaign_id)

    def release_all(self) -> None:
        """On a clean shutdown: let other replicas take this one's campaigns over at once."""
        for campaign_id in list(self.service.runtimes):
            self.service.store.release_campaign(campaign_id, self.holder)

    def _settle(self, campaign_id: int) -> None:
        service, store = self.service, self.service.store
        # Read first: a claim on a lease another replica holds would wait for that leader's transaction.
        lease = store.campaign_lease(campaign_id)
        held_elsewhere = lease is not None and lease.holder != self.holder and lease.expires_at >= service.clock()
        epoch = None if held_elsewhere else store.claim_campaign(campaign_id, self.holder, self.ttl_s)
        led = service.runtimes.get(campaign_id)
        if epoch is None:
            if campaign_id not in service.followed:  # the view first, then the swap: never neither
                view = CampaignRuntime.view(
                    store, service.blobs, campaign_id, clock=service.clock, work_dir=service.work_dir
                )
                service.followed[campaign_id] = FollowerRuntime(view)
                service.campaign_opened()
            if led is not None:
                log.warning("replica %s lost the lease of campaign %d; it follows it now", self.name, campaign_id)
                service.runtimes.pop(campaign_id, None)
            return
        if led is not None and led.state.lease == (self.holder, epoch):
            return
        log.info("replica %s leads campaign %d (term %d)", self.name, campaign_id, epoch)
        try:
            service.load_runtime(campaign_id, lease=(self.holder, epoch))  # replaces a stale runtime, if any
        except LeaseLost:  # taken over while it loaded
            return
        service.followed.pop(campaign_id, None)
        if store.claim_campaign(campaign_id, self.holder, self.ttl_s) != epoch:  # renewed after a long restore
            log.warning("replica %s lost campaign %d while restoring it", self.name, campaign_id)
            service.runtimes.pop(campaign_id, None)
            return
        for version in service.store.versions(campaign_id):
            if version.holdout_loss is None and (campaign_id, version.version) not in service.eval_queue:
                service.eval_queue.append((campaign_id, version.version))
        service.campaign_opened()
