"""The `commonweights bench …` subcommands: `bench diloco`, `bench system`, `bench app`, `bench installers`, ….

Cheap to import: each handler imports its benchmark (and torch, the server, Qt) only when it runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from training.cli import add_run_arguments
from volunteer_app.cli import positive_int

Subparsers = Any  # argparse's _SubParsersAction is private

# Sparse codecs pair with plain averaging: their error-feedback residual already carries the
# momentum that Nesterov would add on top (measured: Nesterov + top-k/DCT trains markedly worse).
DEFAULT_DILOCO_CONFIGS = "50:fp32,50:int8,50:dct:average,100:dct:average,50:topk:average"

# `bench diloco --horizon long`: 4 workers × 2,500 steps of 4×64 tokens (10,000 inner steps, 2.56M tokens)
# on up to 24 MB of the embedded corpus, which the benchmark prepares (the standard library's text: 8.8 MB
# on this machine, so about one epoch); about 7 minutes a configuration on 2 CPU cores. Options the
# command line leaves out take these values; the short horizon keeps the simulator's defaults.
LONG_HORIZON: dict[str, object] = {
    "workers": 4,
    "steps": 2500,
    "batch_size": 4,
    "seq_len": 64,
    "warmup": 100,
    "eval_tokens": 32768,
    "corpus_bytes": 24_000_000,
    "configs": (
        # DiLoCo as published (each worker keeps its AdamW), then as deployed, and deployed with the
        # shared second moment, with plain averaging; the same with Nesterov (3-6 points worse at both
        # horizons) and the per-unit warm-up; then the ≥ 1000× and ≥ 2000× candidates, plain and shared.
        "50:int8:average:persistent:volunteers=4:late=0,50:int8:average,50:int8:average:shared,"
        "50:int8:persistent:volunteers=4:late=0,50:int8,50:int8:unit_warmup=0.5,"
        "100:dct:average,150:int2:average,150:int2:average:shared,100:sign1:average,100:sign1:average:shared"
    ),
}
# Flags whose default depends on the horizon.
_HORIZON_FLAGS = ("workers", "steps", "batch_size", "seq_len", "warmup", "eval_tokens", "configs")


def add_bench_diloco(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "diloco",
        help="DiLoCo vs data-parallel at equal tokens",
        description=(
            "Compare synchronous data-parallel, a single worker and DiLoCo at several H with each "
            "codec, at equal tokens and worker count. Writes the table into docs/benchmarks.md."
        ),
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--configs",
        default=DEFAULT_DILOCO_CONFIGS,
        help="comma-separated DiLoCo configurations H:codec[:option…], options being an outer optimizer, an "
        "inner state (fresh, persistent, volunteer) or outer_lr=, momentum=, lr=, late=, volunteers=; "
        "e.g. 50:int8,100:dct:average,50:int8:persistent:lr=0.002",
    )
    parser.add_argument(
        "--horizon",
        choices=["short", "long"],
        default="short",
        help="long: 10,000 inner steps in all on up to 24 MB of the embedded corpus, which it prepares, "
        "for DiLoCo to converge (about an "
        "hour on 2 CPU cores; add --device cuda on a GPU); flags given explicitly still win",
    )
    short = {flag: parser.get_default(flag) for flag in _HORIZON_FLAGS}
    parser.set_defaults(**{flag: None for flag in _HORIZON_FLAGS}, horizon_defaults=short)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"), help="markdown file to update")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write results as JSON")
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        metavar="FILE",
        help="an earlier run's --json: configurations it holds are not run again (resume or extend a long run)",
    )
    parser.set_defaults(handler=_run_bench_diloco)


def _run_bench_diloco(args: argparse.Namespace) -> int:
    from benchmarks.diloco import run_bench_command

    return run_bench_command(args)


def add_bench_codecs(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "codecs",
        help="codec size, speed and error; int8 against hivemind's Uniform8Bit",
        description=(
            "Encode and decode a synthetic pseudo-gradient with every codec (bytes, MB/s, error against the "
            "stated bound), and time the int8 encoder against a re-implementation of hivemind's "
            "Uniform8BitQuantization on the same 16M-element tensors. Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument(
        "--params", type=positive_int, default=2_000_000, help="size of the synthetic update for the codec table"
    )
    parser.add_argument(
        "--compare-elements",
        type=positive_int,
        default=16 * 2**20,
        help="elements of each tensor in the int8-vs-hivemind comparison",
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="best of this many runs per figure")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"), help="markdown file to update")
    parser.add_argument("--quiet", action="store_true", help="print only the tables")
    parser.set_defaults(handler=_run_bench_codecs)


def _run_bench_codecs(args: argparse.Namespace) -> int:
    from benchmarks.codecs import run_bench_command

    return run_bench_command(args)


def add_bench_system(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "system",
        help="end-to-end overhead, bytes per unit and coordinator ingestion throughput",
        description=(
            "Run a real coordinator with N real volunteers and compare tokens/s with the same training in one "
            "process; count bytes on the wire per unit; measure how fast the coordinator ingests int8 updates of "
            "the ~10M-parameter preset from many simulated volunteers. Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument("--volunteers", default="1,2", help="volunteer counts for the end-to-end runs")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per end-to-end run")
    parser.add_argument("--inner-steps", type=int, default=200, metavar="H")
    parser.add_argument("--ingest-clients", type=int, default=16, help="simulated volunteers for ingestion")
    parser.add_argument("--ingest-updates", type=int, default=64, help="updates submitted during ingestion")
    parser.add_argument(
        "--download-codec",
        default="int8,sign1",
        help="comma-separated download codecs, one end-to-end run each: how volunteers get new versions",
    )
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.set_defaults(handler=_run_bench_system)


def _run_bench_system(args: argparse.Namespace) -> int:
    from benchmarks.system import run_bench_system

    return run_bench_system(args)


def add_bench_overlap(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "overlap",
        help="overlapped rounds (rounds.overlap) with one slow volunteer: tokens/s and late updates",
        description=(
            "Run a real coordinator and real volunteers, one of them throttled, once per overlap setting; "
            "report tokens/s of the same token budget and how many updates arrived late. Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument("--volunteers", type=int, default=3)
    parser.add_argument("--slow-percent", type=int, default=25, help="--cpu-percent of the slow volunteer")
    parser.add_argument("--rounds", type=int, default=6, help="token budget, in rounds' worth")
    parser.add_argument("--inner-steps", type=int, default=40, metavar="H")
    parser.add_argument("--overlap", default="0,1", help="comma-separated rounds.overlap values, one run each")
    parser.add_argument(
        "--new-volunteers",
        action="store_true",
        help="skip the warm-up that makes every volunteer trusted first (a new volunteer's held unit doesn't "
        "count against a round's quota, which overlaps rounds by itself)",
    )
    parser.add_argument("--dataset", type=Path, default=None, metavar="DIR", help="default: the embedded corpus")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.set_defaults(handler=_run_bench_overlap)


def _run_bench_overlap(args: argparse.Namespace) -> int:
    from benchmarks.overlap import run_bench_overlap

    return run_bench_overlap(args)


def add_bench_caps(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "caps",
        help="the CPU-time cap: a training process's CPU share at each cap, held by the app's duty cycle",
        description=(
            "Run a real PyTorch training process uncapped and then at each cap for --seconds, held by the tray "
            "app's duty cycle (SIGSTOP/SIGCONT each second), and read its CPU share from /proc. Target: within "
            "±10 points of the cap. Linux. Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument("--caps", default="25,50,75", help="caps to measure, in percent (comma-separated)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each cap is measured")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds for the process to start training")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.set_defaults(handler=_run_bench_caps)


def _run_bench_caps(args: argparse.Namespace) -> int:
    if not all(part.strip().isdigit() and 1 <= int(part) <= 100 for part in args.caps.split(",")):
        print(f"bench caps: --caps wants percentages from 1 to 100, like 25,50,75; got {args.caps!r}", file=sys.stderr)
        return 2
    from benchmarks.caps import run_bench_caps

    return run_bench_caps(args)


def add_bench_app(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "app",
        help="tray app: input-to-suspend latency and the app's idle CPU and memory",
        description=(
            "Run the real tray app under Xvfb (trayer as its tray) against a real coordinator; time xdotool "
            "input to training paused over many trials, and measure the app's CPU and memory while it waits. "
            "Needs Xvfb, trayer and xdotool. Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument("--trials", type=positive_int, default=30)
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="the idle period before training resumes")
    parser.add_argument("--poll-interval", type=float, default=0.25, help="the app's idle polling period")
    parser.add_argument("--measure-seconds", type=float, default=20.0, help="length of each CPU/memory window")
    parser.add_argument("--unit-steps", type=positive_int, default=300, help="inner steps per work unit")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--seq-len", type=positive_int, default=128)
    parser.add_argument("--threads", type=positive_int, default=1, help="CPU threads for training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--screenshots", type=Path, default=None, metavar="DIR", help="also save screenshots here")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.set_defaults(handler=_run_bench_app)


def _run_bench_app(args: argparse.Namespace) -> int:
    from benchmarks.app import run_bench_app

    return run_bench_app(args)


def add_bench_browser(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "browser",
        help="tokens/s of a browser tab (onnxruntime-web) next to ONNX Runtime and PyTorch on this machine",
        description=(
            "Train one tiny unit on the real /volunteer page in headless Chromium against a real coordinator "
            "(wasm, each thread count), and the same steps with ONNX Runtime and PyTorch from Python, in one run; "
            "save screenshots of the page. Needs Chromium and commonweights[onnx]. Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    parser.add_argument("--steps", type=positive_int, default=20, metavar="H", help="inner steps in the unit")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--seq-len", type=positive_int, default=128)
    parser.add_argument("--chromium", type=Path, default=Path("/usr/bin/chromium"), metavar="PATH")
    parser.add_argument("--screenshots", type=Path, default=Path("docs/screenshots"), metavar="DIR")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.set_defaults(handler=_run_bench_browser)


def _run_bench_browser(args: argparse.Namespace) -> int:
    from benchmarks.browser import run_bench_browser

    return run_bench_browser(args)


def add_bench_installers(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "installers",
        help="installer sizes (Linux .deb, Windows NSIS) and the first-run download and setup time",
        description=(
            "Build the Linux and Windows installers with installers/build.py, then time first-run setup of the "
            "training environment (CPU PyTorch, offline from a local wheel folder) and sum what it downloads. "
            "Needs dpkg-deb, makensis and PyInstaller. Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.set_defaults(handler=_run_bench_installers)


def _run_bench_installers(args: argparse.Namespace) -> int:
    from benchmarks.installers import run_bench_installers

    return run_bench_installers(args)


def add_bench_coordinator(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "coordinator",
        help="one coordinator process: lease+submit cycles/s, idle connections, ingestion MB/s, event-loop lag",
        description=(
            "Load a real coordinator process on loopback with simulated volunteers: lease + submit cycles per "
            "second with small updates, idle connected volunteers (memory per connection), int8 update ingestion "
            "of the small preset in MB/s, and the event loop's lag while ingesting. Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument("--cycle-clients", type=positive_int, default=32, help="simulated volunteers for cycles")
    parser.add_argument("--cycle-seconds", type=float, default=20.0, help="how long the cycles run")
    parser.add_argument("--idle", type=positive_int, default=10_000, help="idle connections to open")
    parser.add_argument("--idle-hold", type=float, default=10.0, help="seconds to hold them while probing health")
    parser.add_argument("--ingest-clients", type=positive_int, default=16, help="simulated volunteers for ingestion")
    parser.add_argument("--ingest-updates", type=positive_int, default=256, help="updates submitted during ingestion")
    parser.add_argument(
        "--backend",
        choices=["sqlite", "postgresql"],
        default="sqlite",
        help=(
            "sqlite: the four measurements above on the embedded store; postgresql: cycles and ingestion on SQLite "
            "and on a PostgreSQL + S3 (SeaweedFS) the bench starts on loopback, and each store operation's cost"
        ),
    )
    parser.add_argument(
        "--replicas",
        default="",
        metavar="N,N,…",
        help=(
            "replica counts, e.g. 1,2,3: cycles and ingestion through HAProxy onto that many coordinator replicas "
            "over one PostgreSQL + S3 (all started on loopback), the scaling ratio and the CPU of each part"
        ),
    )
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.set_defaults(handler=_run_bench_coordinator)


def _run_bench_coordinator(args: argparse.Namespace) -> int:
    if args.replicas:
        if not all(part.strip().isdigit() and int(part) >= 1 for part in args.replicas.split(",")):
            print(f"bench coordinator: --replicas wants counts like 1,2,3, got {args.replicas!r}", file=sys.stderr)
            return 2
        from benchmarks.replicas import run_bench_replicas

        return run_bench_replicas(args)
    if args.backend == "postgresql":
        from benchmarks.backends import run_bench_backends

        return run_bench_backends(args)
    from benchmarks.coordinator import run_bench_coordinator

    return run_bench_coordinator(args)


def add_bench_crash(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "crash",
        help="coordinator SIGKILLed mid-run: acknowledged updates lost and applied twice; volunteer churn",
        description=(
            "SIGKILL a real coordinator process at seeded random instants of a real run with real volunteer "
            "processes, restarting it on the same data dir each time, then audit the record: acks the volunteers "
            "received that the store lost, and the history replay for updates applied twice. Then run one campaign "
            "calm and again with a share of its volunteers killed and replaced mid-run, and compare the final "
            "holdout loss. Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument("--kills", type=positive_int, default=100, help="coordinator SIGKILLs")
    parser.add_argument("--volunteers", type=positive_int, default=6, help="volunteer processes during the kills")
    parser.add_argument("--churn-volunteers", type=positive_int, default=10, help="volunteer processes for churn")
    parser.add_argument("--churn-rounds", type=positive_int, default=16, help="rounds of the churn campaign")
    parser.add_argument(
        "--churn-fraction", type=float, default=0.3, help="share of the volunteers killed and replaced mid-run"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill instants, the victims and the campaigns")
    parser.add_argument(
        "--dataset", type=Path, default=None, metavar="DIR", help="a prepared dataset (default: the embedded corpus)"
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--crash-only", action="store_true", help="only the coordinator kills")
    only.add_argument("--churn-only", action="store_true", help="only the churn comparison")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.set_defaults(handler=_run_bench_crash)


def _run_bench_crash(args: argparse.Namespace) -> int:
    from benchmarks.crash import run_bench_crash

    return run_bench_crash(args)


def add_bench_adversarial(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "adversarial",
        help="a campaign clean and with 20%% Byzantine volunteers per attack kind: loss, accepted, rejected, credit",
        description=(
            "Run one tiny campaign to its budget on a fresh coordinator with real volunteer processes: once all "
            "honest, then once per attack kind with a share of the volunteers replaced by attacker processes "
            "(python -m benchmarks.adversaries), and once mixed. Per run: the final holdout loss against the clean "
            "run's, attacker updates accepted, honest updates rejected, credit earned by attackers, rounds. "
            "Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument("--volunteers", type=positive_int, default=10, help="volunteer processes per campaign")
    parser.add_argument(
        "--attacker-share", type=float, default=0.2, help="share of the volunteers that attack (default 0.2)"
    )
    parser.add_argument(
        "--kinds",
        default="all",
        help="comma-separated attack kinds (sign_flip, scale_up, scale_neg, scale_down, noise, free_rider, replay, "
        "stale, nan, forged, colluding, hog) and mixed; default: all of them",
    )
    parser.add_argument("--rounds", type=positive_int, default=6, help="rounds of the campaign")
    parser.add_argument("--units-per-round", type=positive_int, default=8)
    parser.add_argument("--min-accepted", type=positive_int, default=6, help="a round's quorum")
    parser.add_argument("--inner-steps", type=positive_int, default=20, metavar="H")
    parser.add_argument("--replication-rate", type=float, default=0.25, help="share of units replicated")
    parser.add_argument("--outer", default="average", help="the campaign's outer optimizer (default average)")
    parser.add_argument(
        "--aggregation", default=None, help="the campaign's aggregation rule (default: the campaign's, the mean)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the campaign and the mixed run's kinds")
    parser.add_argument(
        "--dataset", type=Path, default=None, metavar="DIR", help="a prepared dataset (default: the embedded corpus)"
    )
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.set_defaults(handler=_run_bench_adversarial)


def _run_bench_adversarial(args: argparse.Namespace) -> int:
    from benchmarks.adversarial import run_bench_adversarial

    return run_bench_adversarial(args)


def add_bench_private(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "private",
        help="the cost of training on volunteers' own data with differential privacy (ε = ∞, 8, 2)",
        description=(
            "Run a real coordinator and real volunteer processes, each holding a different folder of text of its "
            'own: a campaign with the text served by the coordinator, then data = "volunteer" campaigns with '
            "updates clipped and noised for ε = ∞, 8 and 2; report each one's holdout loss at equal tokens. "
            "Writes docs/benchmarks.md."
        ),
    )
    parser.add_argument("--volunteers", type=positive_int, default=3, help="volunteer processes, each with its folder")
    parser.add_argument("--rounds", type=positive_int, default=8, help="rounds per run (one unit per volunteer)")
    parser.add_argument("--inner-steps", type=positive_int, default=20, metavar="H")
    parser.add_argument("--clip-norm", type=float, default=10.0, metavar="C", help="the updates' clipping norm")
    parser.add_argument(
        "--epsilons", type=_epsilons, default=(math.inf, 8.0, 2.0), metavar="LIST",
        help="the private runs' ε targets, comma-separated, 'inf' for no noise (default: inf,8,2)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, datasets)")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.set_defaults(handler=_run_bench_private)


def _epsilons(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers or 'inf'") from None
    if not values or any(not value > 0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every ε must be above 0")
    return values


def _run_bench_private(args: argparse.Namespace) -> int:
    from benchmarks.private import run_bench_private

    return run_bench_private(args)


def add_bench_fuzz(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "fuzz",
        help="hostile frames through the volunteer gateway's decode path, in process and over a real socket",
        description=(
            "Generate mutated and random control frames of every message type and decode them as the gateway "
            "does (every one must decode or be refused with the protocol's own error); mutated updates of every "
            "codec through the tensor decoder; then send fuzzed frames to a real coordinator process over real "
            "WebSocket connections while a well-behaved volunteer keeps working, checking each answer against "
            "docs/protocol.md and the coordinator's log for tracebacks. Writes docs/benchmarks.md; exits 1 if "
            "anything broke the contract."
        ),
    )
    parser.add_argument("--frames", type=positive_int, default=1_000_000, help="control frames decoded in process")
    parser.add_argument("--codec-frames", type=positive_int, default=100_000, help="update frames decoded in process")
    parser.add_argument(
        "--socket-frames", type=int, default=5_000, help="fuzzed frames sent to a real coordinator (0: none)"
    )
    parser.add_argument("--socket-connections", type=positive_int, default=4, help="fuzzing connections at a time")
    parser.add_argument("--seed", type=int, default=0, help="the same seed generates the same frames")
    parser.add_argument(
        "--dataset", type=Path, default=None, metavar="DIR", help="a prepared dataset (default: the embedded corpus)"
    )
    parser.add_argument(
        "--findings", type=Path, default=None, metavar="DIR", help="where to save frames that broke the contract"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    parser.set_defaults(handler=_run_bench_fuzz)


def _run_bench_fuzz(args: argparse.Namespace) -> int:
    from benchmarks.fuzz import run_bench_fuzz

    return run_bench_fuzz(args)
