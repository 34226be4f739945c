"""A new user's corpus is one large text file: it prepares with a holdout split (by section), the
simulator trains on it, and a campaign on it trains, is evaluated and publishes a version."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from commonweights.cli import main
from tests.support.live import REPO, live_coordinator, poll, stop
from training.data import TokenDataset

pytestmark = pytest.mark.slow


def test_one_large_file_goes_from_prepare_to_simulate_to_a_campaign(tmp_path: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    book = tmp_path / "book.txt"
    with book.open("w", encoding="utf-8") as out:
        for name in ("argparse.py", "ast.py", "dataclasses.py", "typing.py", "inspect.py"):
            out.write((stdlib / name).read_text(encoding="utf-8"))
    dataset = tmp_path / "book"
    assert main(["data", "prepare", str(book), "--out", str(dataset), "--vocab-size", "512", "--quiet"]) == 0
    data = TokenDataset.open(dataset)
    assert data.manifest.documents == 1 and data.manifest.holdout_unit == "section"
    assert data.num_holdout_tokens > 0

    simulate = ["simulate", "--data", str(dataset), "--workers", "2", "--inner-steps", "4", "--steps", "8",
                "--batch-size", "2", "--seq-len", "32", "--quiet"]  # fmt: skip
    assert main(simulate) == 0

    with live_coordinator(tmp_path, dataset) as live:
        spec = {
            "name": "book", "dataset": "small", "model": "tiny", "token_budget": 2 * 6 * 4 * 32,
            "inner": {"steps": 6, "batch_size": 4, "seq_len": 32, "warmup_steps": 0},
            "rounds": {"units_per_round": 2, "min_accepted": 2},
            "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
        }  # fmt: skip
        campaign = live.api.post_campaign(spec)["id"]
        folder = tmp_path / "volunteer"
        command = [sys.executable, "-m", "commonweights", "volunteer", "run", "--coordinator", live.ws, "--threads",
                   "1", "--config-dir", str(folder / "config"), "--cache-dir", str(folder / "cache"), "--data-dir",
                   str(folder / "data"), "--quiet"]  # fmt: skip
        folder.mkdir()
        with (folder / "volunteer.log").open("wb") as log:
            worker = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            versions = poll(
                "version 1 with its holdout loss",
                lambda: [v for v in live.api.versions(campaign) if v["version"] >= 1 and v["holdout_loss"] is not None],
                timeout=300,
            )
        finally:
            stop(worker)
        assert versions[0]["holdout_loss"] > 0
