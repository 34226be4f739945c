"""`commonweights bench diloco`: DiLoCo against synchronous data-parallel at equal tokens.

Every configuration trains the same model from the same seed on the same K data streams for the
same number of tokens; only how the K workers communicate differs. The table reports holdout loss,
loss relative to data-parallel, bytes each worker uploaded, and the communication reduction.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence

import torch

from benchmarks.codecs import format_codec_table, measure_codecs
from benchmarks.report import machine_line, markdown_table, write_section
from protocol.codecs import CodecConfig
from training.inner import pick_device
from training.progress import progress_bar
from training.simulate import SimConfig, SimResult, config_from_args, load_dataset, require_holdout, simulate

__all__ = ["bench_configs", "format_diloco_table", "run_bench_command"]


def parse_configs(text: str) -> list[tuple[int, str, str | None]]:
    """`50:int8,100:dct:average` → [(50, "int8", None), (100, "dct", "average")]."""
    out: list[tuple[int, str, str | None]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        fields = item.split(":")
        if len(fields) not in (2, 3) or not fields[0].isdigit() or int(fields[0]) <= 0:
            raise ValueError(f"a configuration is H:codec[:outer], e.g. 50:int8 or 100:dct:average; got {item!r}")
        out.append((int(fields[0]), fields[1], fields[2] if len(fields) == 3 else None))
    if not out:
        raise ValueError("give at least one DiLoCo configuration")
    return out


def bench_configs(base: SimConfig, diloco: Sequence[tuple[int, str, str | None]]) -> list[SimConfig]:
    """Data-parallel first (the reference), then a single worker, then each DiLoCo configuration."""
    configs = [dataclasses.replace(base, mode="data_parallel"), dataclasses.replace(base, mode="single")]
    for h, codec, outer in diloco:
        CodecConfig.from_name(codec)
        changes: dict[str, object] = {"mode": "diloco", "inner_steps": h, "codec": codec}
        if outer is not None:
            changes |= {"outer": outer, "outer_lr": None}
        configs.append(dataclasses.replace(base, **changes))  # type: ignore[arg-type]
    return configs


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_diloco_table(results: Sequence[SimResult]) -> str:
    reference = results[0].final_holdout_loss
    rows = []
    for r in results:
        config = r.config
        rows.append(
            [
                r.label,
                str(config["inner_steps"]) if config["mode"] == "diloco" else "1",
                str(config["codec"])
                if config["mode"] == "diloco"
                else ("fp32" if config["mode"] == "data_parallel" else "—"),
                str(r.outer_steps) if config["mode"] == "diloco" else "—",
                f"{r.final_holdout_loss:.4f}",
                f"{100 * (r.final_holdout_loss / reference - 1):+.2f}%",
                _human_bytes(r.bytes_per_worker),
                "∞ (no upload)" if math.isinf(r.reduction) else f"{r.reduction:,.0f}×",
                f"{r.seconds:.0f}",
            ]
        )
    header = [
        "configuration",
        "H",
        "codec",
        "outer steps",
        "holdout loss",
        "vs data-parallel",
        "uploaded / worker",
        "reduction",
        "seconds",
    ]
    return markdown_table(header, rows)


def run_bench_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        base = config_from_args(args, mode="diloco")
        configs = bench_configs(base, parse_configs(args.configs))
        device = pick_device(args.device)
        dataset = load_dataset(args.data, quiet=args.quiet)
        for config in configs:
            require_holdout(dataset, config)
    except (ValueError, OSError) as error:
        print(f"commonweights bench diloco: {error}", file=sys.stderr)
        return 2

    results: list[SimResult] = []
    for i, config in enumerate(configs, 1):
        with progress_bar(f"[{i}/{len(configs)}] {config.label}", quiet=args.quiet, console=console) as update:
            results.append(simulate(config, dataset, device=device, on_progress=update))
        console.print(f"  holdout loss {results[-1].final_holdout_loss:.4f}, {results[-1].seconds:.0f} s")

    console.print("measuring codec throughput …")
    codec_rows = measure_codecs(numel=args.codec_params)
    diloco_table = format_diloco_table(results)
    codec_table = format_codec_table(codec_rows)
    console.print(diloco_table)
    console.print(codec_table)

    best = _best_within(results, tolerance=0.03)
    if best is not None:
        gap = 100 * (best.final_holdout_loss / results[0].final_holdout_loss - 1)
        verdict = (
            f"Best reduction with holdout loss within 3% of data-parallel: **{best.label}**, "
            f"{best.reduction:,.0f}× fewer bytes, {gap:+.2f}% loss."
        )
    else:
        verdict = "No DiLoCo configuration came within 3% of data-parallel's holdout loss."
    body = "\n\n".join(
        [
            "## DiLoCo vs data-parallel (`commonweights bench diloco`)",
            machine_line(),
            f"Model `{base.model}`, {base.workers} workers, {base.steps} steps per worker of "
            f"{base.batch_size}×{base.seq_len} tokens ({results[0].tokens:,} tokens in all, "
            f"{results[0].epochs:.2f} epochs of each worker's share), inner AdamW lr {base.lr} with "
            f"{base.warmup} warmup steps and cosine decay, outer optimizer as each row names it, seed {base.seed}; "
            "dataset of "
            f"{dataset.num_train_tokens:,} training tokens (vocabulary {dataset.vocab_size}), holdout loss on "
            f"{min(base.eval_tokens, dataset.num_holdout_tokens):,} held-out tokens. Data-parallel uploads an fp32 "
            "gradient every step; the reduction is its bytes divided by the configuration's.",
            diloco_table,
            verdict,
            "### Codecs",
            f"Throughput on a {args.codec_params / 1e6:g}M-parameter synthetic update (MB/s of fp32 input); "
            "worst-case error is the largest absolute difference after a round trip, next to the bound the "
            "codec states.",
            codec_table,
        ]
    )
    write_section(args.output, "diloco", body)
    console.print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "results": [r.to_dict() for r in results],
                    "codecs": [dataclasses.asdict(c) for c in codec_rows],
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def _best_within(results: Sequence[SimResult], *, tolerance: float) -> SimResult | None:
    reference = results[0].final_holdout_loss
    candidates = [
        r for r in results if r.config["mode"] == "diloco" and r.final_holdout_loss <= reference * (1 + tolerance)
    ]
    return max(candidates, key=lambda r: r.reduction, default=None)
