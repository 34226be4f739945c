"""The coordinator's Prometheus metrics: one registry per app, served at GET /metrics.

    metrics = Metrics()
    metrics.read_campaigns(lambda: service)       # per-campaign totals, read at scrape time
    metrics.connection_opened()
    metrics.frame_received("RequestWork", 12)
    generate_latest(metrics.registry)             # b"commonweights_volunteers_connected 1.0 …"

What the process counts itself (volunteers connected, frames and WebSocket bytes, HTTP requests,
event-loop lag) lives in counters that restart with the process. Per-campaign values are read from
the store and the runtimes at every scrape by `CampaignCollector`, so totals that must survive a
restart (accepted and rejected updates) come from the database, counted there rather than listed.
The registry is the app's own, never the process-wide default, so several apps can share a process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from coordinator.service import Coordinator

__all__ = ["LAG_PROBE_S", "MALFORMED_FRAME", "UNMATCHED_ROUTE", "CampaignCollector", "Metrics"]

LAG_PROBE_S = 0.1  # how often the event-loop probe wakes up
MALFORMED_FRAME = "malformed"  # frames_total's type for a frame that didn't decode
UNMATCHED_ROUTE = "unmatched"  # http_requests_total's route for a path no route matched (404, 405)
# A client picks the method it sends; counting any other as "other" keeps a client from growing
# the number of series without bound.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The live counters of one coordinator process, and the registry /metrics renders."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._connected = 0
        self._connected_gauge = Gauge(
            "commonweights_volunteers_connected", "Volunteers with an open WebSocket.", registry=self.registry
        )
        self._connected_gauge.set_function(lambda: self._connected)
        self._frames = Counter(
            "commonweights_frames_total", "Frames received from volunteers by type.", ["type"], registry=self.registry
        )
        self._bytes_in = Counter(
            "commonweights_ws_bytes_received_total", "WebSocket bytes received from volunteers.", registry=self.registry
        )
        self._bytes_out = Counter(
            "commonweights_ws_bytes_sent_total", "WebSocket bytes sent to volunteers.", registry=self.registry
        )
        self._http_requests = Counter(
            "commonweights_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._http_seconds = Histogram(
            "commonweights_http_request_duration_seconds",
            "Time to answer an HTTP request by method and route template (a WebSocket or event stream: its lifetime).",
            ["method", "route"],
            registry=self.registry,
        )
        self._loop_lag = Histogram(
            "commonweights_event_loop_lag_seconds",
            "How late the event loop woke a task from a short sleep (blocking work delays every callback this much).",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self._campaigns: CampaignCollector | None = None

    # volunteers (the gateway) ------------------------------------------------------------------

    def connection_opened(self) -> None:
        self._connected += 1

    def connection_closed(self) -> None:
        self._connected -= 1

    def frame_received(self, type_name: str, nbytes: int) -> None:
        """One WebSocket frame from a volunteer: its message type (or `MALFORMED_FRAME`) and size."""
        self._frames.labels(type=type_name).inc()
        self._bytes_in.inc(nbytes)

    def frame_sent(self, nbytes: int) -> None:
        self._bytes_out.inc(nbytes)

    @property
    def connected(self) -> int:
        """Volunteers with an open WebSocket now."""
        return self._connected

    @connected.setter
    def connected(self, value: int) -> None:  # `metrics.connected += 1`, until the gateway uses the methods
        self._connected = value

    @property
    def frames(self) -> MutableMapping[str, int]:
        """Frames received so far, by type. Writable by increments, for gateway code that doesn't
        call `frame_received` yet."""
        return _FrameCounts(self._frames)

    @property
    def bytes_in(self) -> int:
        return _total(self._bytes_in)

    @bytes_in.setter
    def bytes_in(self, value: int) -> None:  # `metrics.bytes_in += n`, until the gateway uses the methods
        self._bytes_in.inc(value - self.bytes_in)

    @property
    def bytes_out(self) -> int:
        return _total(self._bytes_out)

    @bytes_out.setter
    def bytes_out(self, value: int) -> None:  # `metrics.bytes_out += n`, until the gateway uses the methods
        self._bytes_out.inc(value - self.bytes_out)

    # the web server -----------------------------------------------------------------------------

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered. `route` is the route's template (`/api/campaigns/{campaign_id}`),
        never the URL, or `UNMATCHED_ROUTE`."""
        method = method if method in HTTP_METHODS else "other"
        self._http_requests.labels(method=method, route=route, status=str(status)).inc()
        self._http_seconds.labels(method=method, route=route).observe(seconds)

    async def watch_event_loop_lag(self, interval: float = LAG_PROBE_S) -> None:
        """Sleep `interval` again and again and record how late each wake-up was: the time a
        callback waits behind blocking work on the loop. Runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            # The loop may wake a timer up to one clock tick early, hence the floor at zero.
            self._loop_lag.observe(max(0.0, loop.time() - started - interval))

    # campaigns ----------------------------------------------------------------------------------

    def read_campaigns(self, service: Callable[[], Coordinator]) -> None:
        """Expose per-campaign values read from `service()` at each scrape. A callable, so this can
        be wired before the service opens (it opens with the app)."""
        if self._campaigns is not None:
            raise RuntimeError("these metrics already read campaigns from a service")
        self._campaigns = CampaignCollector(service)
        self.registry.register(self._campaigns)


class CampaignCollector(Collector):
    """Per-campaign counters and gauges, read from the store and the runtimes when scraped."""

    def __init__(self, service: Callable[[], Coordinator]) -> None:
        self._service = service

    def collect(self) -> Iterable[Metric]:
        service = self._service()
        campaign = ["campaign"]
        leased = CounterMetricFamily(
            "commonweights_units_leased_total", "Work units leased since start.", labels=campaign
        )
        accepted = CounterMetricFamily("commonweights_updates_accepted_total", "Updates accepted.", labels=campaign)
        rejected = CounterMetricFamily(
            "commonweights_updates_rejected_total", "Updates rejected, by reason.", labels=[*campaign, "reason"]
        )
        update_bytes = CounterMetricFamily(
            "commonweights_update_bytes_received_total", "Update bytes received since start.", labels=campaign
        )
        versions = GaugeMetricFamily(
            "commonweights_model_version", "Current model version per campaign.", labels=campaign
        )
        rounds = SummaryMetricFamily(
            "commonweights_round_duration_seconds", "Time from a round's opening to its close.", labels=campaign
        )
        activity = service.store.activity()
        backend = [activity.backend]
        statements = CounterMetricFamily(
            "commonweights_store_statements_total", "SQL statements the store ran.", labels=["backend"]
        )
        statements.add_metric(backend, activity.statements)
        store_seconds = CounterMetricFamily(
            "commonweights_store_seconds_total",
            "Seconds spent in the store's statements and commits, waiting for the database included.",
            labels=["backend"],
        )
        store_seconds.add_metric(backend, activity.seconds)
        commits = CounterMetricFamily(
            "commonweights_store_commits_total", "Write transactions the store committed.", labels=["backend"]
        )
        commits.add_metric(backend, activity.commits)
        for campaign_id, runtime in sorted(list(service.runtimes.items())):
            name, counters = [runtime.row.name], runtime.counters
            leased.add_metric(name, counters.leased)
            accepted.add_metric(name, service.store.submission_counts(campaign_id).get("accepted", 0))
            for code, n in sorted(service.store.rejection_counts(campaign_id).items()):
                rejected.add_metric([*name, code], n)
            update_bytes.add_metric(name, counters.bytes_in)
            versions.add_metric(name, runtime.row.current_version)
            rounds.add_metric(name, count_value=len(counters.round_seconds), sum_value=sum(counters.round_seconds))
        return [leased, accepted, rejected, update_bytes, versions, rounds, statements, store_seconds, commits]


class _FrameCounts(MutableMapping[str, int]):
    """`metrics.frames[t] = metrics.frames.get(t, 0) + 1` turned into an increment of the counter."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter

    def _counts(self) -> dict[str, int]:
        return {labels["type"]: n for labels, n in _totals(self._counter)}

    def __getitem__(self, type_name: str) -> int:
        return self._counts()[type_name]

    def __setitem__(self, type_name: str, value: int) -> None:
        self._counter.labels(type=type_name).inc(value - self.get(type_name, 0))

    def __delitem__(self, type_name: str) -> None:
        raise TypeError("a Prometheus counter only goes up")

    def __iter__(self) -> Iterator[str]:
        return iter(self._counts())

    def __len__(self) -> int:
        return len(self._counts())


def _totals(counter: Counter) -> Iterator[tuple[dict[str, str], int]]:
    """(labels, value) of each series of `counter` (its `_total` samples, not `_created`)."""
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                yield sample.labels, int(sample.value)


def _total(counter: Counter) -> int:
    return sum(n for _, n in _totals(counter))
