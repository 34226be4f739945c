"""The DiLoCo simulator on the embedded corpus (cut small): real text, real training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from commonweights.cli import main
from training.data import TokenDataset
from training.simulate import SimConfig, simulate

BASE = SimConfig(workers=2, inner_steps=5, steps=20, batch_size=4, seq_len=32, warmup=2, eval_tokens=4096)


@pytest.fixture(scope="module")
def dataset(small_dataset: Path) -> TokenDataset:
    return TokenDataset.open(small_dataset)


def test_holdout_loss_falls_on_the_embedded_corpus_within_a_small_budget(dataset: TokenDataset) -> None:
    result = simulate(SimConfig(**{**BASE.__dict__, "inner_steps": 10, "steps": 40}), dataset)
    first, last = result.holdout_curve[0][1], result.final_holdout_loss
    assert len(result.holdout_curve) == 1 + 40 // 10
    # From ln(512) = 6.24 (uniform) to below 5.9: the model has learned the token statistics at least.
    assert last < first - 0.3, result.holdout_curve


def test_same_seed_same_losses(dataset: TokenDataset) -> None:
    config = SimConfig(**{**BASE.__dict__, "steps": 10, "codec": "int8"})
    a, b = simulate(config, dataset), simulate(config, dataset)
    assert a.train_losses == b.train_losses
    assert a.holdout_curve == b.holdout_curve


def test_bytes_are_counted_per_worker_and_against_data_parallel(dataset: TokenDataset) -> None:
    fp32 = simulate(SimConfig(**{**BASE.__dict__, "steps": 10}), dataset)
    int8 = simulate(SimConfig(**{**BASE.__dict__, "steps": 10, "codec": "int8"}), dataset)
    rounds = 10 // 5
    assert fp32.data_parallel_bytes_per_worker == 10 * fp32.parameters * 4
    assert rounds * fp32.parameters * 4 < fp32.bytes_per_worker < rounds * fp32.parameters * 4 * 1.01
    assert fp32.reduction == pytest.approx(5, rel=0.01)  # H=5: five times fewer messages, same size
    assert int8.reduction == pytest.approx(5 * 3.94, rel=0.02)


def test_data_parallel_and_single_worker_agree_when_there_is_one_worker(dataset: TokenDataset) -> None:
    """With K=1 both baselines are plain AdamW on the same batches: a check that they're built fairly."""
    one = {**BASE.__dict__, "workers": 1, "steps": 8}
    dp = simulate(SimConfig(**{**one, "mode": "data_parallel"}), dataset)
    single = simulate(SimConfig(**{**one, "mode": "single"}), dataset)
    assert dp.train_losses == single.train_losses
    assert dp.final_holdout_loss == single.final_holdout_loss
    assert single.bytes_per_worker == 0 and dp.bytes_per_worker == dp.data_parallel_bytes_per_worker


def test_simulate_command_prints_a_summary_and_writes_json(
    small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "result.json"
    code = main([
        "simulate", "--data", str(small_dataset), "--workers", "2", "--inner-steps", "4", "--steps", "8",
        "--batch-size", "2", "--seq-len", "32", "--codec", "topk", "--eval-tokens", "2048", "--quiet",
        "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "holdout loss" in printed and "data-parallel" in printed
    (result,) = json.loads(out.read_text())["results"]
    assert len(result["holdout_curve"]) == 3
    assert result["bytes_per_worker"] > 0 and result["data_parallel_bytes_per_worker"] > result["bytes_per_worker"]
    assert result["reduction"] > 100  # H=4 with top-1% sparsification


def test_simulate_refuses_an_unknown_codec_with_a_clear_message(
    small_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--data", str(small_dataset), "--codec", "zip", "--quiet"]) == 2
    assert "zip" in capsys.readouterr().err


def test_simulate_refuses_a_dataset_without_holdout_tokens_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.data import prepare_dataset

    text = tmp_path / "flat.txt"
    text.write_text("".join(f"line {i}\n" for i in range(2000)))
    prepare_dataset([text], tmp_path / "flat", tokenizer="bytes", holdout_fraction=0, progress=False)
    assert main(["simulate", "--data", str(tmp_path / "flat"), "--quiet", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "0 holdout tokens" in err and "holdout fraction above 0" in err and "Traceback" not in err


def test_diloco_defaults_to_the_deployed_algorithm_and_offers_the_papers(dataset: TokenDataset) -> None:
    deployed = SimConfig(**{**BASE.__dict__, "steps": 15})
    assert (deployed.inner_state, deployed.pool, deployed.late_fraction) == ("fresh", 4, 0.1)
    paper = SimConfig(**{**deployed.__dict__, "inner_state": "persistent", "volunteers": 2, "late_fraction": 0.0})
    assert paper.label == "DiLoCo H=5 fp32 (nesterov, persistent AdamW, 2 volunteers, 0% late)"
    # With as many volunteers as workers and none late, a volunteer's own AdamW is DiLoCo's worker's.
    same = simulate(SimConfig(**{**paper.__dict__, "inner_state": "volunteer"}), dataset)
    persistent = simulate(paper, dataset)
    fresh = simulate(SimConfig(**{**paper.__dict__, "inner_state": "fresh"}), dataset)
    assert same.train_losses == persistent.train_losses
    # A fresh AdamW per unit restarts its moments: the second round trains differently from the start.
    assert fresh.train_losses[:5] == persistent.train_losses[:5]
    assert fresh.train_losses[5:] != persistent.train_losses[5:]
    spread = simulate(deployed, dataset)
    assert spread.tokens == persistent.tokens and spread.outer_steps == persistent.outer_steps == 3
    assert spread.bytes_per_worker == persistent.bytes_per_worker


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"inner_state": "forgetful"}, "inner_state must be one of"),
        ({"volunteers": 1}, "can't be fewer than workers"),
        ({"late_fraction": 1.0}, "late_fraction must be in"),
    ],
)
def test_simulator_refuses_impossible_deployments(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimConfig(**{**BASE.__dict__, **changes})


def test_compressed_downloads_keep_the_error_for_the_next_delta(dataset: TokenDataset) -> None:
    base = SimConfig(**{**BASE.__dict__, "steps": 15, "volunteers": 2, "late_fraction": 0.0})
    exact = simulate(base, dataset)
    sign = simulate(SimConfig(**{**base.__dict__, "download_codec": "sign1"}), dataset)
    assert "download_bytes_per_unit" not in exact.extra
    # sign1 is 1 bit a parameter plus a scale per block of 64: about 28× fewer bytes than fp32 weights.
    ratio = 4 * sign.parameters / sign.extra["download_bytes_per_unit"]
    assert 20 < ratio < 32
    assert sign.label.endswith(", sign1 downloads)")
    # Volunteers train from the rebuilt weights, so the run differs from the exact one after the first round.
    assert sign.train_losses[:5] == exact.train_losses[:5] and sign.train_losses[5:] != exact.train_losses[5:]
    assert sign.final_holdout_loss < sign.holdout_curve[0][1]


def test_shared_moments_seed_every_unit_after_the_first_round_and_are_counted_as_upload(dataset: TokenDataset) -> None:
    fresh = SimConfig(**{**BASE.__dict__, "steps": 15, "codec": "int8"})
    shared = SimConfig(**{**fresh.__dict__, "inner_state": "shared"})
    assert shared.label == "DiLoCo H=5 int8 (nesterov, shared AdamW)"
    a, b = simulate(fresh, dataset), simulate(shared, dataset)
    # The first round has nothing to share; from the second on the units start from the round's moments.
    assert a.train_losses[:5] == b.train_losses[:5]
    assert a.train_losses[5:] != b.train_losses[5:]
    # Each unit uploads a moments frame of its factors (row and column means of each matrix, vectors whole).
    from protocol.moments import moments_size
    from training.model import build_model, preset

    model = build_model(preset(shared.model, vocab_size=dataset.vocab_size, max_seq_len=shared.seq_len), seed=0)
    frame = moments_size({name: tuple(p.shape) for name, p in model.named_parameters()})
    factors = sum(p.shape[0] + p.numel() // p.shape[0] if p.dim() >= 2 else p.numel() for p in model.parameters())
    assert 2 * factors < frame < 2 * factors + 4096  # bf16 values and the records' names and shapes
    rounds = 15 // 5
    assert b.bytes_per_worker - a.bytes_per_worker == frame * rounds
