"""Three coordinator replicas behind HAProxy over one PostgreSQL and one S3 server, all real processes on
loopback, with real volunteer processes connected through the load balancer.

A replica that only follows the campaign is SIGKILLed mid-round, then the campaign's leader is: the
volunteers reconnect through HAProxy, another replica takes the campaign over within the lease's TTL
and finishes it, no acknowledged update is lost, and the history replays to every published version.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from benchmarks.servers import LoadBalancer, PostgresServer, S3Server
from coordinator.client import CoordinatorClient
from coordinator.local import LocalCoordinator, free_port, start_coordinator, stop
from coordinator.replicas import replica_of
from coordinator.store import Store, open_store
from tests.integration.test_system import HEARTBEAT_S, Volunteers, campaign_spec, poll
from tests.support.backends import BUCKET
from tests.support.history import check_history

pytestmark = pytest.mark.slow

LEASE_TTL_S = 3.0
REPLICAS = 3


class Replicas:
    """The replicas' processes by name (their host:port), each restartable on its own port."""

    def __init__(self, root: Path, dataset: Path, database: str, blobs: str) -> None:
        self.root, self.dataset, self.database, self.blobs = root, dataset, database, blobs
        self.ports = {f"127.0.0.1:{port}": port for port in (free_port() for _ in range(REPLICAS))}
        self.running: dict[str, LocalCoordinator] = {}

    def start(self, name: str) -> LocalCoordinator:
        port = self.ports[name]
        replica = start_coordinator(
            self.root / f"replica-{port}",
            datasets={"small": self.dataset},
            port=port,
            log=self.root / f"replica-{port}.log",
            log_level="info",
            extra_args=[
                "--heartbeat-interval", str(HEARTBEAT_S), "--database", self.database, "--blobs", self.blobs,
                "--replica-url", f"http://{name}", "--lease-ttl", str(LEASE_TTL_S),
            ],
        )  # fmt: skip
        self.running[name] = replica
        return replica

    def kill(self, name: str) -> None:
        replica = self.running.pop(name)
        replica.process.send_signal(signal.SIGKILL)
        replica.process.wait(timeout=10)

    def stop_all(self) -> None:
        for replica in self.running.values():
            stop(replica.process)


@pytest.fixture
def cluster(
    tmp_path: Path, small_dataset: Path, postgres_server: PostgresServer, s3_server: S3Server
) -> Iterator[tuple[Replicas, LoadBalancer, Store]]:
    reason = LoadBalancer.unavailable()
    if reason:
        pytest.skip(reason)
    replicas = Replicas(
        tmp_path, small_dataset, postgres_server.create_database(), f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
    )
    with ExitStack() as stack:
        stack.callback(replicas.stop_all)
        for name in replicas.ports:
            replicas.start(name)
        balancer = stack.enter_context(LoadBalancer.start(tmp_path / "haproxy", replicas.ports))
        record = open_store(replicas.database, tmp_path, clock=time.time)
        stack.callback(record.close)
        yield replicas, balancer, record


def test_replicas_survive_a_follower_and_then_the_leader_killed_with_sigkill(
    cluster: tuple[Replicas, LoadBalancer, Store], tmp_path: Path
) -> None:
    replicas, balancer, record = cluster
    first = next(iter(replicas.running.values()))
    api = CoordinatorClient(balancer.base, first.token)  # every replica knows every token: they share the store
    poll(lambda: _healthy_through(balancer), timeout=30, what="HAProxy to see the replicas healthy")
    spec = campaign_spec("replicated", lease_s=30)
    spec["token_budget"] = 8 * 2 * 3 * 2 * 32  # eight rounds of two units
    campaign_id: int = api.post_campaign(spec)["id"]
    leader = poll(lambda: _leader(record, campaign_id), timeout=30, what="a replica to lead the campaign")
    follower, bystander = (name for name in replicas.running if name != leader)
    # A dashboard on a replica that doesn't lead the campaign hears the versions its leader publishes.
    heard = _EventLog(f"{replicas.running[bystander].base}/api/events")
    through_balancer = LocalCoordinator(first.process, balancer.base, first.token, first.data_dir)
    volunteers = Volunteers(tmp_path / "volunteers", through_balancer)
    try:
        for name in ("a", "b", "c"):
            volunteers.start(name)
        poll(lambda: _accepted(record, campaign_id) >= 2, timeout=180, what="accepted updates")

        poll(lambda: "event: version" in heard.text, timeout=120, what="a version event on another replica")
        # A follower dies: its volunteers reconnect elsewhere; the leader, untouched, goes on.
        replicas.kill(follower)
        before = _accepted(record, campaign_id)
        poll(lambda: _accepted(record, campaign_id) >= before + 2, timeout=180, what="updates after a follower died")
        assert _leader(record, campaign_id) == leader

        # The leader dies mid-round: another replica takes the campaign over in a new term.
        term = _term(record, campaign_id)
        replicas.kill(leader)
        killed_at = time.monotonic()
        successor = poll(
            lambda: (name := _leader(record, campaign_id)) not in (None, leader) and name,
            timeout=60,
            what="another replica to take the campaign over",
        )
        took_over_s = time.monotonic() - killed_at
        assert successor == bystander
        assert _term(record, campaign_id) > term
        assert took_over_s < LEASE_TTL_S + 2 * LEASE_TTL_S / 3 + 5, f"the takeover took {took_over_s:.1f} s"
        poll(
            lambda: api.campaign(campaign_id)["status"] == "finished",
            timeout=400,
            what="the new leader to finish the campaign",
        )
    finally:
        volunteers.stop_all()

    assert check_history(tmp_path, campaign_id, database=replicas.database, blobs_url=replicas.blobs) == 9
    recorded = {s.unit_id for s in record.submissions(statuses=("accepted",), campaign_id=campaign_id, limit=1 << 40)}
    acked = {m for name in "abc" for m in re.findall(r"unit ([0-9a-f]{32}): accepted", volunteers.log(name))}
    assert acked, "the volunteers logged no acknowledgements"
    assert acked <= recorded, f"acknowledged but lost: {acked - recorded}"
    # The replica that took over says so in its log; the forwarded work went through the followers.
    logs = "".join((tmp_path / f"replica-{replicas.ports[n]}.log").read_text() for n in replicas.ports)
    assert f"replica {successor} leads campaign {campaign_id}" in logs


def test_the_load_balancer_keeps_replica_routes_private(cluster: tuple[Replicas, LoadBalancer, Store]) -> None:
    replicas, balancer, _ = cluster
    request = urllib.request.Request(f"{balancer.base}/internal/campaigns/1/lease", data=b"\x80", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 404
    # A replica itself refuses a caller without a replica's token.
    direct = next(iter(replicas.running.values())).base
    request = urllib.request.Request(f"{direct}/internal/campaigns/1/lease", data=b"\x80", method="POST")
    with pytest.raises(urllib.error.HTTPError) as unauthorized:
        urllib.request.urlopen(request, timeout=10)
    assert unauthorized.value.code == 401


class _EventLog:
    """An open Server-Sent Events stream, read into `text` by a thread until the server ends it."""

    def __init__(self, url: str) -> None:
        self.text = ""
        self._response = urllib.request.urlopen(url, timeout=600)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self._response:
                self.text += line.decode(errors="replace")


def _healthy_through(balancer: LoadBalancer) -> bool:
    try:
        with urllib.request.urlopen(f"{balancer.base}/api/health", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _leader(record: Store, campaign_id: int) -> str | None:
    lease = record.campaign_lease(campaign_id)
    return replica_of(lease.holder) if lease is not None and lease.expires_at >= time.time() else None


def _term(record: Store, campaign_id: int) -> int:
    lease = record.campaign_lease(campaign_id)
    assert lease is not None
    return lease.epoch


def _accepted(record: Store, campaign_id: int) -> int:
    return record.submission_counts(campaign_id).get("accepted", 0)
