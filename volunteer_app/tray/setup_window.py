"""First-run setup of an installed app: a window that builds the training environment (the PyTorch
build this machine's device wants; volunteer_app.environment) with a progress bar, says what went
wrong and offers a retry, and closes once training can start.

    >>> window = SetupWindow(TrainingEnvironment(default_root()), install)
    >>> python = window.run()          # the interpreter the training child runs, or None if the user quit
"""

from __future__ import annotations

import threading
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from protocol.version import RELEASE_VERSION
from volunteer_app.environment import (
    STEPS,
    Device,
    Installation,
    Plan,
    SetupError,
    TrainingEnvironment,
    detect_device,
    find_uv,
    plan_for,
)

__all__ = ["SetupWindow"]

STEP_TITLES = {
    "python": "Preparing Python",
    "torch": "Downloading PyTorch",
    "app": "Installing the training code",
    "verify": "Checking that training starts",
}


class _Relay(QObject):
    """Carries the build thread's news to the window's thread."""

    step = Signal(int, str, str)
    done = Signal(object, str)  # the installed Plan (None on failure), the error message


class SetupWindow(QDialog):
    def __init__(self, env: TrainingEnvironment, install: Installation, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Commonweights — Setting up")
        self.setObjectName("setup")
        self.setMinimumWidth(520)
        self.env, self.install = env, install
        self.device = detect_device()
        self.plan = plan_for(self.device)
        self.python: Path | None = None

        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.step = QLabel()
        self.bar = QProgressBar()
        self.bar.setRange(0, len(STEPS))
        self.line = QLabel()
        self.line.setObjectName("line")
        self.line.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.line.setWordWrap(True)
        self.cpu_only = QCheckBox("Use the CPU only (a smaller download)")
        self.cpu_only.setVisible(self.device.kind != "cpu")
        self.cpu_only.toggled.connect(self._describe)
        self.retry = QPushButton("Start")  # "Retry" once a try stopped
        self.retry.setObjectName("retry")
        self.retry.clicked.connect(self.start)
        self.quit = QPushButton("Quit")
        self.quit.clicked.connect(self.reject)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.retry)
        buttons.addWidget(self.quit)
        layout = QVBoxLayout(self)
        for widget in (self.summary, self.cpu_only, self.step, self.bar, self.line):
            layout.addWidget(widget)
        layout.addLayout(buttons)

        self._relay = _Relay()
        self._relay.step.connect(self._on_step)
        self._relay.done.connect(self._on_done)
        self._thread: threading.Thread | None = None
        self._describe()

    def _chosen(self) -> Plan:
        if self.cpu_only.isChecked():
            return plan_for(Device("cpu", self.device.name))
        return self.plan

    def _describe(self) -> None:
        plan = self._chosen()
        text = (
            f"Commonweights trains on this computer's {plan.device.kind.upper()} ({plan.device.name}). "
            f"It now downloads the PyTorch build for it ({plan.variant}), once; later starts skip this."
        )
        if plan.note:
            text += f"\n{plan.note}."
        self.summary.setText(text)

    def run(self) -> Path | None:
        """Show the window and build; the training environment's interpreter, or None if the user quit.
        With a GPU it waits for Start, so that "CPU only" can be chosen first."""
        if self.device.kind == "cpu":
            self.start()
        self.exec()
        if self.python is not None and self._thread is not None:
            self._thread.join()  # it ends right after its last report; see `_build`
        return self.python

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self.retry.setEnabled(False)
        self.cpu_only.setEnabled(False)
        self.line.setText("")
        plan = self._chosen()
        self._thread = threading.Thread(
            target=_build, args=(self.env, self.install, plan, self._relay), name="commonweights-setup", daemon=True
        )
        self._thread.start()

    def _on_step(self, index: int, step: str, line: str) -> None:
        self.step.setText(f"{STEP_TITLES.get(step, step)} ({index + 1} of {len(STEPS)})")
        self.bar.setValue(index)
        if line:
            self.line.setText(line[-200:])

    def _on_done(self, installed: Plan | None, error: str) -> None:
        if installed is None:
            self.retry.setText("Retry")
            self.step.setText("Setup stopped")
            self.line.setText(error)
            self.retry.setEnabled(True)
            self.cpu_only.setEnabled(True)
            return
        self.bar.setValue(len(STEPS))
        self.python = self.env.python(RELEASE_VERSION)
        self.accept()


def _build(env: TrainingEnvironment, install: Installation, plan: Plan, relay: _Relay) -> None:
    """The build thread. It holds no reference to the window: the last reference to a Qt widget,
    dropped on this thread, would destroy the widget here, off the GUI thread, and crash the app
    (seen: a segfault while the GUI thread went on)."""
    try:
        installed = env.build(
            plan,
            uv=find_uv(),
            app_version=RELEASE_VERSION,
            find_links=install.find_links,
            offline=install.offline,
            progress=lambda index, step, line: relay.step.emit(index, step, line),
        )
    except SetupError as error:
        relay.done.emit(None, error.message + "\nWhat was downloaded is kept: Retry goes on from there.")
        return
    except Exception as error:  # a bug or an OS error: say it, keep the window usable
        relay.done.emit(None, f"setup failed: {error}")
        return
    relay.done.emit(installed, "")
