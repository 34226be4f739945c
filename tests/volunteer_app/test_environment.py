"""The training environment (volunteer_app/environment.py): the device is detected from what the
driver tools say, the matching PyTorch build is planned, and uv builds the environment — here from a
local folder of wheels with the CPU build, offline — resuming where an interrupted setup stopped and
saying "offline" when an index can't be reached."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from protocol.version import RELEASE_VERSION
from volunteer_app.environment import (
    STEPS,
    TORCH_VERSION,
    Device,
    Plan,
    SetupError,
    TrainingEnvironment,
    detect_device,
    find_uv,
    plan_for,
)

REPO = Path(__file__).resolve().parents[2]
NVIDIA_SMI = "NVIDIA GeForce RTX 4070, 560.35.03\nNVIDIA GeForce RTX 3060, 560.35.03\n"
ROCMINFO = """*******
Agent 1
*******
  Name:                    AMD Ryzen 9 7950X 16-Core Processor
  Marketing Name:          AMD Ryzen 9 7950X 16-Core Processor
  Device Type:             CPU
*******
Agent 2
*******
  Name:                    gfx1100
  Marketing Name:          AMD Radeon RX 7900 XTX
  Device Type:             GPU
"""


def _tools(**answers: str) -> object:
    """What the driver tools answer on a machine that has them (None: not installed)."""

    def run(argv: Sequence[str]) -> str | None:
        return answers.get(argv[0].replace("-", "_"))

    return run


@pytest.mark.parametrize(
    ("answers", "system", "machine", "expected"),
    [
        ({"nvidia_smi": NVIDIA_SMI}, "Linux", "x86_64", Device("cuda", "NVIDIA GeForce RTX 4070", "560.35.03")),
        ({"nvidia_smi": NVIDIA_SMI}, "Windows", "AMD64", Device("cuda", "NVIDIA GeForce RTX 4070", "560.35.03")),
        ({"rocminfo": ROCMINFO}, "Linux", "x86_64", Device("rocm", "AMD Radeon RX 7900 XTX")),
        ({"rocminfo": ROCMINFO}, "Windows", "AMD64", None),  # no ROCm build of PyTorch for Windows
        ({}, "Darwin", "arm64", Device("mps", "Apple silicon")),
        ({}, "Darwin", "x86_64", None),
        ({}, "Linux", "x86_64", None),
    ],
)
def test_the_device_is_what_the_driver_tools_report(
    answers: dict[str, str], system: str, machine: str, expected: Device | None
) -> None:
    found = detect_device(run=_tools(**answers), system=system, machine=machine)  # type: ignore[arg-type]
    if expected is None:
        assert found.kind == "cpu"
    else:
        assert found == expected


@pytest.mark.parametrize(
    ("device", "system", "variant", "noted"),
    [
        (Device("cuda", "RTX 5090", "580.65.06"), "Linux", "cu130", False),
        (Device("cuda", "RTX 4070", "572.16"), "Windows", "cu128", False),
        (Device("cuda", "RTX 3060", "535.183.01"), "Linux", "cu126", False),
        (Device("cuda", "RTX 3060", "525.105.17"), "Linux", "cu126", False),  # 525.105 is newer than 525.60
        (Device("cuda", "RTX 3060", "525.53"), "Linux", "cpu", True),
        (Device("cuda", "GTX 1080", "470.256.02"), "Linux", "cpu", True),  # too old for any CUDA build
        (Device("cuda", "GTX 1080", "470.256.02"), "Windows", "default", True),
        (Device("rocm", "RX 7900 XTX"), "Linux", "rocm6.4", False),
        (Device("mps", "Apple silicon"), "Darwin", "default", False),  # PyPI's macOS wheels have MPS
        (Device("cpu", "x86_64"), "Linux", "cpu", False),  # PyPI's Linux wheel would bring CUDA libraries
        (Device("cpu", "x86_64"), "Windows", "default", False),
    ],
)
def test_each_device_gets_the_pytorch_build_it_can_use(device: Device, system: str, variant: str, noted: bool) -> None:
    plan = plan_for(device, system=system)
    assert plan.torch == f"torch=={TORCH_VERSION}"
    assert plan.variant == variant
    assert bool(plan.note) == noted
    if noted:
        assert "update it" in plan.note
    assert plan.for_gpu == variant.startswith(("cu", "rocm"))


def _uv() -> Path:
    try:
        return find_uv()
    except SetupError:
        pytest.skip("uv is not installed (commonweights[gui] brings it)")


def _cpu_plan() -> Plan:
    return plan_for(Device("cpu", "test CPU"), system="Linux")


def _python_spec() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.mark.slow
def test_setup_builds_the_environment_offline_from_a_wheel_folder_and_resumes_after_a_failure(
    tmp_path: Path, wheelhouse: Path
) -> None:
    env = TrainingEnvironment(tmp_path / "training-env")
    seen: list[tuple[str, str]] = []
    uv = _uv()
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    # The first try has no torch to install: it stops at that step, having made the Python.
    with pytest.raises(SetupError) as stopped:
        env.build(_cpu_plan(), uv=uv, app_version=RELEASE_VERSION, python=_python_spec(), find_links=[empty],
                  offline=True)  # fmt: skip
    assert stopped.value.step == "torch" and not stopped.value.offline
    assert "torch" in stopped.value.message
    assert env.status()["done"] == ["python"] and env.python() is None

    installed = env.build(
        _cpu_plan(),
        uv=uv,
        app_version=RELEASE_VERSION,
        python=_python_spec(),
        find_links=[wheelhouse],
        offline=True,
        progress=lambda index, step, line: seen.append((step, line)),
    )
    assert installed == _cpu_plan()
    assert ("python", "done before") in seen, "the Python made by the first try is kept"
    assert [s for s, _ in seen if s == "torch"], "uv's output reached the progress callback"
    python = env.python(RELEASE_VERSION)
    assert python is not None and python == env.interpreter
    assert env.python("0.0.0") is None, "an upgraded app rebuilds its part"
    verified = env.status()["verified"]
    assert isinstance(verified, dict) and str(verified["torch"]).startswith(TORCH_VERSION)
    assert verified["cuda"] is False
    # The environment trains: torch and the worker import there, and it is not this test's Python.
    out = subprocess.run(
        [str(python), "-c", "import sys, torch, volunteer_app.worker; print(sys.prefix, torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith(str(env.venv)) and TORCH_VERSION in out

    seen.clear()
    env.build(_cpu_plan(), uv=uv, app_version=RELEASE_VERSION, find_links=[wheelhouse], offline=True,
              progress=lambda index, step, line: seen.append((step, line)))  # fmt: skip
    assert seen == [(step, "done before") for step in STEPS], "a finished setup does nothing again"


def test_an_index_that_cannot_be_reached_is_reported_as_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UV_HTTP_RETRIES", "0")
    env = TrainingEnvironment(tmp_path / "training-env")
    nowhere = Plan(Device("cpu", "test CPU"), f"torch=={TORCH_VERSION}", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("UV_DEFAULT_INDEX", "http://127.0.0.1:9/simple")
    with pytest.raises(SetupError) as stopped:
        env.build(nowhere, uv=_uv(), app_version=RELEASE_VERSION, python=_python_spec())
    assert stopped.value.offline and stopped.value.step == "torch"
    assert "check the connection and retry" in stopped.value.message
    assert env.status()["done"] == ["python"]


def test_setup_dry_run_names_the_device_and_the_build() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "commonweights", "volunteer", "setup", "--dry-run", "--device", "cpu"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "device: cpu" in done.stderr
    assert f"torch=={TORCH_VERSION}" in done.stderr


@pytest.mark.slow
def test_a_gpu_build_that_does_not_see_its_gpu_is_replaced_by_the_cpu_build(tmp_path: Path, wheelhouse: Path) -> None:
    """The planned CUDA build is installed (here the folder's only torch, which sees no GPU on this
    machine, as a CUDA build does with a broken driver): verify finds no GPU and setup falls back."""
    env = TrainingEnvironment(tmp_path / "training-env")
    planned = plan_for(Device("cuda", "RTX 4070", "570.86.10"), system="Linux")
    assert planned.variant == "cu128"
    seen: list[str] = []
    installed = env.build(
        planned,
        uv=_uv(),
        app_version=RELEASE_VERSION,
        python=_python_spec(),
        find_links=[wheelhouse],
        offline=True,
        progress=lambda index, step, line: seen.append(line),
    )
    assert installed.variant == "cpu" and not installed.for_gpu
    assert "does not see the RTX 4070" in installed.note
    assert any("installing the CPU build instead" in line for line in seen)
    assert env.python(RELEASE_VERSION) == env.interpreter
    assert env.status()["plan"] == {"device": {"kind": "cuda", "name": "RTX 4070", "driver": "570.86.10"},
                                    "torch": f"torch=={TORCH_VERSION}", "index": installed.index}  # fmt: skip
