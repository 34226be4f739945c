"""`commonweights bench coordinator --backend postgresql`: one coordinator on PostgreSQL + S3 against the
embedded SQLite + folder, and what each store operation costs on each.

    commonweights bench coordinator --backend postgresql

Starts a real PostgreSQL (Debian's initdb/postgres) and a real S3 server (SeaweedFS's `weed`) on
loopback, and runs `bench coordinator`'s lease + submit cycles and int8 ingestion against a
coordinator on each backend in turn, then times the operations a coordinator's work is made of (a
write transaction, a read, a blob put and get at an update's size and at a data slice's size) directly
on each. These per-operation costs are what the estimate for several replicas is built from.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.coordinator import Backend, run_cycles, run_ingestion_with_lag
from benchmarks.report import machine_line, markdown_table, write_section
from benchmarks.servers import PostgresServer, S3Server
from coordinator.store import Blobs, Store, open_blobs, open_store
from protocol.codecs import CodecConfig, encoded_size_bound
from protocol.limits import MAX_UPDATE_BYTES
from protocol.tensors import TensorSpec
from training.data import ensure_default_dataset
from training.model import build_model, preset

__all__ = ["run_bench_backends"]

OPERATIONS = 200  # timed repetitions of each store operation
UPDATE_BYTES = 8_900_000  # an int8 update of the `small` preset
SLICE_BYTES = 1_100  # a `tiny` unit's data slice (two bytes per token)


def _timed(operation: Callable[[int], object], repeats: int) -> float:
    """The median seconds one call takes (after one untimed warm-up call)."""
    operation(-1)
    times = []
    for i in range(repeats):
        began = time.perf_counter()
        operation(i)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def store_costs(store: Store) -> dict[str, float]:
    """Medians in ms of a one-row write transaction (what a lease or a heartbeat commits) and a
    one-row read by key (what every request does several of)."""
    store.add_volunteer("bench", "bench-hash", "bench", {})
    write = _timed(lambda i: store.touch_volunteer("bench", f"bench-{i}", {"i": i}), OPERATIONS)
    read = _timed(lambda _: store.volunteer("bench"), OPERATIONS)
    return {"write_ms": 1000 * write, "read_ms": 1000 * read}


def blob_costs(blobs: Blobs) -> dict[str, float]:
    """Medians in ms of a durable put and a get, at an update's size and at a data slice's."""
    costs: dict[str, float] = {}
    for label, size, repeats in (("update", UPDATE_BYTES, 20), ("slice", SLICE_BYTES, OPERATIONS)):
        payloads = [os.urandom(size) for _ in range(4)]
        digests: list[str] = []

        def put(i: int, payloads: list[bytes] = payloads, digests: list[str] = digests) -> None:
            data = payloads[i % len(payloads)]
            digests.append(blobs.put(data[:-8] + i.to_bytes(8, "little", signed=True)))

        def get(i: int, digests: list[str] = digests) -> None:
            blobs.get(digests[i % len(digests)])

        costs[f"{label}_put_ms"] = 1000 * _timed(put, repeats)
        costs[f"{label}_get_ms"] = 1000 * _timed(get, repeats)
    return costs


def run_bench_backends(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    for reason in (PostgresServer.unavailable(), S3Server.unavailable()):
        if reason:
            console.print(f"can't run: {reason}")
            return 2
    dataset = ensure_default_dataset(progress=True)
    work = Path(tempfile.mkdtemp(prefix="commonweights-bench-backends-"))
    results: dict[str, dict[str, Any]] = {}
    with PostgresServer.start() as postgres, S3Server.start() as s3:
        os.environ.update(s3.environment())  # the coordinators started below read the endpoint here
        bucket = f"s3://commonweights-bench/{uuid.uuid4().hex[:8]}"

        def scale(name: str) -> Backend:
            return Backend("postgresql+s3", postgres.create_database(name), f"{bucket}/{name}")

        for name, backends in (("sqlite", (Backend(), Backend())), ("postgresql+s3", (scale("c"), scale("i")))):
            console.print(
                f"{name}: lease + submit cycles, {args.cycle_clients} clients for {args.cycle_seconds:.0f} s …"
            )
            cyc = run_cycles(dataset, work, args.cycle_clients, args.cycle_seconds, backends[0])
            console.print(cyc)
            console.print(f"{name}: ingestion, {args.ingest_clients} clients, {args.ingest_updates} updates …")
            servers = {"postgresql": postgres.pid, "s3": s3.pid}
            ing = run_ingestion_with_lag(
                dataset,
                work,
                args.ingest_clients,
                args.ingest_updates,
                backends[1],
                watch=servers if name != "sqlite" else None,
            )
            console.print(ing)
            results[name] = {"cycles": cyc, "ingestion": ing}
        console.print("per-operation costs …")
        sqlite_store = open_store("", work / "ops", clock=time.time)
        pg_store = open_store(postgres.create_database("ops"), work / "ops", clock=time.time)
        try:
            results["sqlite"]["ops"] = store_costs(sqlite_store) | blob_costs(open_blobs("", work / "ops"))
            results["postgresql+s3"]["ops"] = store_costs(pg_store) | blob_costs(open_blobs(f"{bucket}/ops", work))
        finally:
            sqlite_store.close()
            pg_store.close()
    table = _table(results)
    estimate = _estimate(results)
    body = "\n\n".join([
        "## One coordinator on PostgreSQL + S3 (`commonweights bench coordinator --backend postgresql`)",
        machine_line(),
        "The same coordinator process and loads as the section above (lease + submit cycles of top-k `tiny` "
        "updates; int8 updates of `small`), once on the embedded SQLite + blob folder and once on a real "
        "PostgreSQL 15 and a real S3 gateway (SeaweedFS), both on loopback on this machine, then the store's "
        f"operations timed directly (medians of {OPERATIONS}; blob puts of an update's size, of 20). The servers "
        "share the two cores with the coordinator and the simulated volunteers.",
        table,
        estimate,
    ])  # fmt: skip
    write_section(args.output, "coordinator-backends", body)
    console.print(table)
    console.print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


# How often a volunteer is assumed to return a `1b` unit (not measured here: no GPU was lent to this work).
UNIT_MINUTES = 30.0


def _estimate(results: dict[str, dict[str, Any]]) -> str:
    """How many volunteers of the `1b` preset one coordinator serves, from this run's measured rates."""
    model = build_model(preset("1b"), device="meta")
    params = sum(p.numel() for p in model.parameters())
    specs = {name: TensorSpec(tuple(p.shape)) for name, p in model.named_parameters()}
    int8_mb = encoded_size_bound(specs, CodecConfig("int8")) / 1e6  # the whole model's update
    max_update_mb = MAX_UPDATE_BYTES / 1e6
    shards = math.ceil(int8_mb / max_update_mb)
    update_mb = int8_mb / shards
    period_s = UNIT_MINUTES * 60
    lines = []
    for name, label in (("sqlite", "SQLite + folder"), ("postgresql+s3", "PostgreSQL + S3")):
        by_ingest = results[name]["ingestion"]["mb_per_s"] / (update_mb / period_s)
        by_cycles = results[name]["cycles"]["cycles_per_s"] * period_s
        lines.append(f"{label}: {by_ingest:,.0f} by ingestion, {by_cycles:,.0f} by lease + submit cycles")
    return (
        f"**Estimate for the `1b` preset** ({params / 1e9:.2f} B parameters), from this run's rates: an int8 update "
        f"of the whole model is {int8_mb / 1e3:.2f} GB, more than a submit carries ({max_update_mb:.0f} MB), so a `1b` "
        f"campaign runs in {shards} shards and each unit returns {update_mb:.0f} MB. If a volunteer returns one unit "
        f"every {UNIT_MINUTES:.0f} minutes (an assumption: no GPU was measured here; the figures scale with it), one "
        "coordinator on this 2-core machine serves about " + "; ".join(lines) + " — ingestion is the bound. Not in "
        "it: the new versions volunteers download (a volunteer needs each version whole, about "
        f"{int8_mb / 1e3:.1f} GB as an int8 delta, and the coordinator relays every blob over its WebSockets), which "
        "this bench does not load. Where the time "
        "goes: a lease + submit cycle runs about 50 store statements in the campaign's ordered lane, so on "
        "PostgreSQL its round trips (a read costs about 10-30× SQLite's in-process one) bound the cycles; ingestion "
        "on PostgreSQL + S3 is bound by CPU, the S3 server's above all (SeaweedFS spends about as much CPU per byte "
        "stored as the coordinator does decoding and validating it), all sharing two cores here. These rates move "
        "between runs on this shared machine: three runs on 2026-12-03 measured 33, 39 and 55 cycles/s and 55 to 59 "
        "MB/s on PostgreSQL + S3."
    )


def _table(results: dict[str, dict[str, Any]]) -> str:
    lite, scale = results["sqlite"], results["postgresql+s3"]

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}×" if a else "—"

    def row(label: str, section: str, key: str, digits: int) -> list[str]:
        a, b = lite[section][key], scale[section][key]
        return [label, f"{a:,.{digits}f}", f"{b:,.{digits}f}", ratio(a, b)]

    for result in (lite, scale):
        cyc, ing = result["cycles"], result["ingestion"]
        result["per"] = {
            "cycle_statements": cyc["store_statements"] / max(1, cyc["cycles"]),
            "cycle_store_ms": 1000 * cyc["store_seconds"] / max(1, cyc["cycles"]),
            "update_statements": ing["store_statements"] / max(1, ing["updates"]),
            "update_store_ms": 1000 * ing["store_seconds"] / max(1, ing["updates"]),
        }

    def cpu(result: dict[str, Any]) -> str:
        keys = ("coordinator", "postgresql", "s3", "bench")
        spent = {key: result["ingestion"][f"cpu_{key}_s"] for key in keys if f"cpu_{key}_s" in result["ingestion"]}
        total = sum(spent.values()) or 1.0
        parts = [
            ("coordinator", "coordinator"),
            ("postgresql", "PostgreSQL"),
            ("s3", "S3 server"),
            ("bench", "clients"),
        ]
        return ", ".join(
            f"{label} {spent[key]:.0f} s ({spent[key] / total:.0%})" for key, label in parts if key in spent
        )

    mb = UPDATE_BYTES / 1e6
    rows = [
        row("lease + submit cycles / s (`tiny`, top-k)", "cycles", "cycles_per_s", 0),
        row("update ingestion, MB/s (`small`, int8)", "ingestion", "mb_per_s", 1),
        row("event-loop lag p99 while ingesting, ms", "ingestion", "lag_p99_ms", 1),
        row("one-row write transaction, ms", "ops", "write_ms", 2),
        row("one-row read, ms", "ops", "read_ms", 3),
        row(f"blob put, {mb:.1f} MB (durable), ms", "ops", "update_put_ms", 1),
        row(f"blob get, {mb:.1f} MB, ms", "ops", "update_get_ms", 1),
        row(f"blob put, {SLICE_BYTES:,} B, ms", "ops", "slice_put_ms", 2),
        row(f"blob get, {SLICE_BYTES:,} B, ms", "ops", "slice_get_ms", 2),
        row("store statements per lease + submit cycle", "per", "cycle_statements", 1),
        row("store time per cycle (statements + commits), ms", "per", "cycle_store_ms", 2),
        row("store statements per ingested update", "per", "update_statements", 1),
        row("store time per ingested update, ms", "per", "update_store_ms", 2),
        ["CPU seconds while ingesting", cpu(lite), cpu(scale), "—"],
    ]
    return markdown_table(["measure", "SQLite + folder", "PostgreSQL + S3", "PostgreSQL + S3 ÷ SQLite"], rows)
