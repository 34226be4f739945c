from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.diloco import bench_configs, parse_configs
from commonweights.cli import main
from training.simulate import SimConfig


def test_configs_parse_with_an_optional_outer_optimizer() -> None:
    assert parse_configs("50:int8, 100:dct:average") == [(50, "int8", None), (100, "dct", "average")]
    for bad in ("50", "x:int8", "0:int8", "50:int8:a:b", ""):
        with pytest.raises(ValueError):
            parse_configs(bad)


def test_the_reference_comes_first_then_the_single_worker_then_diloco() -> None:
    configs = bench_configs(SimConfig(outer_lr=0.5), [(10, "int8", None), (20, "dct", "average")])
    assert [c.mode for c in configs] == ["data_parallel", "single", "diloco", "diloco"]
    assert (configs[2].inner_steps, configs[2].outer, configs[2].outer_lr) == (10, "nesterov", 0.5)
    assert (configs[3].codec, configs[3].outer, configs[3].outer_lr) == ("dct", "average", None)
    with pytest.raises(ValueError):
        bench_configs(SimConfig(), [(10, "zip", None)])


def test_bench_writes_its_tables_into_a_section_and_keeps_the_rest(small_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nhand-written notes\n\n<!-- bench:diloco -->\nOLD-RESULTS\n<!-- /bench:diloco -->\n")
    code = main([
        "bench", "diloco", "--data", str(small_dataset), "--workers", "2", "--steps", "4", "--batch-size", "2",
        "--seq-len", "32", "--eval-tokens", "2048", "--configs", "2:int8,2:topk:average", "--codec-params", "20000",
        "--output", str(out), "--quiet",
    ])  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert "hand-written notes" in text and "OLD-RESULTS" not in text
    assert text.count("<!-- bench:diloco -->") == 1
    for expected in ("data-parallel", "single worker", "DiLoCo H=2 int8 (nesterov)", "DiLoCo H=2 topk (average)",
                     "| dct |", "reduction"):  # fmt: skip
        assert expected in text, expected
