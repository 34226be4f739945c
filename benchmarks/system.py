"""`commonweights bench system`: what the distributed system costs over plain training.

Three measurements, written to docs/benchmarks.md:

1. End-to-end tokens/s of a real coordinator process with N real volunteer processes on loopback,
   against the same units trained back to back in one process with the same CPU threads: the
   overhead ratio (scheduling, blob transfer, encoding, validation, aggregation, waiting).
2. Bytes on the wire per unit, both directions, from the coordinator's own counters.
3. Ingestion: many simulated volunteers on loopback submitting int8 updates of the `small` preset
   (~10M parameters) as fast as the coordinator acknowledges them; MB/s of updates decoded,
   validated, made durable and accumulated, against what 1,000 volunteers each sending one
   update every 5 minutes need.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.report import machine_line, markdown_table, write_section
from coordinator.local import LocalCoordinator, start_coordinator, stop
from coordinator.store import open_blobs
from coordinator.validation.trust import TrustState, TrustTracker
from protocol.codecs import CodecConfig, encode
from protocol.messages import Capabilities, Device, Hello, RequestWork, Result, Submit, TrainMetrics, WorkUnit
from protocol.messages import decode as decode_frame
from protocol.messages import encode as encode_frame
from protocol.version import PROTOCOL_VERSION
from training.checkpoint import load_weights
from training.data import TokenDataset, ensure_default_dataset
from training.inner import InnerConfig, InnerLoop
from training.model import build_model, preset

__all__ = ["run_bench_system"]

TARGET_VOLUNTEERS = 1000
TARGET_PERIOD_S = 300.0


def start(dataset: Path, work: Path, name: str, extra_args: Sequence[str] = ()) -> LocalCoordinator:
    return start_coordinator(work / name, datasets={"stdlib": dataset}, log=work / f"{name}.log", extra_args=extra_args)


# Model bytes per unit (the new version's delta down, the update up) against the update alone.
WIRE_TARGET = 1.25


def spec(
    name: str,
    *,
    model: str,
    units: int,
    rounds: int,
    steps: int,
    batch: int,
    seq: int,
    download_codec: str = "int8",
    overlap: float = 0.0,
) -> dict[str, Any]:
    return {
        "name": name,
        "model": model,
        "dataset": "stdlib",
        "codec": "int8",
        "download_codec": download_codec,
        "token_budget": rounds * units * steps * batch * seq,
        "inner": {"steps": steps, "batch_size": batch, "seq_len": seq, "warmup_steps": 0},
        "rounds": {
            "units_per_round": units,
            "min_accepted": units,
            "deadline_s": 3600,
            "lease_s": 600,
            "overlap": overlap,
        },
        "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
    }


# 1 + 2: end to end -------------------------------------------------------------------------------


def end_to_end(
    dataset: Path,
    work: Path,
    volunteers: int,
    rounds: int,
    steps: int,
    download_codec: str = "int8",
    *,
    overlap: float = 0.0,
    cpu_percent: Sequence[int] = (),
    trusted: bool = False,
) -> dict[str, float]:
    """`cpu_percent[i]` throttles volunteer i (`--cpu-percent`; the rest train flat out). With `trusted`
    the volunteers first train a warm-up campaign of small units until the coordinator trusts each of
    them (TrustTracker: enough valid results in a row), as a project's regular volunteers are; then the
    measured campaign is posted, and the figures are its own."""
    threads = max(1, (os.cpu_count() or 2) // volunteers)
    label = (
        f"{volunteers}-{download_codec}"
        + (f"-overlap{overlap}" if overlap else "")
        + "".join(f"-{p}" for p in cpu_percent)
        + ("-trusted" if trusted else "")
    )
    coordinator = start(dataset, work, f"e2e-{label}")
    running = [coordinator.process]
    db_path = work / f"e2e-{label}" / "coordinator.sqlite3"
    try:
        api = coordinator.api
        measured = spec(
            f"e2e{label}", model="tiny", units=volunteers, rounds=rounds, steps=steps,
            batch=8, seq=128, download_codec=download_codec, overlap=overlap,
        )  # fmt: skip
        warmup = spec(f"e2e{label}-warmup", model="tiny", units=volunteers, rounds=1000, steps=10, batch=4, seq=64)
        # A slow volunteer's warm-up units come back many versions late: they must still count to earn trust.
        warmup["rounds"]["staleness_bound"] = 1000
        campaign = api.post_campaign(warmup if trusted else measured)
        port = coordinator.base.rsplit(":", 1)[1]
        for i in range(volunteers):
            home = work / f"e2e-{label}-v{i}"
            log = (work / f"e2e-{label}-v{i}.log").open("wb")
            percent = cpu_percent[i] if i < len(cpu_percent) else 100
            running.append(subprocess.Popen(
                [sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", f"ws://127.0.0.1:{port}/ws",
                 "--threads", str(threads), "--cpu-percent", str(percent), "--config-dir", str(home / "config"),
                 "--cache-dir", str(home / "cache"), "--quiet"],
                stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
        wire_before = 0.0
        if trusted:
            _wait_until_trusted(db_path, volunteers, timeout=900)
            api.pause(campaign["id"])
            wire_before = _wire_bytes(api)
            campaign = api.post_campaign(measured)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            row = api.campaign(campaign["id"])
            if row["status"] == "finished":
                break
            time.sleep(0.5)
        else:
            raise TimeoutError("the end-to-end run did not finish in 30 minutes")
        history = api.rounds(campaign["id"])
        elapsed = history[-1]["closed_at"] - history[0]["opened_at"]
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            accepted, late = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(s.staleness > 0), 0) FROM submissions s JOIN units u "
                "ON u.id = s.unit_id WHERE s.status = 'accepted' AND u.campaign_id = ?",
                (campaign["id"],),
            ).fetchone()
        finally:
            db.close()
        units = rounds * volunteers
        wire = _wire_bytes(api) - wire_before
        versions = api.request("GET", f"/api/campaigns/{campaign['id']}/versions")["versions"]
        deltas = [v["delta_bytes"] for v in versions if v["delta_bytes"] is not None]
        moments = [v["moments_bytes"] for v in versions if v["moments_bytes"] is not None]
        return {
            "checkpoint_bytes": versions[-1]["checkpoint_bytes"],
            "delta_bytes": sum(deltas) / max(1, len(deltas)),
            # The shared second moment: a unit downloads its version's and uploads its own, of one size.
            "moments_bytes": sum(moments) / max(1, len(moments)),
            # A unit's data slice: H steps of 8×128 tokens plus one, as uint16.
            "data_bytes_per_unit": 2 * (steps * 8 * 128 + 1),
            "volunteers": volunteers,
            "threads": threads,
            "tokens": row["tokens_trained"],
            "seconds": elapsed,
            "tokens_per_s": row["tokens_trained"] / elapsed,
            "rounds": len(history),
            "accepted": accepted,
            "late": late,
            "wire_bytes_per_unit": wire / units,
            "update_bytes_per_unit": api.metric("commonweights_update_bytes_received_total") / units,
        }
    finally:
        for process in reversed(running):
            stop(process)


def _wire_bytes(api: Any) -> float:
    return float(api.metric("commonweights_ws_bytes_received_total") + api.metric("commonweights_ws_bytes_sent_total"))


def _wait_until_trusted(db_path: Path, volunteers: int, *, timeout: float) -> None:
    """Poll the coordinator's store (read-only) until `volunteers` volunteers are trusted."""
    tracker = TrustTracker()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            states = [
                TrustState(int(c), int(e)) for c, e in db.execute("SELECT consecutive_valid, errors FROM volunteers")
            ]
        finally:
            db.close()
        if sum(tracker.trusted(state) for state in states) >= volunteers:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the volunteers were not all trusted after {timeout:.0f} s of warm-up units")


def in_process(dataset_path: Path, units: int, steps: int, threads: int) -> dict[str, float]:
    """The same amount of training in one process: `units` units back to back, no network."""
    dataset = TokenDataset.open(dataset_path)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = build_model(preset("tiny", vocab_size=dataset.vocab_size, max_seq_len=128), seed=0)
        config = InnerConfig(steps=steps, batch_size=8, seq_len=128, warmup_steps=0)
        began = time.perf_counter()
        tokens = 0
        for u in range(units):
            result = InnerLoop(model, config, global_step=u * steps).run(
                # Consecutive slices like the coordinator's cursor, wrapping into a new epoch at the end.
                dataset.train_slice(
                    (u * (config.tokens_needed - 1)) % (dataset.num_train_tokens - config.tokens_needed),
                    config.tokens_needed,
                )
            )
            tokens += result.tokens
        elapsed = time.perf_counter() - began
    finally:
        torch.set_num_threads(previous)
    return {"tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


# 3: ingestion ----------------------------------------------------------------------------------------


def honest_update(
    dataset_path: Path,
    coordinator: LocalCoordinator,
    unit: WorkUnit,
    *,
    preset_name: str = "small",
    blobs_url: str = "",
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One real unit of training from the campaign's θ_0, used as the template of every submission.
    `blobs_url` is the coordinator's `--blobs` ("": its data dir's folder)."""
    dataset = TokenDataset.open(dataset_path)
    config = preset(preset_name, vocab_size=dataset.vocab_size, max_seq_len=unit.recipe.seq_len)
    model = build_model(config)
    blobs = open_blobs(blobs_url, coordinator.data_dir)
    model.load_state_dict(load_weights(blobs.get(unit.checkpoint.sha256)), strict=False)
    assert unit.data is not None, "bench system runs campaigns on the coordinator's data"
    data = blobs.get(unit.data.sha256)
    tokens = np.frombuffer(data, dtype="<u2" if unit.data_dtype == "uint16" else "<u4").astype(np.int64)
    recipe = unit.recipe
    inner = InnerConfig(steps=recipe.steps, batch_size=recipe.batch_size, seq_len=recipe.seq_len, warmup_steps=0)
    result = InnerLoop(model, inner, global_step=0).run(tokens)
    return result.delta, result.losses


def noisy_copies(delta: dict[str, torch.Tensor], codec: CodecConfig, count: int, seed: int) -> list[bytes]:
    """Distinct but honest-looking encoded updates: `delta` plus 2% noise each."""
    rng = np.random.default_rng(seed)
    return [
        encode({n: t + 0.02 * t.std() * torch.from_numpy(rng.standard_normal(t.shape, dtype=np.float32))
                for n, t in delta.items()}, codec)
        for _ in range(count)
    ]  # fmt: skip


async def submit(ws: Any, unit: WorkUnit, payload: bytes, metrics: TrainMetrics) -> Result:
    """Send one update for `unit` and wait for its result (other frames are skipped)."""
    await ws.send(
        encode_frame(
            Submit(
                unit_id=unit.unit_id,
                lease_id=unit.lease_id,
                update=payload,
                update_sha256=hashlib.sha256(payload).hexdigest(),
                metrics=metrics,
            )
        )
    )
    while True:
        answer = decode_frame(await ws.recv(), direction="to_client")
        if isinstance(answer, Result):
            return answer


def hello(name: str, *, codecs: tuple[str, ...] = ("int8",)) -> Hello:
    return Hello(
        protocol_version=PROTOCOL_VERSION, client_version="bench", token=None, name=name,
        capabilities=Capabilities(
            devices=(Device(kind="cpu", name="bench", memory_bytes=16 << 30),), memory_bytes=16 << 30, threads=1,
            codecs=codecs, platform="bench", runtimes=("torch",), unit_kinds=("train",),
        ),
    )  # fmt: skip


async def ingest(
    coordinator: LocalCoordinator, dataset: Path, clients: int, updates: int, *, blobs_url: str = ""
) -> dict[str, float]:
    import websockets

    url = coordinator.base.replace("http", "ws") + "/ws"
    per_client = max(1, updates // clients)
    limit = 80 << 20

    async def connect(name: str) -> Any:
        ws = await websockets.connect(url, max_size=limit, compression=None)
        await ws.send(encode_frame(hello(name)))
        await ws.recv()
        return ws

    async def lease(ws: Any) -> WorkUnit:
        while True:
            await ws.send(encode_frame(RequestWork()))
            answer = decode_frame(await ws.recv(), direction="to_client")
            if isinstance(answer, WorkUnit):
                return answer
            await asyncio.sleep(0.05)

    sockets = [await connect(f"bench-{i}") for i in range(clients)]
    first = await lease(sockets[0])
    delta, losses = await asyncio.to_thread(honest_update, dataset, coordinator, first, blobs_url=blobs_url)
    payloads = noisy_copies(delta, CodecConfig.from_dict(dict(first.codec)), min(8, updates), seed=0)
    metrics = TrainMetrics(
        losses=tuple(losses),
        tokens=first.recipe.tokens_needed - 1,
        seconds=1.0,
        device="cpu",
        device_name="bench",
        runtime="torch",
    )
    accepted = rejected = 0
    sent_bytes = 0

    async def client(index: int, ws: Any, unit: WorkUnit | None) -> None:
        nonlocal accepted, rejected, sent_bytes
        for k in range(per_client):
            unit = unit or await lease(ws)
            payload = payloads[(index + k) % len(payloads)]
            answer = await submit(ws, unit, payload, metrics)
            sent_bytes += len(payload)
            if answer.status == "accepted":
                accepted += 1
            else:
                rejected += 1
            unit = None

    began = time.perf_counter()
    await asyncio.gather(*(client(i, ws, first if i == 0 else None) for i, ws in enumerate(sockets)))
    elapsed = time.perf_counter() - began
    for ws in sockets:
        await ws.close()
    return {
        "clients": clients,
        "updates": accepted + rejected,
        "accepted": accepted,
        "rejected": rejected,
        "update_mb": len(payloads[0]) / 1e6,
        "seconds": elapsed,
        "mb_per_s": sent_bytes / elapsed / 1e6,
        "updates_per_s": (accepted + rejected) / elapsed,
    }


def run_ingestion(dataset: Path, work: Path, clients: int, updates: int) -> dict[str, float]:
    coordinator = start(dataset, work, "ingest")
    try:
        campaign_spec = spec("ingest", model="small", units=updates + clients, rounds=1, steps=2, batch=4, seq=128)
        campaign_spec["rounds"]["min_accepted"] = updates + clients
        coordinator.api.post_campaign(campaign_spec)
        result = asyncio.run(ingest(coordinator, dataset, clients, updates))
        result["parameters"] = sum(
            p.numel()
            for p in build_model(
                preset("small", vocab_size=TokenDataset.open(dataset).vocab_size), device="meta"
            ).parameters()
        )
        return result
    finally:
        stop(coordinator.process)


def run_bench_system(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    counts = [int(v) for v in args.volunteers.split(",") if v]
    dataset = ensure_default_dataset(progress=True)
    work = Path(tempfile.mkdtemp(prefix="commonweights-bench-"))
    rows: list[list[str]] = []
    results: dict[str, Any] = {"end_to_end": [], "ingestion": None}
    codecs = [c for c in args.download_codec.split(",") if c]
    local_by_count: dict[int, dict[str, float]] = {}
    for codec in codecs:
        for n in counts:
            console.print(
                f"end to end with {n} volunteer(s), {codec} deltas, {args.rounds} rounds of H={args.inner_steps} …"
            )
            system = end_to_end(dataset, work, n, args.rounds, args.inner_steps, codec)
            if n not in local_by_count:  # the same training in one process: the codec doesn't enter it
                local_by_count[n] = in_process(dataset, n * args.rounds, args.inner_steps, threads=os.cpu_count() or 2)
            local = local_by_count[n]
            ratio = local["tokens_per_s"] / system["tokens_per_s"]
            results["end_to_end"].append({"system": system, "in_process": local, "overhead": ratio, "codec": codec})
            update = system["update_bytes_per_unit"]
            # Once a volunteer holds a version, a unit moves one delta and one moments frame down, and one
            # update and one moments frame up.
            steady = (update + system["delta_bytes"] + 2 * system["moments_bytes"]) / update
            rows.append([
                str(n), str(int(system["threads"])), codec, f"{system['tokens']:,}", f"{system['tokens_per_s']:,.0f}",
                f"{local['tokens_per_s']:,.0f}", f"{100 * (ratio - 1):+.1f}%",
                f"{system['wire_bytes_per_unit'] / 1e6:.2f} MB", f"{update / 1e6:.3f} MB",
                f"{system['data_bytes_per_unit'] / 1e6:.3f} MB",
                f"{system['delta_bytes'] / 1e6:.3f} MB of {system['checkpoint_bytes'] / 1e6:.2f} MB",
                f"{system['moments_bytes'] / 1e6:.3f} MB",
                f"{steady:.2f}× ({'met' if steady <= WIRE_TARGET else 'missed'})",
            ])  # fmt: skip
            console.print(rows[-1])
    console.print(f"ingestion: {args.ingest_clients} clients, {args.ingest_updates} updates of the small preset …")
    ingestion = run_ingestion(dataset, work, args.ingest_clients, args.ingest_updates)
    results["ingestion"] = ingestion
    needed = TARGET_VOLUNTEERS * ingestion["update_mb"] / TARGET_PERIOD_S
    console.print(ingestion)
    e2e_table = markdown_table(
        ["volunteers", "threads each", "download codec", "tokens", "system tokens/s", "in-process tokens/s",
         "overhead", "wire bytes / unit", "update bytes / unit", "data slice / unit", "delta / version",
         "moments / version", f"(update + delta + 2 × moments) ÷ update, target ≤ {WIRE_TARGET}×"],
        rows,
    )  # fmt: skip
    ingest_table = markdown_table(
        ["clients", "updates", "accepted", "update size", "seconds", "MB/s ingested", "updates/s",
         f"MB/s needed for {TARGET_VOLUNTEERS:,} volunteers / {TARGET_PERIOD_S / 60:.0f} min", "headroom"],
        [[
            str(ingestion["clients"]), str(ingestion["updates"]), str(ingestion["accepted"]),
            f"{ingestion['update_mb']:.2f} MB", f"{ingestion['seconds']:.1f}", f"{ingestion['mb_per_s']:.1f}",
            f"{ingestion['updates_per_s']:.1f}", f"{needed:.1f}", f"{ingestion['mb_per_s'] / needed:.1f}×",
        ]],
    )  # fmt: skip
    body = "\n\n".join([
        "## System overhead and ingestion (`commonweights bench system`)",
        machine_line(),
        f"End to end: a real coordinator process and N real volunteer processes on loopback train the `tiny` preset "
        f"for {args.rounds} rounds of H={args.inner_steps} steps of 8×128 tokens (int8 updates); tokens/s is measured "
        "from the first round's opening to the last round's close. In-process: the same number of units back to back "
        "in one process with all CPU threads. Overhead = in-process tokens/s ÷ system tokens/s − 1. Wire bytes count "
        "every WebSocket frame both ways, averaged over all units: each volunteer's first unit downloads the whole "
        "checkpoint, each later one the delta of the new version in the campaign's download codec (protocol.md, "
        "checkpoint deltas) and the version's shared second moment (protocol.md, shared moments), plus the unit's "
        "data slice. The last column is the model's traffic per unit once a volunteer holds a version: one delta and "
        "one moments frame down, one update and one moments frame up, against the update alone.",
        e2e_table,
        f"Ingestion: {ingestion['clients']} simulated volunteers on loopback submit int8 updates of the `small` preset "
        f"({ingestion['parameters'] / 1e6:.1f}M parameters) to a coordinator process, each waiting for its ack; the "
        "coordinator decodes, validates, writes the update durably (fsync) and accumulates it before acking.",
        ingest_table,
    ])  # fmt: skip
    write_section(args.output, "system", body)
    console.print(e2e_table)
    console.print(ingest_table)
    console.print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0
