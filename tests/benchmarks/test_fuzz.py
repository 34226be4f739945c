"""`commonweights bench fuzz` at a small scale: 20,000 frames in process and 300 over a real socket
to a real coordinator process break nothing, and the section lands in the report; and the judge
itself notices a decoder that breaks the contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import benchmarks.fuzz as fuzz
from benchmarks.fuzz_frames import FrameFuzzer, seed_messages
from benchmarks.fuzz_updates import SHARD, TensorFrameFuzzer
from commonweights.cli import main
from protocol.codecs import CodecConfig
from protocol.messages import MESSAGE_TYPES, Goodbye, encode


def test_a_small_fuzz_finds_nothing_in_process_or_over_a_socket_and_writes_its_section(
    tmp_path: Path, small_dataset: Path
) -> None:
    out, raw = tmp_path / "benchmarks.md", tmp_path / "fuzz.json"
    out.write_text("# Benchmarks\n\nkept\n")
    code = main([
        "bench", "fuzz", "--frames", "20000", "--codec-frames", "2000", "--socket-frames", "300", "--seed", "7",
        "--dataset", str(small_dataset), "--findings", str(tmp_path / "findings"), "--quiet",
        "--output", str(out), "--json", str(raw),
    ])  # fmt: skip
    results = json.loads(raw.read_text())
    control, updates, socket = results["control"], results["updates"], results["socket"]
    findings = [f["problem"] for run in (control, updates, socket) for f in run["findings"]]
    assert code == 0 and findings == []
    assert set(results["costliest_frames_ms"]) == {"nils", "empty maps", "one-character strings"}
    assert control["frames"] == 20_000 and sum(control["by_kind"].values()) == 20_000
    assert {"valid", "equivalent", "field", "hostile", "bytes", "random"} <= set(control["by_kind"])
    assert control["outcomes"]["rejected:malformed_frame"] > 0 and control["outcomes"]["decoded:submit"] > 0
    assert not any(outcome.startswith("crashed") for outcome in control["outcomes"])
    assert updates["frames"] == 2_000 and updates["outcomes"]["decoded"] > 0
    assert {f"codec {name}" for name in ("fp32", "fp16", "bf16", "int8", "topk", "dct")} <= set(updates["by_kind"])
    assert socket["frames"] == 300
    assert socket["outcomes"]["server tracebacks"] == 0 and socket["outcomes"]["honest work units"] > 0
    assert socket["outcomes"]["frames refused by the decoder"] > 0 and socket["outcomes"]["frames decoded"] > 0
    assert any(name.startswith("closed ") for name in socket["outcomes"])
    text = out.read_text()
    assert "kept" in text and text.count("<!-- bench:fuzz -->") == 1
    for row in ("frames through the gateway's decode", "frames over a real socket", "tracebacks in the coordinator"):
        assert row in text


def test_every_message_type_has_a_valid_frame_to_mutate() -> None:
    assert {type(message).TYPE for message, _ in seed_messages()} == set(MESSAGE_TYPES)


def test_the_same_seed_makes_the_same_frames() -> None:
    first, second = FrameFuzzer(3), FrameFuzzer(3)
    assert [first.next().data for _ in range(200)] == [second.next().data for _ in range(200)]


def test_the_judge_counts_an_exception_other_than_the_protocols_own_as_a_finding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(data: bytes, *, direction: str) -> object:
        raise KeyError("type")

    monkeypatch.setattr(fuzz, "decode", broken)
    outcome, problem = fuzz.check_frame(encode(Goodbye(reason="bye")), "to_server")
    assert outcome == "crashed:KeyError" and problem is not None and "KeyError" in problem


def test_the_judge_counts_an_equivalent_rewrite_decoding_differently_as_a_finding() -> None:
    outcome, problem = fuzz.check_frame(encode(Goodbye(reason="bye")), "to_server", Goodbye(reason="hi"))
    assert outcome == "decoded:goodbye" and problem is not None and "equivalent rewrite" in problem


def test_the_judge_counts_an_update_decoded_to_the_wrong_shape_as_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuzz, "decode_update", lambda *a, **k: {name: torch.zeros(1) for name in SHARD})
    update = TensorFrameFuzzer(0, configs=(CodecConfig("fp32"),)).next()
    outcome, problem = fuzz.check_update(update.data, update.config, 1 << 20)
    assert outcome == "decoded" and problem is not None and "not TensorSpec" in problem
