"""`commonweights bench private` at a tiny scale: a real coordinator and two real volunteer processes,
each with its own folder of text, once served by the coordinator and once as `data = "volunteer"`; the
table lands in its section."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from benchmarks.cli import _epsilons
from commonweights.cli import main


@pytest.mark.slow
def test_bench_private_runs_served_and_private_and_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nkept\n")
    code = main(["bench", "private", "--volunteers", "2", "--rounds", "1", "--inner-steps", "3",
                 "--epsilons", "inf", "--output", str(out)])  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert "kept" in text and text.count("<!-- bench:private -->") == 1
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"served", "private-eps-inf"}
    private = [cell.strip() for cell in rows["private-eps-inf"].split("|")[1:-1]]
    assert private[1] == "∞" and private[3] == "∞"  # no noise: the target and the spent ε are both infinite
    assert private[9] == "finished" and int(private[8]) >= 1  # it trained a version, on the volunteers' files
    assert math.isfinite(float(private[6]))


def test_the_epsilon_list_takes_inf_and_refuses_what_is_not_a_positive_number() -> None:
    assert _epsilons("inf,8,2") == (math.inf, 8.0, 2.0)
    for bad in ("", "8,x", "0", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            _epsilons(bad)
