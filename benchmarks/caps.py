"""`commonweights bench caps`: does the CPU-time cap hold? A real PyTorch training process (the `tiny`
model, one thread, AdamW on the embedded corpus) runs uncapped and then held to each cap by the tray
app's duty cycle (`volunteer_app.duty`) for a minute; its CPU share is read from /proc.

    commonweights bench caps --caps 25,50,75 --seconds 60

The share is the process's CPU seconds over wall seconds, relative to the uncapped run's share measured in
the same session (so a busy machine shifts every row alike). Target: within ±10 points of the cap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import machine_line, markdown_table, write_section
from volunteer_app.duty import DutyCycle

__all__ = ["run_bench_caps", "train_forever"]

TOLERANCE = 10.0  # percentage points of the cap


def train_forever() -> None:
    """The training load: steps of the `tiny` model on the embedded corpus until killed."""
    import numpy as np
    import torch

    from training.data import TokenDataset, ensure_default_dataset
    from training.model import build_model, preset
    from volunteer_app.tray.child import die_with_parent

    die_with_parent()  # a killed bench leaves no trainer behind, stopped or running
    torch.set_num_threads(1)
    dataset = TokenDataset.open(ensure_default_dataset(progress=False))
    model = build_model(preset("tiny", vocab_size=dataset.vocab_size, max_seq_len=64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.from_numpy(np.asarray(dataset.train_slice(0, 64 * 4 * 64 + 1), dtype=np.int64))
    batches = tokens[: 64 * 4 * 64].view(64, 4, 64)
    step = 0
    while True:
        batch = batches[step % 64]
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        step += 1


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(cap: int, seconds: float, warmup_s: float) -> float:
    """The training process's CPU share (percent of one core) over `seconds`, held to `cap`."""
    process = subprocess.Popen([sys.executable, "-c", "from benchmarks.caps import train_forever; train_forever()"])
    cycle = DutyCycle(process.pid, cap)
    try:
        time.sleep(warmup_s)  # imports and the model's construction are not training
        cycle.start()
        began_wall, began_cpu = time.monotonic(), _cpu_seconds(process.pid)
        time.sleep(seconds)
        if process.poll() is not None:
            raise RuntimeError(f"the training process exited with {process.returncode} while measured")
        share = (_cpu_seconds(process.pid) - began_cpu) / (time.monotonic() - began_wall)
        return 100 * share
    finally:
        cycle.stop()
        process.kill()
        process.wait()


def run_bench_caps(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if not DutyCycle.supported() or not Path("/proc/self/stat").exists():
        console.print("can't run: the duty cycle needs POSIX signals and this bench reads /proc (Linux)")
        return 2
    caps = [int(c) for c in args.caps.split(",")]
    console.print(f"uncapped, {args.seconds:.0f} s …")
    reference = measure(100, args.seconds, args.warmup)
    rows, results = [], {"reference_share": reference, "caps": {}}
    for cap in caps:
        console.print(f"cap {cap} %, {args.seconds:.0f} s …")
        share = measure(cap, args.seconds, args.warmup)
        relative = 100 * share / reference
        met = abs(relative - cap) <= TOLERANCE
        results["caps"][str(cap)] = {"share": share, "relative": relative}  # type: ignore[index]
        rows.append(
            [
                f"{cap} %",
                f"{share:.1f} %",
                f"{relative:.1f} %",
                f"{relative - cap:+.1f} points: {'met' if met else 'missed'} (±{TOLERANCE:.0f})",
            ]
        )
    table = markdown_table(
        ["cap", "CPU share (of one core)", "share relative to uncapped", "against the cap"],
        [["100 % (uncapped)", f"{reference:.1f} %", "100 %", "reference"], *rows],
    )
    body = "\n\n".join(
        [
            "## The CPU-time cap (`commonweights bench caps`)",
            machine_line(),
            f"A real training process (the `tiny` model, one thread, AdamW on the embedded corpus) for "
            f"{args.seconds:.0f} s at each cap, held by the app's duty cycle (stopped for the rest of every "
            "second with SIGSTOP/SIGCONT, as BOINC does); CPU seconds read from /proc. The share is relative to "
            "the uncapped run of the same session. Target: within ±10 points of the cap over the minute.",
            table,
        ]
    )
    write_section(args.output, "caps", body)
    console.print(table)
    console.print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0
