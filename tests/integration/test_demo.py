"""The README's main command, shrunk: the demo trains and its holdout loss falls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_trains_with_real_processes_and_reports_a_falling_loss(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "commonweights", "demo", "--volunteers", "2", "--rounds", "3", "--inner-steps", "10",
         "--data-dir", str(tmp_path / "demo"), "--timeout", "400"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "holdout loss" in result.stdout and "(fell)" in result.stdout
    assert "3 versions" in result.stdout and "0 rejected" in result.stdout
    # It ends with the model exported as a Hugging Face folder with its card.
    assert "the trained model:" in result.stdout
    assert {"config.json", "model.safetensors", "README.md"} <= {
        p.name for p in (tmp_path / "demo" / "model").iterdir()
    }
    # Everything it started has stopped: the coordinator's port is free for the next run.
    assert (tmp_path / "demo" / "logs" / "coordinator.log").exists()
    assert len(list((tmp_path / "demo" / "logs").glob("volunteer-*.log"))) == 2
