"""`commonweights bench installers`: how big each installer is, and what first run downloads and costs.

Builds the Linux .deb and the Windows NSIS installer with `installers/build.py` (the macOS .dmg needs
macOS), then, from a local folder of wheels (CPU PyTorch and what commonweights needs, fetched from
the package registries once), times first-run setup of the training environment as the app does it
and sums the wheels it installed: the first-run download of a CPU-only machine. The CUDA, ROCm and
MPS builds come from PyTorch's own index, which this machine can't reach: those rows say so.
Target: each installer < 80 MB. Writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from benchmarks.report import machine_line, markdown_table, write_section
from protocol.version import RELEASE_VERSION
from volunteer_app.environment import STEPS, Device, TrainingEnvironment, find_uv, plan_for

__all__ = ["run_bench_installers"]

REPO = Path(__file__).resolve().parents[1]
TARGET_BYTES = 80_000_000


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _build_py(target: str, out: Path, console: Console, doing: str) -> None:
    with console.status(f"{doing} (installers/build.py {target})"):
        subprocess.run([sys.executable, str(REPO / "installers" / "build.py"), target, "--out", str(out)],
                       check=True, capture_output=True)  # fmt: skip


def _build(target: str, out: Path, console: Console) -> Path:
    _build_py(target, out, console, f"building the {target} installer")
    pattern = "commonweights_*_amd64.deb" if target == "linux" else "Commonweights-Setup-*.exe"
    (artifact,) = out.glob(pattern)
    return artifact


def _unpacked(deb: Path) -> int:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[2]) for line in listing.splitlines() if line.split() and line[0] == "-")


def run_bench_installers(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="commonweights-bench-installers-") as tmp:
        work = Path(tmp)
        deb = _build("linux", work / "linux", console)
        rows.append(["Linux .deb", _mb(deb.stat().st_size), f"{_mb(_unpacked(deb))} installed",
                     "met" if deb.stat().st_size < TARGET_BYTES else "**missed**"])  # fmt: skip
        exe = _build("windows", work / "windows", console)
        rows.append(["Windows NSIS .exe", _mb(exe.stat().st_size),
                     "+ Python 3.12 and Qt (PySide6) fetched at install time, not measured here",
                     "met" if exe.stat().st_size < TARGET_BYTES else "**missed**"])  # fmt: skip
        rows.append(["macOS .dmg", "not built here", "needs macOS (the workflow's runner builds it)", "—"])

        wheels = work / "wheels"
        wheels.mkdir()
        _build_py("wheels", wheels, console, "fetching CPU PyTorch and the training environment's wheels")
        env = TrainingEnvironment(work / "training-env")
        plan = plan_for(Device("cpu", "bench"), system="Linux")
        began = time.monotonic()
        with console.status("first-run setup: the training environment, offline from the local wheels") as status:
            env.build(
                plan,
                uv=find_uv(),
                app_version=RELEASE_VERSION,
                python=f"{sys.version_info.major}.{sys.version_info.minor}",
                find_links=[wheels],
                offline=True,
                progress=lambda index, step, line: status.update(f"setup {index + 1}/{len(STEPS)}: {step} {line[:60]}"),
            )
        seconds = time.monotonic() - began
        torch_wheel = next(wheels.glob("torch-*.whl")).stat().st_size
        total = sum(w.stat().st_size for w in wheels.glob("*.whl"))
        installed = sum(f.stat().st_size for f in env.venv.rglob("*") if f.is_file() and not f.is_symlink())
    first_run = [
        ["CPU (Linux, `cpu` build)", _mb(total), f"torch {_mb(torch_wheel)}", _mb(installed), f"{seconds:.0f} s"],
        ["NVIDIA (`cu126`/`cu128`/`cu130` by driver)", "not measured", "PyTorch's index is unreachable here", "—", "—"],
        ["AMD ROCm (`rocm6.4`, Linux)", "not measured", "PyTorch's index is unreachable here", "—", "—"],
        ["Apple silicon (PyPI's build, MPS)", "not measured", "needs macOS", "—", "—"],
    ]
    body = "\n\n".join(
        [
            "## Installers (`commonweights bench installers`)",
            machine_line(),
            "Each installer carries the tray app (no torch), uv and this release's wheel; the training "
            "environment (PyTorch for the device) is built on first run. Target: each installer < 80 MB.",
            markdown_table(["installer", "size", "besides", "target < 80 MB"], rows),
            "First run: the training environment, built as the app does it (uv, offline from a local folder of "
            "the wheels a CPU machine downloads; uv's cache, inside the environment's folder, starts empty). "
            "Download = the wheels installed; time = the whole setup here without the download (unpacking torch "
            "dominates), the Python found on the machine.",
            markdown_table(["device", "first-run download", "of which", "installed", "setup time"], first_run),
        ]
    )
    print(body)
    write_section(args.output, "installers", body)
    return 0
