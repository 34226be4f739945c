"""`commonweights-app` and `commonweights volunteer app`: start the desktop tray app.

    commonweights-app                          # the tray icon; training starts when the PC is idle
    commonweights-app --show settings          # open the settings (in the running app, if there is one)
    commonweights-app --coordinator https://weights.example.org   # use (and remember) a coordinator

Cheap to import: Qt, torch and the controller load inside `run`.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from volunteer_app.tray.app import DesktopApp
    from volunteer_app.tray.controller import Trace

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coordinator", metavar="URL", default=None, help="use this coordinator and remember it in the preferences"
    )
    parser.add_argument(
        "--preferences", type=Path, default=None, metavar="FILE", help="preferences file (default: the user config dir)"
    )
    parser.add_argument("--name", default=None, help="display name on the coordinator (default: the host name)")
    parser.add_argument("--config-dir", type=Path, default=None, metavar="DIR", help="where credentials.toml lives")
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="where downloaded blobs are cached")
    parser.add_argument(
        "--data-dir", type=Path, default=None, metavar="DIR", help="units in progress and the app's statistics"
    )
    parser.add_argument(
        "--show",
        choices=("statistics", "settings"),
        default=None,
        help="open this window (in the app already running, if there is one)",
    )
    parser.add_argument("--no-tray", action="store_true", help="show a normal window instead of a tray icon")
    # For tests and benchmarks.
    parser.add_argument("--poll-interval", type=float, default=0.25, help=argparse.SUPPRESS)
    parser.add_argument("--linger", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--trace", type=Path, default=None, help=argparse.SUPPRESS)


def main(argv: Sequence[str] | None = None) -> int:
    """The `commonweights-app` entry point."""
    multiprocessing.freeze_support()  # a frozen (PyInstaller) app starts its training child through here
    if sys.stderr is not None:  # a crash (Qt, a driver) leaves every thread's Python stack in the log
        faulthandler.enable(all_threads=True)
    parser = argparse.ArgumentParser(prog="commonweights-app", description="The Commonweights desktop tray app.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _trace_writer(path: Path) -> tuple[Trace, Callable[[], None]]:
    """A JSON-lines writer of (kind, fields) with monotonic and wall times, and its closer."""
    out = path.open("a", encoding="utf-8", buffering=1)
    lock = threading.Lock()

    def write(kind: str, fields: Mapping[str, object]) -> None:
        record = {"t": time.monotonic(), "wall": time.time(), "kind": kind, **fields}
        with lock:
            out.write(json.dumps(record, default=str) + "\n")

    return write, out.close


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import platformdirs
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from protocol.version import RELEASE_VERSION
    from volunteer_app.autostart import autostart_for
    from volunteer_app.awake import KeepAwake
    from volunteer_app.environment import TrainingEnvironment, default_root, installation
    from volunteer_app.fullscreen import detect_fullscreen
    from volunteer_app.idle import OtherCpuLoad, detect_idle_source, detect_power_source
    from volunteer_app.preferences import (
        Preferences,
        PreferencesError,
        default_preferences_path,
        load_preferences,
        save_preferences,
    )
    from volunteer_app.thermal import detect_thermometer
    from volunteer_app.tray.app import DesktopApp
    from volunteer_app.tray.controller import AppController, AppPaths, ControllerTuning
    from volunteer_app.tray.single_instance import SingleInstance, instance_key
    from volunteer_app.tray.stats import StatsBook

    def fail(message: str) -> int:
        print(f"commonweights-app: {message}", file=sys.stderr)
        return 2

    prefs_path: Path = args.preferences or default_preferences_path()
    qt_app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "commonweights-app"])
    assert isinstance(qt_app, QApplication)
    qt_app.setApplicationName("Commonweights")
    qt_app.setDesktopFileName("commonweights")
    qt_app.setQuitOnLastWindowClosed(False)

    instance = SingleInstance(instance_key(prefs_path))
    if not instance.claim(args.show or "show"):
        print("commonweights-app: already running; asked it to come forward")
        return 0

    problem: str | None = None
    first_run = not prefs_path.exists()
    try:
        prefs = load_preferences(prefs_path)
    except PreferencesError as error:
        prefs = Preferences()
        problem = f"{error} — using the defaults until you save the settings."
    install = installation()
    if install is not None and first_run and install.coordinator_url and args.coordinator is None:
        args.coordinator = install.coordinator_url  # chosen in the installer
    python: Path | None = None
    if install is not None:  # an installed app trains in the environment first-run setup builds
        env = TrainingEnvironment(default_root())
        python = env.python(RELEASE_VERSION)
        if python is None:
            import shiboken6

            from volunteer_app.tray.setup_window import SetupWindow

            window = SetupWindow(env, install)
            python = window.run()
            # Freed here, on the GUI thread: Python's cycle collector may run on any thread, and a Qt
            # widget destroyed off the GUI thread crashes the app.
            shiboken6.delete(window)
            if python is None:
                instance.release()
                return fail("setup did not finish; start the app again to go on where it stopped")
    if args.coordinator is not None and args.coordinator != prefs.coordinator_url:
        try:
            prefs = dataclasses.replace(prefs, coordinator_url=args.coordinator)
            save_preferences(prefs, prefs_path)
        except PreferencesError as error:
            instance.release()
            return fail(error.message)
        except OSError as error:
            instance.release()
            return fail(f"cannot save the preferences to {prefs_path}: {error}")

    data_dir: Path = args.data_dir or platformdirs.user_data_path("commonweights", appauthor=False) / "volunteer"
    tuning = ControllerTuning() if args.linger is None else ControllerTuning(linger_s=args.linger)
    trace: Trace | None = None
    close_trace: Callable[[], None] | None = None
    if args.trace is not None:
        trace, close_trace = _trace_writer(args.trace)
    controller = AppController(
        prefs,
        idle_source=detect_idle_source(),
        power_source=detect_power_source(),
        load_meter=OtherCpuLoad() if sys.platform.startswith("linux") else None,
        thermometer=detect_thermometer(),
        fullscreen=detect_fullscreen(),
        keep_awake=KeepAwake.for_this_os(),
        paths=AppPaths(args.config_dir, args.cache_dir, args.data_dir, python),
        stats=StatsBook(data_dir / "app-stats.json"),
        save_preferences=lambda p: save_preferences(p, prefs_path),
        autostart=autostart_for(),
        tuning=tuning,
        trace=trace,
        volunteer_name=args.name,
    )
    rebuild = TrainingEnvironment(default_root()).request_rebuild if install is not None else None
    desktop = DesktopApp(
        controller,
        instance=instance,
        poll_interval_s=args.poll_interval,
        use_tray=not args.no_tray,
        rebuild_environment=rebuild,
    )
    if trace is not None:
        _trace_app(desktop, trace)

    def on_signal(*_: object) -> None:
        QTimer.singleShot(0, desktop.quit)  # leave the signal handler; quit from the event loop

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    show = args.show
    if install is not None and first_run and args.coordinator is None and show is None:
        show = "settings"  # an installed app's first run with no coordinator chosen: ask for one
    desktop.start(show=show)
    if problem is not None:
        controller.notify("preferences", "Settings not loaded", problem)
    code = qt_app.exec()
    if close_trace is not None:
        close_trace()
    return code


def _trace_app(desktop: DesktopApp, trace: Trace) -> None:
    """Where the tray icon ended up (once the tray has embedded it), and the quit."""
    from PySide6.QtCore import QTimer

    def placed() -> None:
        tray = desktop.tray
        rect = tray.geometry() if tray is not None else None
        where = None if rect is None else [rect.x(), rect.y(), rect.width(), rect.height()]
        trace("app", {"event": "started", "pid": os.getpid(), "tray": where, "window": desktop.window is not None})

    QTimer.singleShot(1000, placed)
    desktop.quitting.connect(lambda: trace("app", {"event": "quit"}))


if __name__ == "__main__":
    sys.exit(main())
