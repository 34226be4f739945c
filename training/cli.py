"""Subcommands owned by the training core: `data prepare` and `simulate`.

Cheap to import: the handlers import torch and friends only when they run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

Subparsers = Any  # argparse's _SubParsersAction is private; its type is not worth leaking here


def add_data_prepare(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "prepare",
        help="tokenize a corpus into token shards with a holdout split",
        description=(
            "Read .txt, .md, .py and .jsonl files (a `text` field per line), train a tokenizer and "
            "write token shards, a holdout split, the tokenizer and manifest.json. With no SRC the "
            "embedded default corpus is used: this Python's own standard library sources."
        ),
    )
    parser.add_argument("sources", nargs="*", type=Path, metavar="SRC", help="files or folders")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--tokenizer", choices=["bpe", "bytes"], default="bpe")
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size")
    parser.add_argument("--holdout-fraction", type=float, default=0.02, help="share of documents kept for holdout")
    parser.add_argument("--max-bytes", type=int, default=None, help="stop reading the corpus after this many bytes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_data_prepare)


def _run_data_prepare(args: argparse.Namespace) -> int:
    from training.data.cli import run_prepare

    return run_prepare(args)


def add_simulate(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "simulate",
        help="train K simulated DiLoCo workers in one process",
        description=(
            "Train K workers with DiLoCo in one process, each on its own data slices; evaluate "
            "holdout loss after every outer step and print a summary."
        ),
    )
    add_run_arguments(parser)
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write results as JSON")
    parser.set_defaults(handler=_run_simulate)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `simulate` and `bench diloco`."""
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="prepared dataset (default: the embedded corpus, prepared on first use)",
    )
    parser.add_argument("--model", default="tiny", metavar="PRESET", help="model preset")
    parser.add_argument("--workers", type=int, default=4, metavar="K")
    parser.add_argument("--inner-steps", type=int, default=50, metavar="H")
    parser.add_argument("--codec", default="fp32", help="update codec (fp32, fp16, bf16, int8, topk, dct)")
    parser.add_argument("--outer", default="nesterov", choices=["nesterov", "average", "adam"])
    parser.add_argument("--outer-lr", type=float, default=None, help="default: per outer optimizer")
    parser.add_argument("--outer-momentum", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=400, help="inner steps per worker in total")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="inner AdamW peak learning rate")
    parser.add_argument("--warmup", type=int, default=20, help="inner warmup steps")
    parser.add_argument("--eval-tokens", type=int, default=65536, help="holdout tokens per evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--inner-state",
        default="fresh",
        choices=["fresh", "persistent", "volunteer", "shared"],
        help="DiLoCo inner AdamW state: fresh per unit (as deployed), persistent per worker (DiLoCo's paper), "
        "kept by each volunteer across its units, or fresh but seeded with the last round's shared second moment",
    )
    parser.add_argument(
        "--volunteers", type=int, default=0, help="volunteers the units are spread over (default: 2 × workers)"
    )
    parser.add_argument("--late-fraction", type=float, default=0.1, help="share of units that arrive one version late")
    parser.add_argument(
        "--unit-warmup",
        type=float,
        default=0.0,
        help="share of each DiLoCo unit's steps over which its learning rate ramps up (0, as deployed: none)",
    )
    parser.add_argument(
        "--download-codec",
        default="",
        help="volunteers fetch each version as a delta in this codec, with error feedback (default: exact weights)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_simulate(args: argparse.Namespace) -> int:
    from training.simulate import run_simulate_command

    return run_simulate_command(args)


def add_generate(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "generate",
        help="continue a prompt with a trained checkpoint",
        description="Load a checkpoint and its tokenizer and print the model's continuation of a prompt.",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        metavar="PATH",
        help="the weights (.safetensors), or a Hugging Face folder `commonweights export` wrote",
    )
    parser.add_argument(
        "--tokenizer", type=Path, default=None, metavar="FILE", help="tokenizer.json (default: the folder's)"
    )
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--model", default=None, help="the model preset (default: the one of the weights' shape)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens at most")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above: sample")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest tokens only")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    import sys

    from training.checkpoint import CheckpointError
    from training.data import DataError
    from training.data.tokenizer import load_tokenizer
    from training.generate import generate, load_model

    tokenizer_path = args.tokenizer or args.checkpoint / "tokenizer.json"
    if args.tokenizer is None and not args.checkpoint.is_dir():
        print("commonweights generate: a checkpoint file needs --tokenizer FILE", file=sys.stderr)
        return 2
    try:
        model = load_model(args.checkpoint, preset=args.model)
        tokenizer = load_tokenizer(tokenizer_path)
        result = generate(
            model,
            tokenizer,
            args.prompt,
            max_new_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed,
        )
    except (OSError, CheckpointError, DataError, ValueError) as error:
        print(f"commonweights generate: {error}", file=sys.stderr)
        return 2
    print(args.prompt + result.text)
    print(
        f"({len(result.ids)} tokens in {result.seconds:.2f} s, stopped: {result.stopped})",
        file=sys.stderr,
    )
    return 0
