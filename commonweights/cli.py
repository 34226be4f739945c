"""The command tree of `commonweights`.

Each package owns its own subcommands in a `cli` module that is cheap to import (heavy imports
happen inside the handlers), so `commonweights --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks import cli as benchmarks_cli
from commonweights import demo, export
from coordinator import cli as coordinator_cli
from protocol.version import RELEASE_VERSION
from training import cli as training_cli
from volunteer_app import cli as volunteer_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="commonweights",
        description="Volunteer computing for training language models.",
    )
    parser.add_argument("--version", action="version", version=f"commonweights {RELEASE_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="prepare datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    training_cli.add_data_prepare(data_commands)

    training_cli.add_simulate(commands)
    coordinator_cli.add_coordinator(commands)
    coordinator_cli.add_campaign(commands)
    volunteer_cli.add_volunteer(commands)
    demo.add_demo(commands)
    export.add_export(commands)
    training_cli.add_generate(commands)

    bench = commands.add_parser("bench", help="run a benchmark and write docs/benchmarks.md")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    # One line per benchmark; each owns its flags in benchmarks/ (benchmarks/cli.py keeps them cheap to import).
    benchmarks_cli.add_bench_diloco(bench_commands)
    benchmarks_cli.add_bench_codecs(bench_commands)
    benchmarks_cli.add_bench_system(bench_commands)
    benchmarks_cli.add_bench_overlap(bench_commands)
    benchmarks_cli.add_bench_app(bench_commands)
    benchmarks_cli.add_bench_caps(bench_commands)
    benchmarks_cli.add_bench_browser(bench_commands)
    benchmarks_cli.add_bench_installers(bench_commands)
    benchmarks_cli.add_bench_coordinator(bench_commands)
    benchmarks_cli.add_bench_crash(bench_commands)
    benchmarks_cli.add_bench_fuzz(bench_commands)
    benchmarks_cli.add_bench_private(bench_commands)
    benchmarks_cli.add_bench_adversarial(bench_commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code
