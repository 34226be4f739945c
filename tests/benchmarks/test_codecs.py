"""The codec benchmark (benchmarks/codecs.py) measures every codec and formats a table."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.codecs import (
    compare_int8_with_hivemind,
    format_codec_table,
    format_int8_comparison,
    hivemind_uniform8bit_decode,
    hivemind_uniform8bit_encode,
    measure_codecs,
    pseudo_gradient,
    synthetic_update,
)
from commonweights.cli import main
from protocol.codecs import CODEC_NAMES, CodecConfig


def test_synthetic_update_has_about_the_requested_size_and_is_reproducible() -> None:
    update = synthetic_update(50_000, seed=3)
    assert sum(t.numel() for t in update.values()) == 50_000
    again = synthetic_update(50_000, seed=3)
    assert all(update[k].equal(again[k]) for k in update)


def test_measure_codecs_reports_each_codec_within_its_bound() -> None:
    rows = measure_codecs(numel=30_000, repeats=1, threads=1)
    assert [r.codec for r in rows] == list(CODEC_NAMES)
    by_codec = {r.codec: r for r in rows}
    assert by_codec["fp32"].max_abs_error == 0.0 and by_codec["fp32"].compression_vs_fp32 < 1.01
    assert by_codec["topk"].compression_vs_fp32 > 50
    for row in rows:
        assert row.max_abs_error <= row.bound
        assert math.isfinite(row.encode_mb_s) and row.decode_mb_s > 0
        assert math.isclose(row.bytes_per_param * row.compression_vs_fp32, 4.0)


def test_format_codec_table_is_a_markdown_table_with_one_row_per_codec() -> None:
    rows = measure_codecs(numel=5_000, repeats=1, configs=[CodecConfig("int8"), CodecConfig("dct")])
    table = format_codec_table(rows).splitlines()
    assert len(table) == 4 and all(line.startswith("|") and line.endswith("|") for line in table)
    assert table[2].startswith("| int8 |") and table[3].startswith("| dct |")


def test_hivemind_uniform8bit_reimplementation_round_trips_within_its_bins() -> None:
    tensor = pseudo_gradient(50_000, outliers=False, seed=1)
    data = hivemind_uniform8bit_encode(tensor)
    assert len(data) == 8 + 4 * 256 + tensor.numel()
    decoded = hivemind_uniform8bit_decode(data, tensor.numel())
    # Inside ±3σ each value sits in a bin 6σ/256 wide and decodes to that bin's mean.
    std = float(tensor.std())
    inside = (tensor - tensor.mean()).abs() < 2.9 * std
    assert float((decoded - tensor)[inside].abs().max()) <= 6 * std / 256


def test_int8_comparison_times_both_encoders_and_reports_our_lower_error() -> None:
    rows = compare_int8_with_hivemind(numel=100_000, repeats=1, threads=1)
    assert [r.tensor for r in rows] == ["Gaussian rows", "with 0.1% outliers ×10"]
    for row in rows:
        assert row.ours_encode_mb_s > 0 and row.hivemind_encode_mb_s > 0
        assert row.ours_rel_l2_error < row.hivemind_rel_l2_error
    table = format_int8_comparison(rows).splitlines()
    assert len(table) == 4 and "target ≥ 2×" in table[0]
    assert all(("(met)" in line) or ("(missed)" in line) for line in table[2:])


def test_bench_codecs_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:codecs -->\nOLD\n<!-- /bench:codecs -->\n")
    code = main([
        "bench", "codecs", "--params", "20000", "--compare-elements", "50000", "--repeats", "1", "--threads", "1",
        "--output", str(out), "--quiet",
    ])  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert "OLD" not in text and text.count("<!-- bench:codecs -->") == 1
    for expected in ("| sign1 |", "| int4 |", "hivemind Uniform8Bit MB/s", "| with 0.1% outliers ×10 |"):
        assert expected in text, expected
