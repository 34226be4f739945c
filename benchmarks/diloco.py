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
from pathlib import Path

import torch

from benchmarks.report import machine_line, markdown_table, write_section
from protocol.codecs import CodecConfig
from training.data import TokenDataset, ensure_default_dataset
from training.inner import pick_device
from training.outer import OUTER_DEFAULTS
from training.progress import progress_bar
from training.simulate import (
    INNER_STATES,
    SimConfig,
    SimResult,
    config_from_args,
    load_dataset,
    require_holdout,
    simulate,
)

__all__ = ["bench_configs", "format_diloco_table", "reusable_results", "run_bench_command"]


# key=value options of a configuration, and the SimConfig field each sets.
_OPTIONS = {
    "outer_lr": ("outer_lr", float),
    "momentum": ("outer_momentum", float),
    "lr": ("lr", float),
    "late": ("late_fraction", float),
    "volunteers": ("volunteers", int),
    "download": ("download_codec", str),
    "unit_warmup": ("unit_warmup", float),
}
_CONFIG_SYNTAX = (
    "a configuration is H:codec[:option…], options being an outer optimizer (nesterov, average, adam), an inner "
    f"state ({', '.join(INNER_STATES)}) or key=value with key in {', '.join(_OPTIONS)}; e.g. 50:int8, "
    "100:dct:average, 50:int8:average:persistent:lr=0.002"
)


def parse_configs(text: str) -> list[dict[str, object]]:
    """`50:int8,100:dct:average:persistent` → the SimConfig changes of each DiLoCo configuration.

    An outer optimizer named without `outer_lr=` gets that optimizer's default learning rate.
    """
    out: list[dict[str, object]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        fields = item.split(":")
        if len(fields) < 2 or not fields[0].isdigit() or int(fields[0]) <= 0:
            raise ValueError(f"{_CONFIG_SYNTAX}; got {item!r}")
        CodecConfig.from_name(fields[1])
        changes: dict[str, object] = {"mode": "diloco", "inner_steps": int(fields[0]), "codec": fields[1]}
        for option in fields[2:]:
            key, _, value = option.partition("=")
            if option in OUTER_DEFAULTS:
                changes.setdefault("outer_lr", None)
                changes["outer"] = option
            elif option in INNER_STATES:
                changes["inner_state"] = option
            elif key in _OPTIONS and value:
                field, kind = _OPTIONS[key]
                try:
                    changes[field] = kind(value)
                except ValueError:
                    raise ValueError(f"{_CONFIG_SYNTAX}; {key} needs a number, got {value!r}") from None
            else:
                raise ValueError(f"{_CONFIG_SYNTAX}; got {option!r} in {item!r}")
        out.append(changes)
    if not out:
        raise ValueError("give at least one DiLoCo configuration")
    return out


def bench_configs(base: SimConfig, diloco: Sequence[dict[str, object]]) -> list[SimConfig]:
    """Data-parallel first (the reference), then a single worker, then each DiLoCo configuration."""
    configs = [dataclasses.replace(base, mode="data_parallel"), dataclasses.replace(base, mode="single")]
    configs += [dataclasses.replace(base, **changes) for changes in diloco]  # type: ignore[arg-type]
    return configs


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _download(result: SimResult) -> str:
    """What a unit downloads of the model: a delta's bytes, or the fp32 weights."""
    if result.config["mode"] != "diloco":
        return "—"
    delta = result.extra.get("download_bytes_per_unit")
    if delta is None:
        return f"{_human_bytes(result.parameters * 4)} (fp32 weights)"
    return f"{_human_bytes(delta)} ({result.parameters * 4 / delta:.0f}× less)"


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
                _download(r),
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
        "download / unit",
        "seconds",
    ]
    return markdown_table(header, rows)


def apply_horizon(args: argparse.Namespace) -> None:
    """Fill the flags left out with the horizon's values (`benchmarks.cli.LONG_HORIZON` for long)."""
    from benchmarks.cli import LONG_HORIZON

    preset = LONG_HORIZON if args.horizon == "long" else {}
    for flag, short in args.horizon_defaults.items():
        if getattr(args, flag) is None:
            setattr(args, flag, preset.get(flag, short))


def horizon_dataset(args: argparse.Namespace) -> TokenDataset:
    """`--data`, or the embedded corpus: 6 MB of it for the short horizon, more for the long one."""
    from benchmarks.cli import LONG_HORIZON

    if args.data is not None or args.horizon != "long":
        return load_dataset(args.data, quiet=args.quiet)
    corpus_bytes = LONG_HORIZON["corpus_bytes"]
    assert isinstance(corpus_bytes, int)
    return TokenDataset.open(ensure_default_dataset(max_bytes=corpus_bytes, progress=not args.quiet))


def _config_key(config: SimConfig | dict[str, object]) -> str:
    """A configuration as canonical JSON: equal keys, equal runs (the simulator is seeded)."""
    data = dataclasses.asdict(config) if isinstance(config, SimConfig) else config
    return json.dumps(data, sort_keys=True)


def reusable_results(path: Path) -> dict[str, SimResult]:
    """The results in an earlier run's `--json` file, by configuration (to resume or extend a long run)."""
    raw = json.loads(path.read_text())
    fields = {f.name for f in dataclasses.fields(SimResult)}
    out = {}
    for entry in raw["results"]:
        result = SimResult(**{k: v for k, v in entry.items() if k in fields})
        result.holdout_curve = [(int(t), float(loss)) for t, loss in result.holdout_curve]
        out[_config_key(result.config)] = result
    return out


def run_bench_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    apply_horizon(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        earlier = reusable_results(args.reuse) if args.reuse is not None else {}
    except (ValueError, OSError, KeyError, TypeError) as error:
        print(f"commonweights bench diloco: --reuse {args.reuse}: {error}", file=sys.stderr)
        return 2
    try:
        base = config_from_args(args, mode="diloco")
        configs = bench_configs(base, parse_configs(args.configs))
        device = pick_device(args.device)
        dataset = horizon_dataset(args)
        for config in configs:
            require_holdout(dataset, config)
    except (ValueError, OSError) as error:
        print(f"commonweights bench diloco: {error}", file=sys.stderr)
        return 2

    results: list[SimResult] = []
    for i, config in enumerate(configs, 1):
        found = earlier.get(_config_key(config))
        if found is not None:
            results.append(found)
            console.print(f"[{i}/{len(configs)}] {config.label}: the same configuration's result from {args.reuse}")
            continue
        with progress_bar(f"[{i}/{len(configs)}] {config.label}", quiet=args.quiet, console=console) as update:
            results.append(simulate(config, dataset, device=device, on_progress=update))
        console.print(f"  holdout loss {results[-1].final_holdout_loss:.4f}, {results[-1].seconds:.0f} s")

    diloco_table = format_diloco_table(results)
    console.print(diloco_table)

    verdicts = _target_lines(results)
    horizon = "long horizon, " if args.horizon == "long" else ""
    body = "\n\n".join(
        [
            f"## DiLoCo vs data-parallel ({horizon}`commonweights bench diloco"
            + (" --horizon long`)" if args.horizon == "long" else "`)"),
            machine_line(),
            f"Model `{base.model}`, {base.workers} workers, {base.steps} steps per worker of "
            f"{base.batch_size}×{base.seq_len} tokens ({results[0].tokens:,} tokens in all, "
            f"{results[0].epochs:.2f} epochs of each worker's share), inner AdamW lr {base.lr} with "
            f"{base.warmup} warmup steps and cosine decay, outer optimizer as each row names it, seed {base.seed}; "
            "dataset of "
            f"{dataset.num_train_tokens:,} training tokens (vocabulary {dataset.vocab_size}), holdout loss on "
            f"{min(base.eval_tokens, dataset.num_holdout_tokens):,} held-out tokens. Data-parallel uploads an fp32 "
            "gradient every step; the reduction is its bytes divided by the configuration's.",
            "DiLoCo rows run the deployed algorithm unless their label says otherwise: each round's "
            f"{base.workers} units go to {base.workers} of {base.pool} volunteers drawn at random, every unit "
            "starts a fresh AdamW"
            + (
                f" and ramps its learning rate over its first {base.unit_warmup:.0%} of steps, "
                if base.unit_warmup
                else " (no per-unit warm-up unless the label says so), "
            )
            + "error feedback stays with the volunteer, and "
            f"{base.late_fraction:.0%} of units arrive a version late (down-weighted as the coordinator does). "
            "*persistent AdamW* is DiLoCo as published (worker k keeps its AdamW moments across rounds); "
            "*volunteer AdamW*: each volunteer keeps its moments across the units it trains; *shared AdamW*: every "
            "unit starts a fresh AdamW seeded with the median of the last round's factored second moments "
            "(training/moments.py), which each unit uploads beside its update (counted in the reduction).",
            diloco_table,
            *verdicts,
            "Codec sizes, speeds and errors are in the `commonweights bench codecs` section.",
        ]
    )
    write_section(args.output, "diloco-long" if args.horizon == "long" else "diloco", body)
    console.print(f"wrote {args.output}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"results": [r.to_dict() for r in results]},
                indent=2,
            )
            + "\n"
        )
    return 0


def _target_lines(results: Sequence[SimResult], *, target: float = 2.0) -> list[str]:
    """For each reduction floor (≥ 2000×, ≥ 1000×): the configuration with the lowest loss and its gap."""
    reference = results[0].final_holdout_loss
    lines = []
    for floor in (2000, 1000):
        candidates = [r for r in results if r.config["mode"] == "diloco" and r.reduction >= floor]
        if not candidates:
            lines.append(f"No configuration here reaches {floor:,}× fewer bytes than data-parallel.")
            continue
        best = min(candidates, key=lambda r: r.final_holdout_loss)
        gap = 100 * (best.final_holdout_loss / reference - 1)
        verdict = "met" if gap <= target else "missed"
        lines.append(
            f"Best at ≥ {floor:,}×: **{best.label}**, {best.reduction:,.0f}× fewer bytes, holdout loss "
            f"{gap:+.2f}% against data-parallel; target ≤ {target:g}%: {verdict}."
        )
    return lines
