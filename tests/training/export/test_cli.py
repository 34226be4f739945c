"""`commonweights export` and `commonweights generate` from local files, as a lead with a checkpoint
and a tokenizer runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from commonweights.cli import main
from tests.training.export.conftest import Trained
from training.checkpoint import save_weights
from training.generate import generate


@pytest.fixture
def files(trained: Trained, tmp_path: Path) -> tuple[Path, Path]:
    checkpoint = tmp_path / "run-v7.safetensors"
    checkpoint.write_bytes(save_weights(trained.weights))
    tokenizer = tmp_path / "tokenizer.json"
    trained.tokenizer.save(tokenizer)
    return checkpoint, tokenizer


def test_export_from_a_checkpoint_finds_the_preset_and_writes_the_folder(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, tokenizer = files
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(checkpoint), "--tokenizer", str(tokenizer), "--format", "hf",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out.split()
    assert str(out / "model.safetensors") in printed and not (out / "README.md").exists(), "no records, no card"
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_attention_heads"]) == (96, 4), "the tiny preset, found from the shapes"


def test_export_says_what_is_missing_or_wrong(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, tokenizer = files
    out = str(tmp_path / "x")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "hf", "--out", out]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--tokenizer", str(tokenizer), "--model", "small",
                 "--format", "gguf", "--out", out]) == 2  # fmt: skip
    assert "no model preset" in capsys.readouterr().err
    tokenizer.write_text("{not json")
    assert main(["export", "--checkpoint", str(checkpoint), "--tokenizer", str(tokenizer), "--format", "hf",
                 "--out", out]) == 2  # fmt: skip
    assert "not a tokenizer file" in capsys.readouterr().err
    checkpoint.write_bytes(b"\x00" * 16)
    assert main(["export", "--checkpoint", str(checkpoint), "--tokenizer", str(tokenizer), "--format", "hf",
                 "--out", out]) == 2  # fmt: skip
    assert "safetensors" in capsys.readouterr().err


def test_generate_prints_the_prompt_and_the_greedy_continuation(
    trained: Trained, files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, tokenizer = files
    assert main(["generate", "--checkpoint", str(checkpoint), "--tokenizer", str(tokenizer), "--prompt", "def ",
                 "--max-tokens", "12"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    expected = generate(trained.model, trained.tokenizer, "def ", max_new_tokens=12)
    assert captured.out == "def " + expected.text + "\n"
    assert f"({len(expected.ids)} tokens in" in captured.err


def test_generate_reads_an_exported_folder_as_well_as_a_checkpoint(
    trained: Trained, files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, tokenizer = files
    folder = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(checkpoint), "--tokenizer", str(tokenizer), "--format", "hf",
                 "--out", str(folder)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(folder), "--prompt", "class ", "--max-tokens", "10"]) == 0
    expected = generate(trained.model, trained.tokenizer, "class ", max_new_tokens=10)
    assert capsys.readouterr().out == "class " + expected.text + "\n"
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "x"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
