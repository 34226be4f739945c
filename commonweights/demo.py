"""`commonweights demo`: a coordinator and several volunteers training a small model on this machine.

Everything is real and runs as separate processes, the way users run them: the coordinator
(`commonweights coordinator serve`), a campaign posted over the REST API, and N headless volunteers
(`commonweights volunteer run`) talking WebSockets on loopback. The demo watches the REST API and
/metrics, shows a live table, and ends with a summary once the campaign has spent its budget.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from commonweights.export import export_from_coordinator
from coordinator.client import ApiError, CoordinatorClient
from coordinator.local import free_port, start_coordinator, stop

__all__ = ["add_demo", "demo_spec", "run_demo"]

Subparsers = Any


def add_demo(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run a coordinator and volunteers on this machine, training on the embedded corpus",
        description=(
            "Prepare the embedded corpus if needed, start a coordinator and several volunteer processes on "
            "loopback, post a campaign, train for a bounded number of rounds with a live table, and print a summary."
        ),
    )
    parser.add_argument("--volunteers", type=int, default=3, help="volunteer processes to start")
    parser.add_argument("--rounds", type=int, default=8, help="rounds to train (the campaign's budget)")
    parser.add_argument("--inner-steps", type=int, default=30, metavar="H")
    parser.add_argument("--model", default="tiny", help="model preset")
    parser.add_argument("--codec", default="int8")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    parser.add_argument("--data-dir", type=Path, default=None, help="coordinator state (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    parser.add_argument("--keep-running", action="store_true", help="leave the coordinator up at the end")
    parser.set_defaults(handler=run_demo)


def demo_spec(args: argparse.Namespace) -> dict[str, Any]:
    batch, seq = 8, 128
    units = args.volunteers
    return {
        "name": "demo",
        "description": "The local demo: a tiny GPT learning Python from this machine's standard library.",
        "model": args.model,
        "dataset": "stdlib",
        "codec": args.codec,
        "token_budget": args.rounds * units * args.inner_steps * batch * seq,
        "inner": {"steps": args.inner_steps, "batch_size": batch, "seq_len": seq, "lr": 3e-3, "warmup_steps": 10},
        # Plain averaging: over a handful of rounds it beats DiLoCo's Nesterov momentum (docs/benchmarks.md).
        "outer": {"optimizer": "average"},
        "rounds": {"units_per_round": units, "min_accepted": units, "deadline_s": 300, "lease_s": 120},
        # The demo's volunteers are this machine's own processes: no replication, and no measuring of
        # their updates with the model (tests/integration/test_attacks.py shows those at work).
        "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
    }


@dataclass
class Snapshot:
    campaign: dict[str, Any]
    versions: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    bytes_in: float


def snapshot(api: CoordinatorClient, campaign_id: int) -> Snapshot:
    return Snapshot(
        api.campaign(campaign_id),
        api.versions(campaign_id),
        api.rounds(campaign_id),
        api.metric("commonweights_update_bytes_received_total"),
    )


def render(snap: Snapshot, started: float) -> Any:
    from rich.table import Table

    campaign = snap.campaign
    table = Table(title=f"campaign {campaign['name']}: {campaign['status']}, {time.monotonic() - started:.0f} s")
    for column in ("round", "closed by", "version", "holdout loss", "tokens", "updates in"):
        table.add_column(column, justify="right")
    closed_by = {r["number"]: r["close_reason"] or "open" for r in snap.rounds}
    for v in snap.versions:
        loss = "…" if v["holdout_loss"] is None else f"{v['holdout_loss']:.4f}"
        number = v["version"]  # round n publishes version n; version 0 is the initial model
        table.add_row(
            str(number) if number else "—", closed_by.get(number, "—") if number else "initial",
            str(number), loss, f"{v['tokens']:,}", str(v["updates"]),
        )  # fmt: skip
    rejected = sum(campaign.get("rejections", {}).values())
    table.caption = (
        f"accepted {campaign.get('accepted', 0)}, rejected {rejected}, update bytes received "
        f"{snap.bytes_in / 1e6:.2f} MB, progress {100 * campaign['progress']:.0f}%"
    )
    return table


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            stop(process)


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from training.data import ensure_default_dataset

    console = Console()
    if args.volunteers < 1 or args.rounds < 1:
        console.print("[red]--volunteers and --rounds must be at least 1[/red]")
        return 2
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="commonweights-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    console.print("[bold]1/4[/bold] preparing the embedded corpus (this Python's standard library) …")
    dataset = ensure_default_dataset(progress=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    python = [sys.executable, "-m", "commonweights"]
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    with processes() as running:
        console.print(f"[bold]2/4[/bold] starting the coordinator at [link={base}]{base}[/link] (state in {data_dir})")
        local = start_coordinator(data_dir, datasets={"stdlib": dataset}, port=port, log=logs / "coordinator.log")
        coordinator = local.process
        running.append(coordinator)
        api = local.api
        try:
            campaign = api.post_campaign(demo_spec(args))
        except ApiError as error:
            console.print(f"[red]the coordinator refused the campaign:[/red] {json.dumps(error.body)}")
            return 1
        campaign_id = campaign["id"]
        console.print(
            f"[bold]3/4[/bold] posted campaign #{campaign_id} ({args.model}, {campaign['rounds_total']} rounds of "
            f"{args.volunteers} units, H={args.inner_steps}, codec {args.codec}); starting {args.volunteers} volunteers"
        )
        threads = max(1, (os.cpu_count() or 2) // args.volunteers)
        for i in range(args.volunteers):
            home = data_dir / f"volunteer-{i + 1}"
            log = (logs / f"volunteer-{i + 1}.log").open("wb")
            running.append(subprocess.Popen(
                [*python, "volunteer", "run", "--coordinator", f"ws://127.0.0.1:{port}/ws", "--name",
                 f"demo-volunteer-{i + 1}", "--threads", str(threads), "--config-dir", str(home / "config"),
                 "--cache-dir", str(home / "cache"), "--quiet"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            ))  # fmt: skip
        console.print(f"[bold]4/4[/bold] training; dashboard at {base}/ (logs in {logs})")
        started = time.monotonic()
        snap = snapshot(api, campaign_id)
        with Live(render(snap, started), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                snap = snapshot(api, campaign_id)
                live.update(render(snap, started))
                evaluated = all(v["holdout_loss"] is not None for v in snap.versions)
                if snap.campaign["status"] == "finished" and evaluated:
                    break
                if time.monotonic() - started > args.timeout:
                    console.print(f"[red]timed out after {args.timeout:.0f} s[/red]")
                    return 1
                dead = [p for p in running[1:] if p.poll() not in (None, 0)]
                if coordinator.poll() is not None or len(dead) == len(running) - 1:
                    console.print(f"[red]processes exited early; see {logs}[/red]")
                    return 1
        model = data_dir / "model"
        try:
            export_from_coordinator(api, campaign_id, "hf", model, console=console)
            console.print(
                f"the trained model: {model} (a Hugging Face folder with its model card); try it with "
                f"[bold]commonweights generate --checkpoint {model} --prompt 'def '[/bold]"
            )
        except (ApiError, OSError, ValueError) as error:  # the demo trained; the export is a bonus
            console.print(f"[yellow]the model could not be exported: {error}[/yellow]")
        if args.keep_running:
            console.print(f"coordinator still running at {base} (pid {coordinator.pid}); Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                coordinator.wait()
    return summarize(console, snap, started)


def summarize(console: Any, snap: Snapshot, started: float) -> int:
    losses = [v["holdout_loss"] for v in snap.versions]
    first, last = losses[0], losses[-1]
    rejected = sum(snap.campaign.get("rejections", {}).values())
    console.print(
        f"\n[bold]done[/bold] in {time.monotonic() - started:.0f} s: {len(losses) - 1} versions, "
        f"{snap.campaign['tokens_trained']:,} tokens, {snap.campaign.get('accepted', 0)} updates accepted, "
        f"{rejected} rejected, {snap.bytes_in / 1e6:.2f} MB of updates received.\n"
        f"holdout loss {first:.4f} → {last:.4f} ({'fell' if last < first else 'did NOT fall'})"
    )
    return 0 if last < first else 1
