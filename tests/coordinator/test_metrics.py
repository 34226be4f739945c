"""GET /metrics from a real app on loopback, read back with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from coordinator.app import create_app
from coordinator.appkeys import METRICS, SERVICE
from coordinator.campaign import CampaignSpec
from coordinator.client import CoordinatorClient
from coordinator.engine import Assignment
from coordinator.metrics import UNMATCHED_ROUTE, Metrics
from coordinator.service import Coordinator, CoordinatorConfig
from protocol.messages import Capabilities, Device, Hello, NoWork, RequestWork, Welcome, decode, encode
from protocol.version import PROTOCOL_VERSION

LISTING_CAP = 10_000  # what Store.submissions returns at most

# Every family /metrics served before prometheus_client, with its type and labels (dashboards
# depend on them), and the ones added with it. The parser names a counter's family without `_total`.
FAMILIES = {
    "commonweights_volunteers_connected": ("gauge", set()),
    "commonweights_frames": ("counter", {"type"}),
    "commonweights_ws_bytes_received": ("counter", set()),
    "commonweights_ws_bytes_sent": ("counter", set()),
    "commonweights_units_leased": ("counter", {"campaign"}),
    "commonweights_updates_accepted": ("counter", {"campaign"}),
    "commonweights_updates_rejected": ("counter", {"campaign", "reason"}),
    "commonweights_update_bytes_received": ("counter", {"campaign"}),
    "commonweights_model_version": ("gauge", {"campaign"}),
    "commonweights_round_duration_seconds": ("summary", {"campaign"}),
    "commonweights_http_requests": ("counter", {"method", "route", "status"}),
    "commonweights_http_request_duration_seconds": ("histogram", {"method", "route"}),
    "commonweights_event_loop_lag_seconds": ("histogram", set()),
    "commonweights_store_statements": ("counter", {"backend"}),
    "commonweights_store_seconds": ("counter", {"backend"}),
    "commonweights_store_commits": ("counter", {"backend"}),
}


@pytest.fixture
async def server(tmp_path: Path, small_dataset: Path) -> AsyncIterator[TestServer]:
    config = CoordinatorConfig(data_dir=tmp_path / "c", datasets={"small": small_dataset}, work_hold_s=0.0)
    app = create_app(config)  # work_hold_s 0: request_work is answered no_work at once
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    yield test_server
    await test_server.close()


def _hello() -> Hello:
    device = Device(kind="cpu", name="test cpu", memory_bytes=8 << 30)
    capabilities = Capabilities(
        devices=(device,),
        memory_bytes=8 << 30,
        threads=1,
        codecs=("fp32",),
        platform="linux-x86_64",
        runtimes=("torch",),
        unit_kinds=("train",),
    )
    return Hello(
        protocol_version=PROTOCOL_VERSION, client_version="0.1.0", token=None, name="v", capabilities=capabilities
    )


def _campaign(service: Coordinator, name: str = "metrics") -> int:
    spec = CampaignSpec.from_dict(
        {"name": name, "dataset": "small", "inner": {"steps": 2, "batch_size": 2, "seq_len": 32}}
    )
    return service.create_campaign(spec, owner="admin:1")


async def scrape(server: TestServer) -> dict[str, Metric]:
    async with aiohttp.ClientSession() as session, session.get(server.make_url("/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], sample: str, **labels: str) -> float | None:
    """The value of the sample named `sample` with exactly these labels; None if there is none."""
    for family in families.values():
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return s.value
    return None


def labels_of(families: dict[str, Metric], sample: str) -> list[dict[str, str]]:
    return [s.labels for family in families.values() for s in family.samples if s.name == sample]


async def test_every_metric_keeps_its_name_type_and_labels(server: TestServer) -> None:
    _campaign(server.app[SERVICE])
    families = await scrape(server)
    for name, (kind, labels) in FAMILIES.items():
        assert name in families, name
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le", "quantile"} == labels, (name, sample)
    assert value(families, "commonweights_model_version", campaign="metrics") == 0
    assert value(families, "commonweights_units_leased_total", campaign="metrics") == 0
    assert value(families, "commonweights_updates_accepted_total", campaign="metrics") == 0
    assert value(families, "commonweights_round_duration_seconds_count", campaign="metrics") == 0


async def test_the_stores_statements_and_commits_are_counted_as_they_happen(server: TestServer) -> None:
    before = await scrape(server)
    statements = value(before, "commonweights_store_statements_total", backend="sqlite")
    commits = value(before, "commonweights_store_commits_total", backend="sqlite")
    assert statements > 0 and commits > 0  # opening the service read and wrote (the admin token)
    server.app[SERVICE].register_volunteer("counted", {})
    after = await scrape(server)
    assert value(after, "commonweights_store_commits_total", backend="sqlite") == commits + 1
    assert value(after, "commonweights_store_statements_total", backend="sqlite") > statements
    assert value(after, "commonweights_store_seconds_total", backend="sqlite") > 0


async def test_updates_accepted_counts_every_accepted_row_not_a_capped_listing(server: TestServer) -> None:
    service = server.app[SERVICE]
    campaign_id = _campaign(service)
    volunteer, _ = service.register_volunteer("leaser", {})
    assignment = service.assign_work(volunteer, memory_bytes=8 << 30)
    assert isinstance(assignment, Assignment), assignment
    unit = assignment.unit
    row = {
        "unit_id": unit.id,
        "update_sha": "0" * 64,
        "update_size": 1,
        "code": None,
        "message": "",
        "round_id": unit.round_id,
        "staleness": 0,
        "weight": 1.0,
        "norm": 1.0,
        "tokens": 1,
        "seconds": 1.0,
        "losses": [],
        "credit": 0.0,
    }
    with service.store.transaction():
        for n in range(LISTING_CAP + 5):
            service.store.add_submission({**row, "volunteer_id": f"v{n}", "status": "accepted"})
        for n, code in enumerate(["stale", "stale", "too_large"]):
            service.store.add_submission({**row, "volunteer_id": f"r{n}", "status": "rejected", "code": code})
    # The listing stops at the cap; the metric must not.
    assert len(service.store.submissions(campaign_id=campaign_id, statuses=("accepted",))) == LISTING_CAP

    families = await scrape(server)
    assert value(families, "commonweights_updates_accepted_total", campaign="metrics") == LISTING_CAP + 5
    assert value(families, "commonweights_units_leased_total", campaign="metrics") == 1
    assert value(families, "commonweights_updates_rejected_total", campaign="metrics", reason="stale") == 2
    assert value(families, "commonweights_updates_rejected_total", campaign="metrics", reason="too_large") == 1
    # The same numbers through the reader the demo and the benchmarks use.
    base = str(server.make_url("")).rstrip("/")
    api = CoordinatorClient(base)
    assert await asyncio.to_thread(api.metric, "commonweights_updates_accepted_total") == LISTING_CAP + 5


async def test_http_requests_are_counted_by_route_template_method_and_status(server: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        for path, method, status in [
            ("/api/stats", "GET", 200),
            ("/api/stats", "GET", 200),
            ("/api/campaigns/4242", "GET", 404),
            ("/api/tokens", "GET", 401),
            ("/api/stats", "DELETE", 405),
            ("/no/such/page", "GET", 404),
            ("/static/css/app.css", "GET", 200),
        ]:
            async with session.request(method, server.make_url(path)) as response:
                assert response.status == status, path

    families = await scrape(server)
    counted = "commonweights_http_requests_total"
    assert value(families, counted, method="GET", route="/api/stats", status="200") == 2
    assert value(families, counted, method="GET", route="/api/campaigns/{campaign_id}", status="404") == 1
    assert value(families, counted, method="GET", route="/api/tokens", status="401") == 1
    assert value(families, counted, method="DELETE", route=UNMATCHED_ROUTE, status="405") == 1
    assert value(families, counted, method="GET", route=UNMATCHED_ROUTE, status="404") == 1
    assert value(families, counted, method="GET", route="/static", status="200") == 1
    # Routes are templates, never URLs: the number of series stays bounded whatever clients ask for.
    routes = {labels["route"] for labels in labels_of(families, counted)}
    assert not routes & {"/api/campaigns/4242", "/no/such/page", "/static/css/app.css"}
    timed = "commonweights_http_request_duration_seconds"
    assert value(families, f"{timed}_count", method="GET", route="/api/stats") == 2
    assert value(families, f"{timed}_bucket", method="GET", route="/api/stats", le="+Inf") == 2


async def test_frames_and_websocket_bytes_are_counted(server: TestServer) -> None:
    sent = [encode(_hello()), encode(RequestWork())]
    received = 0
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        for frame, expected in zip(sent, [Welcome, NoWork], strict=True):
            await ws.send_bytes(frame)
            reply = await ws.receive(timeout=30)
            assert isinstance(decode(reply.data, direction="to_client"), expected)
            received += len(reply.data)
        families = await scrape(server)
        assert value(families, "commonweights_volunteers_connected") == 1
        assert value(families, "commonweights_frames_total", type="RequestWork") == 1
        assert value(families, "commonweights_ws_bytes_received_total") == sum(len(f) for f in sent)
        assert value(families, "commonweights_ws_bytes_sent_total") == received

    deadline = time.monotonic() + 10
    while server.app[METRICS].connected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert value(await scrape(server), "commonweights_volunteers_connected") == 0


def _exposition(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(metrics.registry).decode()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")  # when each series began: differs between two objects
    ]


def test_the_old_attribute_interface_counts_what_the_methods_count() -> None:
    methods, attributes = Metrics(), Metrics()
    methods.connection_opened()
    methods.connection_opened()
    methods.connection_closed()
    methods.frame_received("RequestWork", 10)
    methods.frame_received("RequestWork", 5)
    methods.frame_sent(7)

    attributes.connected += 1
    attributes.connected += 1
    attributes.connected -= 1
    for size in (10, 5):
        attributes.bytes_in += size
        attributes.frames["RequestWork"] = attributes.frames.get("RequestWork", 0) + 1
    attributes.bytes_out += 7

    assert _exposition(methods) == _exposition(attributes)
    assert (methods.connected, dict(methods.frames), methods.bytes_in, methods.bytes_out) == (
        1,
        {"RequestWork": 2},
        15,
        7,
    )


def test_two_apps_in_one_process_count_separately(tmp_path: Path) -> None:
    first = create_app(CoordinatorConfig(data_dir=tmp_path / "a"))
    second = create_app(CoordinatorConfig(data_dir=tmp_path / "b"))
    first[METRICS].frame_sent(100)
    assert (first[METRICS].bytes_out, second[METRICS].bytes_out) == (100, 0)


async def test_event_loop_lag_is_how_late_the_loop_woke_the_probe() -> None:
    metrics = Metrics()
    probe = asyncio.create_task(metrics.watch_event_loop_lag(interval=0.01))
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # blocking work on the loop: the probe's wake-up waits behind it
    await asyncio.sleep(0.05)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe

    samples = {name: v for name, labels, v in _exposition(metrics) if name.startswith("commonweights_event_loop_lag")}
    assert samples["commonweights_event_loop_lag_seconds_count"] >= 3
    assert samples["commonweights_event_loop_lag_seconds_sum"] >= 0.15
