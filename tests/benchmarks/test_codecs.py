"""The codec benchmark (benchmarks/codecs.py) measures every codec and formats a table."""

from __future__ import annotations

import math

from benchmarks.codecs import format_codec_table, measure_codecs, synthetic_update
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
