"""`commonweights bench app`: how fast the tray app gets out of the way, and what it costs while it waits.

Everything is real: a private X server (Xvfb) with a system tray (trayer), a coordinator process
with a campaign of the `tiny` model, and the app itself (`python -m volunteer_app.tray.main`) with
its training child. The app writes a trace (JSON lines with monotonic times, comparable across
processes on one machine), which is how the benchmark sees what happened when.

1. Suspend latency, over `--trials` trials: wait until the child is training (a progress report
   after the last resume), wait a random 0-0.5 s so the input lands anywhere in the poll and step
   cycles, move the pointer with xdotool, and time (a) the app's decision to suspend and (b) the
   child's "paused" state, which the worker reports only after the step finished, the unit was
   checkpointed and GPU memory was freed. The idle period is `--idle-seconds`, so after each
   trial the app resumes on its own.
2. Cost while waiting: the app's CPU (utime + stime from /proc/PID/stat) and resident memory over
   `--measure-seconds`, first with nothing to do yet (waiting for idle, no training process), then
   while the user works (input every second) and training is paused (app and child both counted).
3. With `--screenshots DIR`: the statistics window (with this run's loss), the settings dialog and
   the tray menu, grabbed from the X server.

The section goes to docs/benchmarks.md between its `bench:app` markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.report import machine_line, markdown_table, write_section
from coordinator.local import LocalCoordinator, start_coordinator, stop
from training.data import TokenDataset, ensure_default_dataset
from volunteer_app.preferences import Preferences, save_preferences
from volunteer_app.tray.xsession import SystemTray, XvfbDisplay, window_geometry

__all__ = ["run_bench_app"]

TARGET_S = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` so far (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    rest = stat[stat.rfind(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Usage:
    cpu_percent: float  # of one core, averaged over the window
    rss_bytes: int  # the largest sample


def measure(pids: list[int], seconds: float, during: Callable[[], None] | None = None) -> list[Usage]:
    """CPU and peak RSS of each pid over `seconds`, sampled once a second; `during` runs each second."""
    began = time.monotonic()
    start = [cpu_seconds(pid) for pid in pids]
    peak = [rss_bytes(pid) for pid in pids]
    while time.monotonic() - began < seconds:
        if during is not None:
            during()
        time.sleep(1.0)
        peak = [max(p, rss_bytes(pid)) for p, pid in zip(peak, pids, strict=True)]
    elapsed = time.monotonic() - began
    return [Usage(100.0 * (cpu_seconds(pid) - s) / elapsed, p) for pid, s, p in zip(pids, start, peak, strict=True)]


@dataclass
class AppProcess:
    """The tray app in a subprocess on `env`'s display, and the trace it writes."""

    home: Path
    env: dict[str, str]
    prefs: Preferences
    poll_interval: float = 0.25
    process: subprocess.Popen[bytes] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0

    @property
    def trace(self) -> Path:
        return self.home / "trace.jsonl"

    @property
    def prefs_path(self) -> Path:
        return self.home / "preferences.toml"

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "volunteer_app.tray.main", "--preferences", str(self.prefs_path), *extra]

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        save_preferences(self.prefs, self.prefs_path)
        log = (self.home / "app.log").open("ab")
        dirs = ["--config-dir", str(self.home / "config"), "--cache-dir", str(self.home / "cache"),
                "--data-dir", str(self.home / "data"), "--trace", str(self.trace),
                "--poll-interval", str(self.poll_interval)]  # fmt: skip
        self.process = subprocess.Popen(self.command(*dirs), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def read(self) -> list[dict[str, Any]]:
        if not self.trace.exists():
            return []
        with self.trace.open("rb") as trace:
            trace.seek(self._offset)
            data = trace.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        new = [json.loads(line) for line in complete.splitlines() if line.strip()]
        self.records.extend(new)
        return new

    def wait_for(self, test: Callable[[dict[str, Any]], bool], *, after: float, timeout: float) -> dict[str, Any]:
        """The first trace record after monotonic time `after` that passes `test`."""
        deadline = time.monotonic() + timeout
        while True:
            self.read()
            for record in self.records:
                if record["t"] > after and test(record):
                    return record
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the app exited with code {self.process.returncode}; see {self.home / 'app.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching trace record within {timeout:.0f} s; see {self.trace}")
            time.sleep(0.02)

    def child_pid(self) -> int | None:
        self.read()
        started = [r for r in self.records if r["kind"] == "child" and r.get("event") == "started"]
        return int(started[-1]["pid"]) if started else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # the app quits cleanly on SIGTERM: the child checkpoints and exits
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _campaign(coordinator: LocalCoordinator, dataset: Path, steps: int, batch: int, seq: int) -> None:
    steps = min(steps, TokenDataset.open(dataset).num_train_tokens // (2 * batch * seq) - 1)  # two units fit
    coordinator.api.post_campaign(
        {
            "name": "bench-app",
            "model": "tiny",
            "dataset": "stdlib",
            "codec": "int8",
            "token_budget": 1000 * steps * batch * seq,
            "inner": {"steps": steps, "batch_size": batch, "seq_len": seq, "warmup_steps": 0},
            "rounds": {"units_per_round": 1, "min_accepted": 1, "deadline_s": 86_400, "lease_s": 600},
            "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
        }
    )


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _pointer(env: dict[str, str]) -> Iterator[None]:
    """Each next() moves the pointer somewhere else (a move to the same spot is no input)."""
    spots = [("211", "307"), ("523", "419")]
    i = 0
    while True:
        subprocess.run(["xdotool", "mousemove", *spots[i % 2]], env=env, check=True)
        i += 1
        yield


def run_trials(app: AppProcess, env: dict[str, str], trials: int, rng: random.Random) -> list[dict[str, Any]]:
    """`trials` timed suspends; one whose input met the end of a unit (submitting, fetching the next)
    is kept but marked, and another is run in its place."""
    results: list[dict[str, Any]] = []
    since = app.wait_for(lambda r: r["kind"] == "progress", after=0.0, timeout=600)["t"]  # download + first step
    while sum(1 for r in results if r["clean"]) < trials:
        progress = app.wait_for(lambda r: r["kind"] == "progress", after=since, timeout=300)
        time.sleep(rng.uniform(0.0, 0.5))
        began = time.monotonic()
        subprocess.run(["xdotool", "mousemove", str(rng.randint(50, 1200)), str(rng.randint(50, 750))],
                       env=env, check=True)  # fmt: skip
        decided = app.wait_for(lambda r: r["kind"] == "command" and r["command"] == "pause", after=began, timeout=10)
        paused = app.wait_for(lambda r: r["kind"] == "worker" and r["state"] == "paused", after=began, timeout=120)
        states = [r["state"] for r in app.records if r["kind"] == "worker" and progress["t"] < r["t"] < paused["t"]]
        results.append(
            {
                "decision_s": decided["t"] - began,
                "paused_s": paused["t"] - began,
                "step_at_input": progress["step"],
                "clean": not states,  # training all along, from the progress report to the pause
            }
        )
        since = paused["t"]
    return results


def step_seconds(records: list[dict[str, Any]]) -> float:
    """Median seconds per step from consecutive progress reports of uninterrupted training."""
    spans = []
    previous: dict[str, Any] | None = None
    for record in records:
        if record["kind"] == "progress":
            if previous is not None and record["step"] > previous["step"]:
                spans.append((record["t"] - previous["t"]) / (record["step"] - previous["step"]))
            previous = record
        elif record["kind"] == "worker":
            previous = None
    return statistics.median(spans) if spans else float("nan")


def grab(display: str, path: Path, rect: tuple[int, int, int, int]) -> None:
    os.environ["DISPLAY"] = display
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(["commonweights-bench"])
    assert isinstance(app, QGuiApplication)
    screen = app.primaryScreen()
    if not screen.grabWindow(0, *rect).save(str(path)):
        raise OSError(f"could not write {path}")


def _find(display: str, name_part: str, timeout: float = 20.0) -> tuple[int, int, int, int]:
    deadline = time.monotonic() + timeout
    while (rect := window_geometry(display, name_part)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no window named like {name_part!r} appeared on {display}")
        time.sleep(0.1)
    return rect


def screenshots(app: AppProcess, env: dict[str, str], display: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    if shutil.which("xsetroot"):  # x11-xserver-utils: a plain desktop colour rather than black
        subprocess.run(["xsetroot", "-solid", "#5b6b7c"], env=env, check=False)
    now = time.monotonic()
    app.wait_for(lambda r: r["kind"] == "result", after=0.0, timeout=600)  # a unit accepted, for the numbers
    app.wait_for(lambda r: r["kind"] == "progress", after=now, timeout=300)  # and training again
    time.sleep(3.0)
    made = []
    for show, title, name in (
        ("statistics", "Statistics", "app-statistics.png"),
        ("settings", "Settings", "app-settings.png"),
    ):
        subprocess.run(app.command("--show", show), env=env, check=True, timeout=60, capture_output=True)
        rect = _find(display, title)
        time.sleep(1.5)  # a refresh of the statistics, and the window drawn
        grab(display, out / name, rect)
        made.append(out / name)
    tray = next(r["tray"] for r in app.records if r["kind"] == "app" and r.get("event") == "started")
    if tray:
        x, y, w, h = tray
        subprocess.run(["xdotool", "mousemove", str(x + w // 2), str(y + h // 2), "click", "3"], env=env, check=True)
        mx, my, mw, mh = _find(display, "Commonweights menu")
        time.sleep(1.0)  # the status line updates: the click was input
        left, bottom = min(mx, x) - 16, max(my + mh, y + h) + 16
        right = max(mx + mw, x + w) + 4
        grab(display, out / "app-tray-menu.png", (max(0, left), 0, right - max(0, left), bottom))
        subprocess.run(["xdotool", "key", "Escape"], env=env, check=True)
        made.append(out / "app-tray-menu.png")
    return made


def run_bench_app(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    dataset = ensure_default_dataset(progress=False)
    work = Path(tempfile.mkdtemp(prefix="commonweights-bench-app-"))
    with ExitStack() as stack:
        display = stack.enter_context(XvfbDisplay())
        stack.enter_context(SystemTray(display.name))
        env = {**os.environ, "DISPLAY": display.name, "QT_QPA_PLATFORM": "xcb"}
        env.pop("WAYLAND_DISPLAY", None)
        coordinator = start_coordinator(work / "coordinator", datasets={"stdlib": dataset}, log=work / "coord.log")
        stack.callback(stop, coordinator.process)
        _campaign(coordinator, dataset, args.unit_steps, args.batch_size, args.seq_len)
        base = Preferences(coordinator_url=coordinator.ws_url, cpu_cores=args.threads, suspend_other_cpu_percent=0)

        print("1/3 waiting for idle, nothing running yet", file=sys.stderr)
        waiting = AppProcess(
            work / "waiting", env, dataclasses.replace(base, idle_minutes=60), poll_interval=args.poll_interval
        )
        waiting.start()
        stack.callback(waiting.stop)
        waiting.wait_for(lambda r: r["kind"] == "app" and r.get("event") == "started", after=0.0, timeout=60)
        assert waiting.process is not None
        time.sleep(2.0)
        (idle_usage,) = measure([waiting.process.pid], args.measure_seconds)
        waiting.stop()

        print(f"2/3 {args.trials} suspend trials against a training child", file=sys.stderr)
        app = AppProcess(
            work / "app",
            env,
            dataclasses.replace(base, idle_minutes=args.idle_seconds / 60),
            poll_interval=args.poll_interval,
        )
        app.start()
        stack.callback(app.stop)
        trials = run_trials(app, env, args.trials, rng)

        print("3/3 the user at work: app and paused child", file=sys.stderr)
        pointer = _pointer(env)
        next(pointer)
        time.sleep(1.0)
        child = app.child_pid()
        assert app.process is not None and child is not None
        busy_app, busy_child = measure([app.process.pid, child], args.measure_seconds, during=lambda: next(pointer))
        made = screenshots(app, env, display.name, args.screenshots) if args.screenshots else []
        app.read()
        step = step_seconds(app.records)

    clean = [t for t in trials if t["clean"]]
    decision = [t["decision_s"] for t in clean]
    paused = [t["paused_s"] for t in clean]
    result = {
        "trials": trials,
        "step_seconds": step,
        "waiting": vars(idle_usage),
        "user_active": {"app": vars(busy_app), "child": vars(busy_child)},
        "screenshots": [str(p) for p in made],
    }
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    skipped = len(trials) - len(clean)
    write_section(
        args.output, "app", _markdown(args, decision, paused, skipped, step, idle_usage, busy_app, busy_child)
    )
    print(
        f"input → paused: median {statistics.median(paused):.3f} s, p95 {_percentile(paused, 95):.3f} s; "
        f"waiting: {idle_usage.cpu_percent:.2f} % CPU, {idle_usage.rss_bytes / 2**20:.0f} MiB"
    )
    return 0


def _markdown(
    args: argparse.Namespace,
    decision: list[float],
    paused: list[float],
    skipped: int,
    step: float,
    idle: Usage,
    busy_app: Usage,
    busy_child: Usage,
) -> str:
    def row(name: str, values: list[float]) -> list[str]:
        return [name, f"{statistics.median(values):.3f}", f"{_percentile(values, 95):.3f}", f"{max(values):.3f}"]

    verdict = "met" if _percentile(paused, 95) < TARGET_S else "missed"
    mib = 2**20
    setup = (
        "The real app under Xvfb with trayer as its tray, against a real coordinator process: `tiny` model units "
        f"of {args.unit_steps} steps (batch {args.batch_size} × {args.seq_len} tokens) trained by the app's child "
        f"process on {args.threads} CPU thread at the lowest CPU priority; a step took {step * 1000:.0f} ms here. "
        f"The app reads the X11 idle time every {args.poll_interval} s and resumes after {args.idle_seconds:g} s "
        f"idle. Each of {len(paused)} trials moves the pointer with xdotool at a random moment of training and "
        "times the app's own trace: its decision to suspend, and the child's `paused` state, which the worker "
        "reports only after the step finished, the unit was checkpointed and GPU memory was freed."
    )
    if skipped:
        setup += (
            f" {skipped} more trial(s) met the end of a unit (the worker submitting or fetching, not training) "
            "and are left out."
        )
    lines = [
        "## Tray app: suspend on input, and the cost of waiting",
        "",
        machine_line(),
        "",
        setup,
        "",
        markdown_table(
            ["from xdotool input to", "median (s)", "p95 (s)", "max (s)"],
            [row("the suspend decision", decision), row("training paused (checkpointed)", paused)],
        ),
        "",
        f"Target: paused within {TARGET_S:.0f} s at p95 — {verdict}.",
        "",
        f"What the app costs while it waits ({args.measure_seconds:.0f} s each; CPU time from /proc/PID/stat in % "
        "of one core, peak RSS):",
        "",
        markdown_table(
            ["phase", "app CPU", "app RSS", "training child CPU", "child RSS"],
            [
                [
                    "waiting for idle, nothing trained yet",
                    f"{idle.cpu_percent:.2f} %",
                    f"{idle.rss_bytes / mib:.0f} MiB",
                    "no process",
                    "—",
                ],
                [
                    "user at work (input every second), training paused",
                    f"{busy_app.cpu_percent:.2f} %",
                    f"{busy_app.rss_bytes / mib:.0f} MiB",
                    f"{busy_child.cpu_percent:.2f} %",
                    f"{busy_child.rss_bytes / mib:.0f} MiB",
                ],
            ],
        ),
        "",
        "The app never loads torch; the child does, and is stopped (giving its memory back) after ten minutes "
        "suspended.",
    ]
    return "\n".join(lines)
