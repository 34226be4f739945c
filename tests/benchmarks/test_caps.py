"""`bench caps` end to end at a few seconds per cap: a real training process, a real duty cycle, the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from commonweights.cli import main
from volunteer_app.duty import DutyCycle


@pytest.mark.skipif(
    not DutyCycle.supported() or not Path("/proc/self/stat").exists(), reason="SIGSTOP and /proc (Linux)"
)
def test_bench_caps_measures_a_training_process_under_the_duty_cycle(tmp_path: Path) -> None:
    output, results = tmp_path / "benchmarks.md", tmp_path / "caps.json"
    code = main(
        [
            "bench",
            "caps",
            "--caps",
            "30",
            "--seconds",
            "4",
            "--warmup",
            "6",
            "--output",
            str(output),
            "--json",
            str(results),
        ]
    )
    assert code == 0
    measured = json.loads(results.read_text())
    assert measured["reference_share"] > 20  # the uncapped process trained (at least a fifth of a core)
    assert measured["caps"]["30"]["relative"] < 70  # and the capped one was held well below it
    assert "<!-- bench:caps -->" in output.read_text() and "| 30 % |" in output.read_text()


def test_bench_caps_refuses_a_cap_outside_1_to_100(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "caps", "--caps", "0,50"]) == 2
    assert "percentages from 1 to 100" in capsys.readouterr().err
