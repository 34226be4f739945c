"""`commonweights bench overlap` at a tiny scale: real coordinator and volunteer processes, one of
them throttled, once without and once with overlapped rounds; the table lands in its section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from commonweights.cli import main


@pytest.mark.slow
def test_bench_overlap_runs_each_setting_and_writes_its_section(tmp_path: Path, small_dataset: Path) -> None:
    out, raw = tmp_path / "benchmarks.md", tmp_path / "bench.json"
    out.write_text("# Benchmarks\n\nkept\n")
    code = main([
        "bench", "overlap", "--volunteers", "2", "--slow-percent", "50", "--rounds", "2", "--inner-steps", "3",
        "--overlap", "0,1", "--dataset", str(small_dataset), "--output", str(out), "--json", str(raw),
    ])  # fmt: skip
    assert code == 0
    waited, overlapped = json.loads(raw.read_text())
    assert (waited["overlap"], overlapped["overlap"]) == (0, 1)
    # The volunteers were made trusted first (a warm-up campaign), but a trusted volunteer's unit may still
    # be replicated, and a replica can close a round late: the counts are reported, not fixed.
    for run in (waited, overlapped):
        assert run["tokens"] >= 2 * 2 * 3 * 8 * 128 and run["tokens_per_s"] > 0 and run["rounds"] >= 1
        assert 0 <= run["late"] <= run["accepted"]
    text = out.read_text()
    assert "kept" in text and text.count("<!-- bench:overlap -->") == 1 and "| rounds.overlap |" in text
