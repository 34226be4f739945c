from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.diloco import bench_configs, parse_configs
from commonweights.cli import main
from training.simulate import SimConfig


def test_configs_parse_with_optional_outer_optimizer_inner_state_and_settings() -> None:
    assert parse_configs("50:int8, 100:dct:average:persistent:lr=0.002:late=0") == [
        {"mode": "diloco", "inner_steps": 50, "codec": "int8"},
        {
            "mode": "diloco", "inner_steps": 100, "codec": "dct", "outer": "average", "outer_lr": None,
            "inner_state": "persistent", "lr": 0.002, "late_fraction": 0.0,
        },
    ]  # fmt: skip
    # An explicit outer_lr wins over the optimizer's default, in either order.
    assert parse_configs("10:fp32:outer_lr=0.4:nesterov")[0]["outer_lr"] == 0.4
    for bad in ("50", "x:int8", "0:int8", "50:zip", "50:int8:a", "50:int8:lr=x", "50:int8:lr=", ""):
        with pytest.raises(ValueError):
            parse_configs(bad)


def test_the_reference_comes_first_then_the_single_worker_then_diloco() -> None:
    configs = bench_configs(SimConfig(outer_lr=0.5), parse_configs("10:int8,20:dct:average:volunteer"))
    assert [c.mode for c in configs] == ["data_parallel", "single", "diloco", "diloco"]
    assert (configs[2].inner_steps, configs[2].outer, configs[2].outer_lr) == (10, "nesterov", 0.5)
    assert (configs[3].codec, configs[3].outer, configs[3].outer_lr) == ("dct", "average", None)
    assert (configs[2].inner_state, configs[3].inner_state) == ("fresh", "volunteer")


def test_bench_writes_its_tables_into_a_section_and_keeps_the_rest(small_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nhand-written notes\n\n<!-- bench:diloco -->\nOLD-RESULTS\n<!-- /bench:diloco -->\n")
    code = main([
        "bench", "diloco", "--data", str(small_dataset), "--workers", "2", "--steps", "4", "--batch-size", "2",
        "--seq-len", "32", "--eval-tokens", "2048", "--configs", "2:int8,2:topk:average",
        "--output", str(out), "--quiet",
    ])  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert "hand-written notes" in text and "OLD-RESULTS" not in text
    assert text.count("<!-- bench:diloco -->") == 1
    for expected in ("data-parallel", "single worker", "DiLoCo H=2 int8 (nesterov)", "DiLoCo H=2 topk (average)",
                     "fewer bytes than data-parallel", "volunteers drawn at random",
                     "reduction"):  # fmt: skip
        assert expected in text, expected


def test_reuse_runs_only_the_configurations_an_earlier_run_lacks(small_dataset: Path, tmp_path: Path) -> None:
    out, first, second = tmp_path / "benchmarks.md", tmp_path / "first.json", tmp_path / "second.json"
    common = [
        "bench", "diloco", "--data", str(small_dataset), "--workers", "2", "--steps", "4", "--batch-size", "2",
        "--seq-len", "32", "--eval-tokens", "2048", "--output", str(out), "--quiet",
    ]  # fmt: skip
    assert main([*common, "--configs", "2:int8", "--json", str(first)]) == 0
    earlier = json.loads(first.read_text())["results"]
    # Mark the earlier results: a reused one comes back with the mark, a rerun one without it.
    for entry in earlier:
        entry["seconds"] = 12345.0
    first.write_text(json.dumps({"results": earlier}))
    assert main([*common, "--configs", "2:int8,2:fp32", "--reuse", str(first), "--json", str(second)]) == 0
    results = json.loads(second.read_text())["results"]
    assert [r["seconds"] == 12345.0 for r in results] == [True, True, True, False]
    assert [r["label"] for r in results[:3]] == [r["label"] for r in earlier]
    assert results[0]["holdout_curve"] == earlier[0]["holdout_curve"]


def test_reuse_of_a_file_that_is_not_a_results_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": [{"label": 3}]}')
    assert main(["bench", "diloco", "--reuse", str(bad), "--steps", "4", "--quiet"]) == 2


def test_the_long_horizon_fills_only_the_flags_left_out() -> None:
    from benchmarks.cli import DEFAULT_DILOCO_CONFIGS, LONG_HORIZON
    from benchmarks.diloco import apply_horizon
    from commonweights.cli import build_parser

    long = build_parser().parse_args(["bench", "diloco", "--horizon", "long", "--steps", "7"])
    apply_horizon(long)
    assert (long.steps, long.workers, long.batch_size, long.seq_len) == (7, 4, 4, 64)
    assert long.configs == LONG_HORIZON["configs"] and long.warmup == 100
    short = build_parser().parse_args(["bench", "diloco"])
    apply_horizon(short)
    assert (short.steps, short.workers, short.batch_size, short.configs) == (400, 4, 8, DEFAULT_DILOCO_CONFIGS)
    # 10,000 inner steps in all, the floor for a horizon long enough to converge.
    assert long.workers * LONG_HORIZON["steps"] >= 10_000  # type: ignore[operator]
    assert all(parse_configs(str(LONG_HORIZON["configs"])))
