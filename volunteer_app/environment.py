"""The training environment: a Python with the PyTorch build this machine's device wants, made on first run.

The app a volunteer installs is small and never imports torch; training runs in a child process
from this environment, which `uv` builds the first time (and again when the app is upgraded):

    >>> device = detect_device()                         # NVIDIA + driver, ROCm, Apple silicon, or CPU
    >>> plan = plan_for(device)                          # which torch build, from which index
    >>> env = TrainingEnvironment(default_root())
    >>> env.build(plan, uv=find_uv(), app_version="0.1.0")  # resumable: done steps are skipped
    >>> env.python()                                     # the interpreter the training child runs

Steps: `python` (a virtual environment of a uv-managed or given Python), `torch` (the planned build),
`app` (this release of commonweights, from the wheels beside the app or the package index), `verify`
(torch imports and sees the device; a GPU build that doesn't is replaced by the CPU build, and the
reason recorded). Each finished step is recorded in `setup.json`, so an interrupted setup resumes
where it stopped and uv's cache keeps what was downloaded. A failed download raises SetupError with
what to do; offline installs name a local wheel directory (`find_links`, `offline`).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final, Literal

from training.atomic_write import write_atomically

__all__ = [
    "STEPS",
    "TORCH_VERSION",
    "Device",
    "Installation",
    "Plan",
    "SetupError",
    "TrainingEnvironment",
    "child_environment",
    "default_root",
    "detect_device",
    "find_uv",
    "installation",
    "plan_for",
]

DeviceKind = Literal["cuda", "rocm", "mps", "cpu"]
TORCH_VERSION: Final = "2.13.0"  # the build this release is tested with
PYTORCH_INDEX: Final = "https://download.pytorch.org/whl"
# CUDA builds of TORCH_VERSION, newest first, with the least NVIDIA driver each needs (Linux; Windows
# drivers are numbered alike). A driver older than the last gets the CPU build and a message.
CUDA_BUILDS: Final = (("cu130", (580, 0)), ("cu128", (570, 0)), ("cu126", (525, 60)))
ROCM_BUILD: Final = "rocm6.4"
STEPS: Final = ("python", "torch", "app", "verify")
STATE_FILE: Final = "setup.json"
INSTALL_FILE: Final = "install.json"
_CALL_TIMEOUT_S: Final = 10.0
# What uv says when it could not reach an index: told apart so the message says "offline".
_NETWORK = re.compile(
    r"(dns error|failed to connect|connection refused|timed out|network is unreachable|"
    r"failed to fetch|error sending request|could not connect|tcp connect error|no route to host)",
    re.IGNORECASE,
)

Progress = Callable[[int, str, str], None]  # (step index in STEPS, step name, uv's latest line)


class SetupError(Exception):
    """Why the environment could not be built, said so the volunteer knows what to do."""

    def __init__(self, step: str, message: str, *, offline: bool = False) -> None:
        super().__init__(message)
        self.step, self.message, self.offline = step, message, offline


@dataclass(frozen=True)
class Device:
    kind: DeviceKind
    name: str
    driver: str | None = None  # the GPU driver's version, where one was asked


@dataclass(frozen=True)
class Plan:
    device: Device
    torch: str  # the requirement, e.g. "torch==2.13.0"
    index: str | None  # the package index the torch build comes from (None: the default one)
    note: str = ""  # why this build, when it is not the obvious one

    @property
    def variant(self) -> str:
        """The build's name: cpu, cu128, rocm6.4, or default (PyPI's, which on macOS has MPS)."""
        return self.index.rsplit("/", 1)[-1] if self.index else "default"

    @property
    def for_gpu(self) -> bool:
        """Whether this build drives a GPU through torch.cuda (CUDA and ROCm builds)."""
        return self.variant.startswith(("cu", "rocm"))


Runner = Callable[[Sequence[str]], str | None]  # a command's stdout, None when it could not run


# Console programs (uv, nvidia-smi, the training Python) started by a windowed app open no console window.
NO_WINDOW: Final = getattr(subprocess, "CREATE_NO_WINDOW", 0)


def child_environment() -> dict[str, str]:
    """The environment for programs this app starts: a frozen app's own libraries (PyInstaller puts
    them on LD_LIBRARY_PATH) must not shadow the system's or the training environment's."""
    env = dict(os.environ)
    if getattr(sys, "frozen", False):
        original = env.pop("LD_LIBRARY_PATH_ORIG", None)
        env.pop("LD_LIBRARY_PATH", None)
        if original:
            env["LD_LIBRARY_PATH"] = original
    return env


def _run(argv: Sequence[str]) -> str | None:
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=_CALL_TIMEOUT_S,
            check=False,
            env=child_environment(),
            creationflags=NO_WINDOW,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def detect_device(*, run: Runner = _run, system: str | None = None, machine: str | None = None) -> Device:
    """The device the training environment is built for: an NVIDIA GPU (asked with nvidia-smi, which
    comes with the driver), an AMD GPU with ROCm (Linux), Apple silicon, or the CPU."""
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    answer = run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if answer:
        first = answer.strip().splitlines()[0]
        name, _, driver = first.rpartition(",")
        if name.strip() and driver.strip():
            return Device("cuda", name.strip(), driver.strip())
    if system == "Linux":
        rocm = run(["rocminfo"])
        for agent in re.split(r"\n(?=\*+\s*\n?Agent \d+|Agent \d+)", rocm or ""):
            if re.search(r"Device Type:\s*GPU", agent):
                marketing = re.search(r"Marketing Name:\s*(.+)", agent)
                return Device("rocm", marketing.group(1).strip() if marketing else "AMD GPU")
    if system == "Darwin" and machine in ("arm64", "aarch64"):
        return Device("mps", "Apple silicon")
    return Device("cpu", platform.processor() or machine or "CPU")


def _driver(version: str | None) -> tuple[int, int] | None:
    """(major, minor) of a driver version: "525.105.17" is (525, 105), newer than "525.60.13"."""
    match = re.match(r"(\d+)(?:\.(\d+))?", version or "")
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def plan_for(device: Device, *, system: str | None = None) -> Plan:
    """Which torch build fits `device`, and from where."""
    system = system or platform.system()
    torch = f"torch=={TORCH_VERSION}"
    if device.kind == "cuda":
        driver = _driver(device.driver)
        for build, least in CUDA_BUILDS:
            if driver is not None and driver >= least:
                return Plan(device, torch, f"{PYTORCH_INDEX}/{build}")
        oldest = ".".join(map(str, CUDA_BUILDS[-1][1]))
        if driver is None:
            note = "no NVIDIA driver answered, and PyTorch's CUDA builds need one: install it"
        else:
            note = (
                f"the NVIDIA driver {device.driver} is older than {oldest}, which PyTorch's CUDA builds need: update it"
            )
        return _cpu_plan(device, system, note)
    if device.kind == "rocm" and system == "Linux":
        return Plan(device, torch, f"{PYTORCH_INDEX}/{ROCM_BUILD}")
    return _cpu_plan(device, system, "")


def _cpu_plan(device: Device, system: str, note: str) -> Plan:
    # PyPI's torch is the CPU build on Windows and macOS (MPS included); on Linux it brings CUDA libraries.
    return Plan(device, f"torch=={TORCH_VERSION}", f"{PYTORCH_INDEX}/cpu" if system == "Linux" else None, note)


def default_root() -> Path:
    """Where the training environment lives: the user's data folder, beside nothing they keep."""
    from platformdirs import user_data_path

    return user_data_path("commonweights", appauthor=False) / "training-env"


def find_uv() -> Path:
    """The uv binary: COMMONWEIGHTS_UV, the one installed with the app, or one on PATH."""
    given = os.environ.get("COMMONWEIGHTS_UV")
    if given:
        return Path(given)
    beside = Path(sys.executable).with_name("uv.exe" if os.name == "nt" else "uv")
    if beside.is_file():
        return beside
    try:
        from uv import find_uv_bin

        return Path(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    if found is None:
        raise SetupError("python", "uv is missing: reinstall the app (it ships uv), or install uv")
    return Path(found)


@dataclass(frozen=True)
class Installation:
    """What an installer wrote beside the app (`install.json`): that this is an installed app, whose
    training runs from a training environment, and where first-run setup finds this release's wheel.

    `COMMONWEIGHTS_SETUP_FIND_LINKS` (folders, os.pathsep-separated) and `COMMONWEIGHTS_SETUP_OFFLINE=1`
    add wheel folders and keep setup off the package indexes: for sites without internet access, and
    for tests."""

    path: Path
    wheels: Path
    coordinator_url: str | None = None

    @property
    def find_links(self) -> list[Path]:
        extra = os.environ.get("COMMONWEIGHTS_SETUP_FIND_LINKS", "")
        return [self.wheels, *(Path(p) for p in extra.split(os.pathsep) if p)]

    @property
    def offline(self) -> bool:
        return os.environ.get("COMMONWEIGHTS_SETUP_OFFLINE") == "1"


def installation() -> Installation | None:
    """The installer's record, from COMMONWEIGHTS_INSTALL or beside the app's executable; None for a
    development install (`pip install commonweights[gui]`), which trains in its own Python."""
    given = os.environ.get("COMMONWEIGHTS_INSTALL")
    executable = Path(sys.executable).resolve().parent
    # Beside a frozen app or an app environment's Scripts folder; a macOS bundle's Contents/Resources.
    beside = [
        executable / INSTALL_FILE,
        executable.parent / INSTALL_FILE,
        executable.parent / "Resources" / INSTALL_FILE,
    ]
    candidates = [Path(given)] if given else beside
    for path in candidates:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(raw, dict):
            continue
        url = raw.get("coordinator_url")
        return Installation(path, path.parent / str(raw.get("wheels", "wheels")), url if isinstance(url, str) else None)
    return None


@dataclass
class _State:
    plan: dict[str, object] = field(default_factory=dict)
    app_version: str = ""
    done: list[str] = field(default_factory=list)
    verified: dict[str, object] = field(default_factory=dict)


class TrainingEnvironment:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.venv = root / "venv"

    @property
    def interpreter(self) -> Path:
        return self.venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def _load(self) -> _State:
        try:
            raw = json.loads((self.root / STATE_FILE).read_text(encoding="utf-8"))
            return _State(
                plan=dict(raw.get("plan", {})),
                app_version=str(raw.get("app_version", "")),
                done=[str(s) for s in raw.get("done", []) if s in STEPS],
                verified=dict(raw.get("verified", {})),
            )
        except (OSError, ValueError, TypeError, AttributeError):
            return _State()

    def _save(self, state: _State) -> None:
        write_atomically(self.root / STATE_FILE, json.dumps(asdict(state), indent=2), mode=0o644)

    def status(self) -> dict[str, object]:
        """What setup recorded: the plan, the steps done, what the last check found."""
        return asdict(self._load())

    def python(self, app_version: str | None = None) -> Path | None:
        """The environment's interpreter once every step is done (for `app_version`, if given)."""
        state = self._load()
        ready = all(step in state.done for step in STEPS) and self.interpreter.exists()
        if not ready or (app_version is not None and state.app_version != app_version):
            return None
        return self.interpreter

    def build(
        self,
        plan: Plan,
        *,
        uv: Path,
        app_version: str,
        app_requirement: str | None = None,
        python: str | None = None,
        find_links: Sequence[Path] = (),
        offline: bool = False,
        progress: Progress | None = None,
    ) -> Plan:
        """Make the environment for `plan` (resuming a previous try); the plan that was installed,
        which is the CPU one when the planned GPU build could not see its device.

        `app_requirement`: what to install for the `app` step (default: commonweights==app_version);
        `python`: uv's --python (default: this interpreter's version, downloaded by uv if missing);
        `find_links`: folders of wheels to install from (the app's own, or a test's); `offline`: only those.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        state = self._load()
        if state.plan != _plan_dict(plan):
            state.done = [s for s in state.done if s == "python"]  # another build of torch: keep the venv
        if state.app_version != app_version:
            state.done = [s for s in state.done if s in ("python", "torch")]
        if "python" in state.done and not self.interpreter.exists():
            state.done = []
        state.plan, state.app_version = _plan_dict(plan), app_version
        self._save(state)
        report = progress or (lambda index, step, line: None)
        uv_call = _Uv(uv, report, find_links, offline, self.root / "uv-cache")
        for index, step in enumerate(STEPS):
            if step in state.done:
                report(index, step, "done before")
                continue
            report(index, step, "")
            if step == "python":
                spec = python or f"{sys.version_info.major}.{sys.version_info.minor}"
                if self.venv.exists():
                    shutil.rmtree(self.venv)  # half made: start it again
                uv_call(index, step, ["venv", "--python", spec, str(self.venv)])
            elif step == "torch":
                # Reinstalled: torch==X is satisfied by any local build of X (+cpu, +cu128), so a
                # changed plan would otherwise keep the build it had.
                uv_call(index, step, ["pip", "install", "--reinstall-package", "torch", "--python",
                                      str(self.interpreter), *_index(plan), plan.torch])  # fmt: skip
            elif step == "app":
                requirement = app_requirement or f"commonweights=={app_version}"
                uv_call(index, step, ["pip", "install", "--python", str(self.interpreter), requirement])
            else:
                found = self._verify(plan)
                if found is None and plan.for_gpu:
                    reason = f"the {plan.variant} build of PyTorch does not see the {plan.device.name}"
                    plan = Plan(plan.device, plan.torch, _cpu_plan(plan.device, platform.system(), "").index, reason)
                    report(index, step, f"{reason}; installing the CPU build instead")
                    uv_call(
                        index,
                        step,
                        ["pip", "install", "--reinstall-package", "torch", "--python", str(self.interpreter),
                         *_index(plan), plan.torch],
                    )  # fmt: skip
                    state.plan = _plan_dict(plan)
                    found = self._verify(plan)
                if found is None:
                    raise SetupError(step, "PyTorch was installed but does not start; run setup again to repair it")
                state.verified = found
            state.done.append(step)
            self._save(state)
        return plan

    def _verify(self, plan: Plan) -> dict[str, object] | None:
        """What torch says in the environment; None when it fails or lacks the planned device."""
        script = (
            "import json, torch, volunteer_app.worker\n"
            "mps = getattr(torch.backends, 'mps', None)\n"
            "print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(),"
            " 'hip': torch.version.hip, 'mps': bool(mps and mps.is_available())}))"
        )
        try:
            done = subprocess.run(
                [str(self.interpreter), "-I", "-c", script],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
                env=child_environment(),
                cwd=self.root,
                creationflags=NO_WINDOW,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode != 0:
            return None
        try:
            found = dict(json.loads(done.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError, TypeError):
            return None
        if plan.for_gpu and not found.get("cuda"):
            return None  # ROCm builds answer through torch.cuda too
        return found

    def request_rebuild(self) -> None:
        """Have the next start build PyTorch and the app again (the Python is kept): after a driver
        update, or to choose another build. Nothing changes while the app runs."""
        state = self._load()
        state.done = [step for step in state.done if step == "python"]
        self._save(state)

    def remove(self) -> None:
        """Delete the environment (uninstall, or a clean rebuild)."""
        shutil.rmtree(self.root, ignore_errors=True)


def _plan_dict(plan: Plan) -> dict[str, object]:
    return {"device": asdict(plan.device), "torch": plan.torch, "index": plan.index}


def _index(plan: Plan) -> list[str]:
    # The torch build's index comes first (uv takes a package from the first index that has it);
    # what it lacks comes from the default index.
    return ["--index", plan.index] if plan.index else []


class _Uv:
    """Runs uv, passing its output line by line to `report`, and turns its failures into SetupError."""

    def __init__(self, uv: Path, report: Progress, find_links: Sequence[Path], offline: bool, cache: Path) -> None:
        self.uv, self.report, self.cache = uv, report, cache
        self.sources = [arg for folder in find_links for arg in ("--find-links", str(folder))]
        if offline:
            self.sources += ["--no-index", "--offline"]

    def __call__(self, index: int, step: str, args: list[str]) -> None:
        command = [str(self.uv), "--no-config", *args]  # a user's uv.toml has no say here
        if args[0] == "pip":
            command += self.sources
        elif "--offline" in self.sources:
            command.append("--offline")
        # uv's cache lives in the environment's folder: removing the environment frees the gigabytes
        # (uv installs by hard links from its cache), and a resumed setup still finds its downloads.
        env = {**child_environment(), "UV_NO_PROGRESS": "1", "NO_COLOR": "1", "UV_CACHE_DIR": str(self.cache)}
        try:
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                errors="replace",
                cwd=self.cache.parent,
                creationflags=NO_WINDOW,
            )
        except OSError as error:
            raise SetupError(step, f"could not run uv ({self.uv}): {error}") from error
        tail: list[str] = []
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                tail = [*tail[-19:], line]
                self.report(index, step, line)
        if process.wait() != 0:
            text = "\n".join(tail)
            if _NETWORK.search(text):
                raise SetupError(
                    step,
                    "could not download what the training environment needs (offline, or the server did not "
                    f"answer); check the connection and retry — what was downloaded is kept.\n{tail[-1]}",
                    offline=True,
                )
            raise SetupError(step, f"setting up the training environment failed at '{step}':\n{text}")
