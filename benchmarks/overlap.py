"""`commonweights bench overlap`: what overlapped rounds (`rounds.overlap`) buy when one volunteer is slow.

A real coordinator and real volunteer processes on loopback; one volunteer trains at a quarter of the
time (`--cpu-percent 25`, a slow or busy machine). Without overlap the others finish their units and
wait for the slow one's before the round closes; with it they go on training from the same version,
their extra updates close the round, and the slow unit's update arrives late (down-weighted). Reports
tokens/s of the same token budget and how many accepted updates were late; what late updates cost in
loss per token is the simulator's measurement (`bench diloco`, the `late` option).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.report import machine_line, markdown_table, write_section
from benchmarks.system import end_to_end
from training.data import ensure_default_dataset

__all__ = ["run_bench_overlap"]


def run_bench_overlap(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    dataset = args.dataset or ensure_default_dataset(progress=True)
    work = Path(tempfile.mkdtemp(prefix="commonweights-bench-overlap-"))
    overlaps = [float(v) for v in args.overlap.split(",") if v]
    slow = [args.slow_percent] + [100] * (args.volunteers - 1)
    rows, baseline, results = [], None, []
    for overlap in overlaps:
        console.print(
            f"end to end: {args.volunteers} volunteers (one at {args.slow_percent}% CPU), overlap {overlap:g}, "
            f"{args.rounds} rounds' tokens of H={args.inner_steps} …"
        )
        result = end_to_end(
            dataset,
            work,
            args.volunteers,
            args.rounds,
            args.inner_steps,
            overlap=overlap,
            cpu_percent=slow,
            trusted=not args.new_volunteers,
        )
        baseline = baseline or result["tokens_per_s"]
        results.append({"overlap": overlap, **result})
        rows.append([
            f"{overlap:g}", f"{result['tokens']:,}", str(int(result["rounds"])), f"{result['seconds']:.0f}",
            f"{result['tokens_per_s']:,.0f}", f"{result['tokens_per_s'] / baseline:.2f}×",
            f"{int(result['late'])} of {int(result['accepted'])}",
        ])  # fmt: skip
        console.print(rows[-1])
    table = markdown_table(
        ["rounds.overlap", "tokens", "rounds", "seconds", "tokens/s", "vs no overlap", "accepted updates late"], rows
    )
    body = "\n\n".join([
        "## Overlapped rounds with a slow volunteer (`commonweights bench overlap`)",
        machine_line(),
        f"A real coordinator and {args.volunteers} real volunteer processes on loopback train the `tiny` preset "
        f"(units of H={args.inner_steps} steps of 8×128 tokens, int8 updates, {args.volunteers} units a round, all "
        f"needed to close it) for a budget of {args.rounds} rounds' tokens; volunteer 0 trains at "
        f"{args.slow_percent}% of the time (`volunteer run --cpu-percent {args.slow_percent}`). "
        + (
            "The volunteers are new (`--new-volunteers`): units held by volunteers not yet trusted don't count "
            "against a round's quota, so the scheduler overlaps their rounds by itself. "
            if args.new_volunteers
            else "First every volunteer is made trusted, as a project's regular volunteers are: a warm-up campaign "
            "of small units runs until each has enough valid results in a row, then the measured campaign starts. "
        )
        + "tokens/s from the "
        "first round's opening to the last one's close. With `rounds.overlap` the others train extra units from "
        "the same version instead of waiting; the slow unit's update then arrives after its round closed and "
        "counts, down-weighted, in a later one. What late updates cost in holdout loss per token is measured by "
        "`bench diloco` (its `late` option).",
        table,
    ])  # fmt: skip
    write_section(args.output, "overlap", body)
    console.print(table)
    console.print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0
