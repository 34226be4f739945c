"""`commonweights bench coordinator --replicas 1,2,3`: the same loads through HAProxy onto 1, 2 and 3
coordinator replicas sharing one PostgreSQL and one S3 server, the scaling ratio, and where the time goes.

    commonweights bench coordinator --replicas 1,2,3

For each replica count the bench starts a fresh database and bucket prefix, the replicas (real
`coordinator serve --replica-url` processes) and HAProxy with the repository's deploy/haproxy.cfg, then
runs `bench coordinator`'s lease + submit cycles (top-k `tiny` updates) and int8 ingestion (`small`
updates) through the load balancer, and records each process's CPU seconds: the leader's, the
followers', PostgreSQL's, SeaweedFS's, HAProxy's and the simulated volunteers'.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.coordinator import cycles as run_cycles_on
from benchmarks.coordinator import own_cpu, store_counters, store_delta, tree_cpu
from benchmarks.coordinator import scrape as scrape_metrics
from benchmarks.report import machine_line, markdown_table, write_section
from benchmarks.servers import LoadBalancer, PostgresServer, S3Server, free_port
from benchmarks.system import ingest, spec
from coordinator.local import LocalCoordinator, start_coordinator, stop
from coordinator.replicas import replica_of
from coordinator.store import open_store
from training.data import ensure_default_dataset

__all__ = ["run_bench_replicas"]


@contextlib.contextmanager
def replicas(
    count: int, dataset: Path, work: Path, database: str, blobs: str
) -> Iterator[tuple[list[LocalCoordinator], LoadBalancer]]:
    started: list[LocalCoordinator] = []
    work.mkdir(parents=True, exist_ok=True)
    try:
        for _ in range(count):
            port = free_port()
            started.append(
                start_coordinator(
                    work / f"replica-{port}",
                    datasets={"stdlib": dataset},
                    port=port,
                    log=work / f"replica-{port}.log",
                    extra_args=["--database", database, "--blobs", blobs, "--replica-url", f"http://127.0.0.1:{port}"],
                )
            )
        ports = {f"replica-{i}": int(r.base.rsplit(":", 1)[1]) for i, r in enumerate(started)}
        with LoadBalancer.start(work / "haproxy", ports) as balancer:
            yield started, balancer
    finally:
        for replica in started:
            stop(replica.process)


def _through(balancer: LoadBalancer, first: LocalCoordinator) -> LocalCoordinator:
    """The load balancer, addressed like one coordinator (its admin token is every replica's)."""
    return LocalCoordinator(first.process, balancer.base, first.token, first.data_dir)


def _leader_pid(database: str, work: Path, started: list[LocalCoordinator]) -> int:
    store = open_store(database, work, clock=time.time)
    try:
        holders = {replica_of(lease.holder) for lease in store.campaign_leases() if lease.expires_at > time.time()}
    finally:
        store.close()
    for replica in started:
        if replica.base.removeprefix("http://") in holders:
            return replica.process.pid
    raise RuntimeError("no replica leads the campaign")


def measure(
    kind: str, count: int, args: argparse.Namespace, dataset: Path, work: Path, servers: dict[str, int], urls: Any
) -> dict[str, float]:
    database, blobs = urls()
    with replicas(count, dataset, work, database, blobs) as (started, balancer):
        entry = _through(balancer, started[0])
        if kind == "cycles":
            campaign = spec("cycles", model="tiny", units=10_000, rounds=100, steps=1, batch=1, seq=32)
            campaign["codec"] = {"name": "topk", "topk_fraction": 0.001}
            campaign["rounds"]["min_accepted"] = 2_000
        else:
            updates, clients = args.ingest_updates, args.ingest_clients
            campaign = spec("ingest", model="small", units=updates + clients, rounds=1, steps=2, batch=4, seq=128)
            campaign["rounds"]["min_accepted"] = updates + clients
        entry.api.post_campaign(campaign)
        leader = _leader_pid(database, work, started)
        roots = {
            "leader": leader,
            **{f"follower{i}": r.process.pid for i, r in enumerate(started) if r.process.pid != leader},
            **servers,
        }
        counters_before = [store_counters(scrape_metrics(r.base)) for r in started]
        cpu_before, bench_before = tree_cpu(roots), own_cpu()
        began = time.perf_counter()
        if kind == "cycles":
            result = asyncio.run(run_cycles_on(entry, dataset, args.cycle_clients, args.cycle_seconds, blobs_url=blobs))
        else:
            result = asyncio.run(ingest(entry, dataset, args.ingest_clients, args.ingest_updates, blobs_url=blobs))
        elapsed = time.perf_counter() - began
        cpu_after, bench_after = tree_cpu(roots), own_cpu()
        statements = 0.0
        for replica, before in zip(started, counters_before, strict=True):
            statements += store_delta(before, store_counters(scrape_metrics(replica.base))).get("store_statements", 0.0)
        cpu = {name: cpu_after[name] - cpu_before[name] for name in roots}
        followers = sum(v for k, v in cpu.items() if k.startswith("follower"))
        return result | {
            "replicas": count,
            "wall_s": elapsed,
            "cpu_leader_pct": 100 * cpu["leader"] / elapsed,
            "cpu_followers_pct": 100 * followers / elapsed,
            "cpu_postgresql_pct": 100 * cpu["postgresql"] / elapsed,
            "cpu_s3_pct": 100 * cpu["s3"] / elapsed,
            "cpu_bench_pct": 100 * (bench_after - bench_before) / elapsed,
            "statements": statements,
        }


def run_bench_replicas(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    for reason in (PostgresServer.unavailable(), S3Server.unavailable(), LoadBalancer.unavailable()):
        if reason:
            console.print(f"can't run: {reason}")
            return 2
    counts = [int(n) for n in args.replicas.split(",")]
    dataset = ensure_default_dataset(progress=True)
    work = Path(tempfile.mkdtemp(prefix="commonweights-bench-replicas-"))
    results: dict[str, list[dict[str, float]]] = {"cycles": [], "ingestion": []}
    with PostgresServer.start() as postgres, S3Server.start() as s3:
        os.environ.update(s3.environment())
        servers = {"postgresql": postgres.pid, "s3": s3.pid}

        def urls() -> tuple[str, str]:
            name = uuid.uuid4().hex[:8]
            return postgres.create_database(f"r{name}"), f"s3://commonweights-bench/replicas-{name}"

        for count in counts:
            for kind, key in (("cycles", "cycles"), ("ingestion", "ingestion")):
                console.print(f"{count} replica(s): {kind} …")
                folder = work / f"{kind}-{count}"
                measured = measure(kind, count, args, dataset, folder, servers, urls)
                console.print({k: round(v, 2) for k, v in measured.items() if isinstance(v, float | int)})
                results[key].append(measured)
    table = _table(results)
    body = "\n\n".join([
        "## Coordinator replicas (`commonweights bench coordinator --replicas " + args.replicas + "`)",
        machine_line(),
        "The loads of `bench coordinator` (lease + submit cycles of top-k `tiny` updates from "
        f"{args.cycle_clients} simulated volunteers for {args.cycle_seconds:.0f} s; {args.ingest_updates} int8 "
        f"updates of `small` from {args.ingest_clients}) sent through HAProxy (deploy/haproxy.cfg, `leastconn`) to "
        "1, 2 and 3 replicas over one PostgreSQL 15 and one SeaweedFS S3 gateway, all on loopback on this "
        "2-core machine. CPU is each process's share of one core over the run.",
        table,
        _analysis(results),
    ])  # fmt: skip
    write_section(args.output, "coordinator-replicas", body)
    console.print(table)
    console.print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _table(results: dict[str, list[dict[str, float]]]) -> str:
    rows = []
    base_cycles = results["cycles"][0]["cycles_per_s"] if results["cycles"] else 0.0
    base_mb = results["ingestion"][0]["mb_per_s"] if results["ingestion"] else 0.0
    for cyc, ing in zip(results["cycles"], results["ingestion"], strict=True):
        rows.append([
            f"{int(cyc['replicas'])}",
            f"{cyc['cycles_per_s']:.1f} ({cyc['cycles_per_s'] / base_cycles:.2f}×)",
            f"{ing['mb_per_s']:.1f} ({ing['mb_per_s'] / base_mb:.2f}×)",
            f"{cyc['cpu_leader_pct']:.0f} / {ing['cpu_leader_pct']:.0f}",
            f"{cyc['cpu_followers_pct']:.0f} / {ing['cpu_followers_pct']:.0f}",
            f"{cyc['cpu_postgresql_pct']:.0f} / {ing['cpu_postgresql_pct']:.0f}",
            f"{cyc['cpu_s3_pct']:.0f} / {ing['cpu_s3_pct']:.0f}",
            f"{cyc['cpu_bench_pct']:.0f} / {ing['cpu_bench_pct']:.0f}",
        ])  # fmt: skip
    return markdown_table(
        [
            "replicas",
            "cycles/s (vs 1)",
            "ingestion MB/s (vs 1)",
            "CPU % leader (cycles / ingest)",
            "followers",
            "PostgreSQL",
            "SeaweedFS",
            "volunteers (bench)",
        ],
        rows,
    )


def _analysis(results: dict[str, list[dict[str, float]]]) -> str:
    ing = results["ingestion"]
    cyc = results["cycles"]
    one, most = ing[0], ing[-1]
    total_cpu = sum(
        most[k] for k in ("cpu_leader_pct", "cpu_followers_pct", "cpu_postgresql_pct", "cpu_s3_pct", "cpu_bench_pct")
    )
    cycles_cpu = sum(
        cyc[-1][k] for k in ("cpu_leader_pct", "cpu_followers_pct", "cpu_postgresql_pct", "cpu_s3_pct", "cpu_bench_pct")
    )
    # Per stored update, what each part costs (CPU seconds per MB), measured in the run with the most replicas.
    mb = most["mb_per_s"] * most["wall_s"]
    per_mb = {
        "leader": most["cpu_leader_pct"] / 100 * most["wall_s"] / mb,
        "followers": most["cpu_followers_pct"] / 100 * most["wall_s"] / mb,
        "s3": most["cpu_s3_pct"] / 100 * most["wall_s"] / mb,
    }
    update_mb = 65.0  # a `1b` shard's int8 update (`bench coordinator --backend postgresql`)
    unit_minutes = 30.0  # assumed: one `1b` unit per volunteer every 30 minutes (no GPU lent to measure it)
    leader_mb_s = 1 / per_mb["leader"] if per_mb["leader"] > 0 else float("inf")
    volunteers_per_leader = leader_mb_s * unit_minutes * 60 / update_mb
    return (
        f"Scaling: with {int(most['replicas'])} replicas cycles ran at "
        f"{cyc[-1]['cycles_per_s'] / cyc[0]['cycles_per_s']:.2f}× and ingestion at "
        f"{most['mb_per_s'] / one['mb_per_s']:.2f}× the single replica's. The two cores were the bound: with "
        f"{int(most['replicas'])} replicas the processes together used {total_cpu:.0f} % of one core (of 200 % "
        "available), so extra replicas here only share the same two cores. Where the work goes, per MB ingested "
        f"with {int(most['replicas'])} replicas: the leader {1000 * per_mb['leader']:.1f} ms of CPU (decode, "
        f"validation, accumulation: one process per campaign by design), the followers "
        f"{1000 * per_mb['followers']:.1f} ms (receiving, hashing and storing the bytes, forwarding), SeaweedFS "
        f"{1000 * per_mb['s3']:.1f} ms. Cycles are bound otherwise: every lease and verdict of the campaign runs "
        f"in its leader's ordered lane, one after another, each a few PostgreSQL round trips (the processes used "
        f"{cycles_cpu:.0f} % of a core with {int(cyc[-1]['replicas'])} replicas, so the cores were not full); a "
        "follower adds a forward's round trip to each, which is why cycles slow slightly as replicas are added.\n\n"
        "Estimate for N replicas on machines of their own (not measured: one machine here): the followers' "
        "share (receiving, hashing, storing, and the downloads of checkpoints and deltas, which any replica "
        "serves) divides by N, while each campaign's verdicts and aggregation stay on its leader. At the measured "
        f"leader cost a campaign's leader alone absorbs about {leader_mb_s:.0f} MB/s of int8 updates on one core, "
        f"that is, at one 65 MB `1b` shard update per volunteer every {unit_minutes:.0f} minutes (assumed), about "
        f"{volunteers_per_leader:,.0f} volunteers per campaign; N replicas add N× the capacity for connections, "
        "uploads and downloads, and several campaigns spread their leaders over the replicas (each replica "
        "claims what nobody leads). PostgreSQL was not the bound in any run "
        f"(at most {max(r['cpu_postgresql_pct'] for r in ing + cyc):.0f} % of a core)."
    )
