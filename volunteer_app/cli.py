"""Subcommands owned by the volunteer: `volunteer run` (the headless worker) and `volunteer app` (the
tray app).

Cheap to import: the handler imports torch, websockets and the worker only when it runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.messages import RUNTIMES, UNIT_KINDS

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from volunteer_app.worker import RunSummary, WorkerEvent

Subparsers = Any  # argparse's _SubParsersAction is private

FAULTS = ("nan", "shape", "norm100", "replay", "flipped")  # volunteer_app.unit_runner.FAULTS, without torch


def add_volunteer(commands: Subparsers) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "volunteer", help="lend this machine to a coordinator (headless worker)"
    )
    sub = parser.add_subparsers(dest="volunteer_command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="train work units until Ctrl-C",
        description=(
            "Connect to a coordinator, register on first contact (the token is kept in the config dir), "
            "then fetch work units, train them and submit the updates until Ctrl-C, which stops at the "
            "next step boundary and keeps the unit for the next run."
        ),
    )
    run.add_argument("--coordinator", required=True, metavar="URL", help="e.g. ws://127.0.0.1:8470/ws")
    run.add_argument("--device", default="auto", metavar="DEVICE", help="auto (default), cpu, cuda, cuda:N or mps")
    run.add_argument("--threads", type=positive_int, default=None, metavar="N", help="CPU threads for training")
    run.add_argument(
        "--cpu-percent",
        type=percent,
        default=100,
        metavar="PCT",
        help="share of the time to spend training, 1-100: after each step, rest in proportion (default 100)",
    )
    run.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help=(
            "train with PyTorch (default) or with ONNX Runtime and the step graph the coordinator builds "
            "(needs commonweights[onnx])"
        ),
    )
    run.add_argument(
        "--unit-kinds",
        type=_unit_kinds,
        default=("train",),
        metavar="KINDS",
        help="what to do, comma-separated: train (default), evaluate (measure new versions' holdout loss), "
        "check (measure other volunteers' updates on the holdout); evaluate and check are forward only",
    )
    run.add_argument(
        "--memory-limit",
        type=_memory_size,
        default=None,
        metavar="SIZE",
        help="memory training may use, e.g. 4GiB or 512M (default: half the RAM, 90%% of a GPU)",
    )
    run.add_argument("--name", default=None, help="display name on the coordinator (default: the host name)")
    run.add_argument("--campaign", default=None, metavar="ID", help="campaign to prefer, when it has work")
    run.add_argument("--config-dir", type=Path, default=None, metavar="DIR", help="where credentials.toml lives")
    run.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="where downloaded blobs are cached")
    run.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where units in progress are kept (default: under --config-dir when given)",
    )
    run.add_argument(
        "--bind-address",
        default=None,
        metavar="ADDR",
        help="local IP address to connect from (default: the one the system picks)",
    )
    run.add_argument("--max-units", type=positive_int, default=None, metavar="N", help="exit after N units")
    run.add_argument(
        "--max-retries",
        type=_count,
        default=None,
        metavar="N",
        help="give up (exit 2) after N failed connection attempts in a row (default: retry forever)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress display; errors only")
    run.add_argument("--inject-fault", choices=FAULTS, default=None, help=argparse.SUPPRESS)
    run.set_defaults(handler=_run_volunteer)

    link = sub.add_parser(
        "link",
        help="join this machine to your volunteer account with a code from its My machines page",
        description=(
            "Link this machine to a volunteer account, so it shows on the account's My machines page (state, "
            "device, credit, current unit), can be paused from there, and its credit counts for the account "
            "and its team. Make the code on the dashboard (My machines > Link a machine); it works once, for "
            "15 minutes. The machine must have connected to the coordinator once (volunteer run, or the app)."
        ),
    )
    link.add_argument("code", help="the code the dashboard shows, e.g. K7QX-M2PD")
    link.add_argument("--coordinator", required=True, metavar="URL", help="e.g. ws://127.0.0.1:8470/ws")
    link.add_argument("--config-dir", type=Path, default=None, metavar="DIR", help="where credentials.toml lives")
    link.set_defaults(handler=_run_link)

    data = sub.add_parser(
        "data",
        help="your own files for campaigns that train on volunteers' data (they never leave this machine)",
        description=(
            "Choose the folders and files (.txt, .md, .jsonl) that campaigns training on volunteers' own data may "
            "use, see what in them would be used and how much, or revoke them (which also deletes their tokenized "
            "copies). Only model updates ever leave the machine, never the text or its tokens. --max-epsilon sets "
            "the most privacy any one campaign may spend of them (10 unless changed)."
        ),
    )
    data.add_argument("action", choices=("add", "list", "remove"), help="choose, show, or revoke")
    data.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="folders or files (add, remove)")
    data.add_argument("--config-dir", type=Path, default=None, metavar="DIR", help="where local-data.toml lives")
    data.add_argument("--data-dir", type=Path, default=None, metavar="DIR", help="where tokenized copies are kept")
    data.add_argument(
        "--max-epsilon", type=_epsilon, default=None, metavar="E",
        help="set the most privacy (ε) any one campaign may spend of your files; inf: whatever a campaign states",
    )  # fmt: skip
    data.set_defaults(handler=_run_data)

    from volunteer_app.tray.main import add_arguments  # argparse only; Qt loads when the app runs

    app = sub.add_parser(
        "app",
        help="the desktop tray app: train while this computer is idle",
        description=(
            "Start the tray app (the same as `commonweights-app`): it trains only while nobody uses the "
            "computer, pauses within a second of input, and offers settings and statistics from its menu. "
            "A second launch brings the running app forward."
        ),
    )
    add_arguments(app)
    app.set_defaults(handler=_run_app)

    setup = sub.add_parser(
        "setup",
        help="build the training environment: the PyTorch build this machine's device needs",
        description=(
            "Detect the device (NVIDIA GPU and driver, AMD ROCm on Linux, Apple silicon, or CPU only) and build "
            "the environment the training process runs in, with uv: a Python, the matching PyTorch build and "
            "this release of commonweights. The desktop app does this on first run; run it again to resume an "
            "interrupted setup or to repair one. Downloads are kept, so a retry fetches only what is missing."
        ),
    )
    setup.add_argument(
        "--device", choices=("auto", "cpu", "cuda", "rocm", "mps"), default="auto", help="build for this device"
    )
    setup.add_argument("--env", type=Path, default=None, metavar="DIR", help="where (default: the user data dir)")
    setup.add_argument(
        "--find-links", type=Path, action="append", default=[], metavar="DIR", help="a folder of wheels to use"
    )
    setup.add_argument("--offline", action="store_true", help="only the --find-links folders, no package index")
    setup.add_argument("--python", default=None, metavar="SPEC", help="uv's --python (default: this Python's version)")
    setup.add_argument(
        "--app", default=None, metavar="REQUIREMENT", help="what to install as the app (default: this release)"
    )
    setup.add_argument("--dry-run", action="store_true", help="only show the device and the plan")
    setup.set_defaults(handler=_run_setup)


def _run_data(args: argparse.Namespace) -> int:
    from volunteer_app.credentials import default_config_dir, volunteer_data_dir
    from volunteer_app.local_data import DataRules, LocalData, LocalDataError

    config_dir = args.config_dir or default_config_dir()
    data_dir = volunteer_data_dir(args.config_dir, args.data_dir)
    try:
        local = LocalData(config_dir, data_dir)
        if args.action != "list" and not args.paths:
            print(f"error: {args.action} needs at least one folder or file", file=sys.stderr)
            return 2
        for path in args.paths if args.action == "add" else ():
            local.add(path)
        for path in args.paths if args.action == "remove" else ():
            if not local.remove(path):
                print(f"{path} was not chosen", file=sys.stderr)
        if args.max_epsilon is not None:
            local.set_max_epsilon(args.max_epsilon)
        inventory = local.inventory(DataRules())
    except LocalDataError as error:
        print(f"error ({error.code}): {error}", file=sys.stderr)
        return 2
    if not local.sources:
        print("No folder or file is chosen: campaigns on volunteers' data get nothing from this machine.")
        return 0
    print(f"Privacy: {local.describe_limit()} (--max-epsilon).")
    print("Chosen (they never leave this machine; only model updates do):")
    for source in local.sources:
        print(f"  {source}")
    print(f"Would be used: {len(inventory.files)} file(s), {inventory.total_bytes:,} bytes")
    for path, size in inventory.files[:50]:
        print(f"  {size:>12,}  {path}")
    if len(inventory.files) > 50:
        print(f"  ... and {len(inventory.files) - 50} more")
    for skipped in inventory.skipped[:50]:
        print(f"  left out: {skipped.path}: {skipped.reason}")
    return 0


def _epsilon(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or inf)") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: ε must be above 0")
    return value


def _run_link(args: argparse.Namespace) -> int:
    from volunteer_app.account import AccountError, link_machine

    try:
        linked = link_machine(args.coordinator, args.code, config_dir=args.config_dir)
    except AccountError as error:
        print(f"error ({error.code}): {error}", file=sys.stderr)
        return 2
    print(f"This machine ({linked.volunteer_id}) is now in the account {linked.account_name!r}.")
    return 0


def _run_setup(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from protocol.version import RELEASE_VERSION
    from volunteer_app.environment import (
        STEPS,
        Device,
        SetupError,
        TrainingEnvironment,
        default_root,
        detect_device,
        find_uv,
        plan_for,
    )

    console = Console(stderr=True)
    device = detect_device()
    if args.device != "auto" and args.device != device.kind:
        device = Device(args.device, f"{args.device} (chosen)", device.driver)
    plan = plan_for(device)
    console.print(f"device: {device.kind} — {device.name}" + (f", driver {device.driver}" if device.driver else ""))
    console.print(f"PyTorch: {plan.torch}, {plan.variant} build" + (f" ({plan.note})" if plan.note else ""))
    if args.dry_run:
        return 0
    env = TrainingEnvironment(args.env or default_root())
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[line]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("setup", total=len(STEPS), line="")

        def report(index: int, step: str, line: str) -> None:
            bar.update(task, completed=index, description=f"{step} ({index + 1}/{len(STEPS)})", line=line[-60:])

        try:
            installed = env.build(
                plan,
                uv=find_uv(),
                app_version=RELEASE_VERSION,
                app_requirement=args.app,
                python=args.python,
                find_links=args.find_links,
                offline=args.offline,
                progress=report,
            )
        except SetupError as error:
            bar.stop()
            console.print(f"[red]setup stopped at {error.step}:[/red] {error.message}")
            console.print("Run the same command again to resume.")
            return 2 if error.offline else 1
        bar.update(task, completed=len(STEPS), description="ready", line="")
    if installed != plan:
        console.print(f"[yellow]installed the {installed.variant} build instead:[/yellow] {installed.note}")
    console.print(f"training environment ready: {env.interpreter}")
    return 0


def _run_app(args: argparse.Namespace) -> int:
    from volunteer_app.tray.main import run

    return run(args)


def percent(text: str) -> int:
    """argparse type: a whole percentage from 1 to 100."""
    value = positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be at most 100, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _unit_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not kinds or not set(kinds) <= set(UNIT_KINDS):
        raise argparse.ArgumentTypeError(f"choose from {', '.join(UNIT_KINDS)}, comma-separated")
    return kinds


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _memory_size(text: str) -> int:
    from volunteer_app.devices import DeviceError, parse_memory

    try:
        return parse_memory(text)
    except DeviceError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _run_volunteer(args: argparse.Namespace) -> int:
    import asyncio

    from volunteer_app.worker import Worker, WorkerConfig, WorkerError

    def fail(message: str) -> int:
        print(f"commonweights volunteer run: {message}", file=sys.stderr)
        return 2

    try:
        config = WorkerConfig(
            coordinator_url=args.coordinator,
            device=args.device,
            threads=args.threads,
            cpu_percent=args.cpu_percent,
            runtime=args.runtime,
            unit_kinds=args.unit_kinds,
            memory_limit=args.memory_limit,
            config_dir=args.config_dir,
            cache_dir=args.cache_dir,
            data_dir=args.data_dir,
            max_units=args.max_units,
            max_retries=args.max_retries,
            preferred_campaign=args.campaign,
            bind_address=args.bind_address,
            inject_fault=args.inject_fault,
            **({"name": args.name} if args.name is not None else {}),
        )
    except WorkerError as error:
        return fail(error.message)
    display = _Display(quiet=args.quiet)
    worker = Worker(config, events=display.handle)

    async def main() -> RunSummary:
        loop = asyncio.get_running_loop()
        interrupts = 0

        def interrupted() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts > 1:
                display.close()
                print("quitting without waiting for the step to finish", file=sys.stderr)
                os._exit(130)  # the last local checkpoint is on disk; the training thread can't be cancelled
            worker.stop()
            display.note("stopping at the next step boundary (Ctrl-C again to quit at once)")

        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, interrupted)
            except (NotImplementedError, RuntimeError):  # Windows event loops have no signal handlers
                signal.signal(signum, lambda *_: loop.call_soon_threadsafe(interrupted))
        return await worker.run()

    try:
        summary = asyncio.run(main())
    finally:
        display.close()
    if summary.error is not None:
        print(f"commonweights volunteer run: {summary.error.message}", file=sys.stderr)
        return 2 if summary.error.code in ("unreachable", "bad_url", "bad_device", "bad_config") else 1
    if not args.quiet:
        print(f"done: {summary.units} unit(s), {summary.credit:.6g} credit")
    return 0


class _Display:
    """What the user sees: a live bar on a terminal, plain log lines elsewhere, nothing with --quiet."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.console: Console | None = None
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.state = "starting"
        self.printed_step = 0
        if quiet:
            return
        from rich.console import Console

        self.console = Console(stderr=False, highlight=False)
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]{task.fields[state]:<11}"),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task("waiting for work", total=None, state=self.state, loss="-")
            self.progress.start()

    def note(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, markup=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def handle(self, event: WorkerEvent) -> None:
        from volunteer_app.worker import (
            Connected,
            Downloading,
            Notice,
            StateChanged,
            TrainingProgress,
            UnitResult,
            UnitStarted,
        )

        if self.quiet:
            return
        if isinstance(event, StateChanged):
            self.state = event.state.value
            self._update(state=self.state)
            if self.progress is None:
                self.note(f"[{event.state.value}] {event.detail}".rstrip())
        elif isinstance(event, Connected):
            how = "registered as" if event.registered else "signed in as"
            server = f"coordinator {event.server_version}, credit {event.credit_total:.6g}"
            self.note(f"{how} {event.volunteer_id} ({server})")
        elif isinstance(event, UnitStarted):
            self.printed_step = 0
            self._update(
                description=f"{event.campaign_name} · unit {event.unit_id[:8]}",
                total=event.steps_total,
                completed=0,
                loss="-",
            )
            resumed = " (resumed)" if event.resumed else ""
            self.note(
                f"unit {event.unit_id} of {event.campaign_name}, model v{event.model_version}, "
                f"{event.steps_total} steps{resumed}"
            )
        elif isinstance(event, Downloading):
            if event.done == event.total and event.seconds > 0:
                rate = event.total / event.seconds / 1e6
                self.note(
                    f"downloaded {event.sha256[:12]}: {event.total / 1e6:.2f} MB in {event.seconds:.2f} s "
                    f"({rate:.1f} MB/s)"
                )
        elif isinstance(event, TrainingProgress):
            self._update(completed=event.step, total=event.steps_total, loss=f"{event.loss:.3f}")
            every = max(1, event.steps_total // 10)
            if self.progress is None and (event.step - self.printed_step >= every or event.step == event.steps_total):
                self.printed_step = event.step
                self.note(f"step {event.step}/{event.steps_total} loss {event.loss:.4f} tokens {event.tokens}")
        elif isinstance(event, UnitResult):
            code = f" ({event.code})" if event.code else ""
            self.note(f"unit {event.unit_id}: {event.status}{code}: {event.message} [credit {event.credit:.6g}]")
        elif isinstance(event, Notice):
            self.note(f"note: {event.message}")

    def _update(self, **fields: Any) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, **fields)
