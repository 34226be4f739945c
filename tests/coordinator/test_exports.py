"""The coordinator's export shelf and "Try it" desk on their own: a failed build says why and is not
retried at once; generation is one at a time and rationed per client address."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.exports import ExportJob, ExportShelf, TryIt, TryItLimits, TryItRefused
from training.data.tokenizer import ByteTokenizer
from training.export.card import CampaignRecord
from training.model import preset


def test_tries_are_rationed_per_client_and_one_runs_at_a_time() -> None:
    now = [0.0]
    desk = TryIt(TryItLimits(per_client=2, window_s=60), clock=lambda: now[0])
    desk.admit("10.0.0.1")
    with pytest.raises(TryItRefused, match="another visitor") as busy:
        desk.admit("10.0.0.2")
    assert busy.value.retry_after_s > 0
    desk.release()
    desk.admit("10.0.0.1")
    desk.release()
    now[0] = 10.0
    with pytest.raises(TryItRefused, match="at most 2 tries per 60 s") as spent:
        desk.admit("10.0.0.1")
    assert spent.value.retry_after_s == pytest.approx(50.0)
    desk.admit("10.0.0.2")  # another address has its own tries
    desk.release()
    now[0] = 61.0
    desk.admit("10.0.0.1")  # the window moved on
    desk.release()


def _record() -> dict[str, object]:
    return CampaignRecord(
        name="broken", model="tiny", config=preset("tiny", vocab_size=257), parameters=1, version=1,
        tokenizer="bytes", tokens_trained=0, rounds_closed=1, codec="int8", outer_optimizer="", inner="",
        data_source="", dataset="x",
    ).to_dict()  # fmt: skip


def test_a_failed_build_says_why_and_is_not_retried_at_once(tmp_path: Path) -> None:
    checkpoint = tmp_path / "weights.safetensors"
    checkpoint.write_bytes(b"not safetensors")
    tokenizer = tmp_path / "tokenizer.json"
    ByteTokenizer().save(tokenizer)
    shelf = ExportShelf(tmp_path / "exports")
    job = ExportJob(1, 1, "gguf-f16", "broken", checkpoint, tokenizer, _record())
    try:
        with pytest.raises(RuntimeError, match="not a valid safetensors checkpoint"):
            asyncio.run(shelf.get(job))
        assert shelf.built(job) is None and not list((tmp_path / "exports").rglob("*.partial"))
        again = shelf.start(job)
        assert again.done(), "refused from memory, no second build"
        with pytest.raises(RuntimeError, match="not a valid safetensors"):
            again.result()
    finally:
        shelf.close()


def test_what_a_killed_coordinator_left_half_written_is_swept_at_the_next_start(tmp_path: Path) -> None:
    version = tmp_path / "exports" / "1" / "2"
    (version / ".scratch-abc" / "x").mkdir(parents=True)
    (version / "c-v2-hf.zip.partial").write_bytes(b"half")
    (version / "c-v2-f16.gguf").write_bytes(b"GGUF")
    ExportShelf(tmp_path / "exports").close()
    assert sorted(p.name for p in version.iterdir()) == ["c-v2-f16.gguf"]
