"""The volunteer's own files (issue 16): choosing and revoking folders, what the campaign's rules let through,
and the tokenized copy made with a campaign's tokenizer, which revoking deletes. Also through
`commonweights volunteer data`."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.live import REPO
from training.data import TokenDataset
from volunteer_app.local_data import DataRules, LocalData, LocalDataError


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    folder = tmp_path / "notes"
    (folder / "journal").mkdir(parents=True)
    for day in range(12):
        (folder / "journal" / f"day{day:02}.md").write_text(f"Day {day}. Wrote about the garden and the rain.\n" * 30)
    (folder / "chat.jsonl").write_text('{"text": "a private conversation about holidays"}\n' * 40)
    (folder / "script.py").write_text("print('code is not what this campaign takes')\n")
    (folder / "huge.txt").write_text("x" * 5000)
    return folder


def test_chosen_sources_are_remembered_and_what_they_hold_is_shown(notes: Path, tmp_path: Path) -> None:
    local = LocalData(tmp_path / "config", tmp_path / "data")
    local.add(notes)
    local.add(notes)  # once is enough
    assert LocalData(tmp_path / "config", tmp_path / "data").sources == [notes]
    inventory = local.inventory(DataRules(max_file_bytes=4096))
    used = {path.name for path, _ in inventory.files}
    assert used == {f"day{day:02}.md" for day in range(12)} | {"chat.jsonl"}
    reasons = {skipped.path.name: skipped.reason for skipped in inventory.skipped}
    assert "takes .txt, .md, .jsonl" in reasons["script.py"] and "per file" in reasons["huge.txt"]
    assert inventory.total_bytes == sum(size for _, size in inventory.files)
    with pytest.raises(LocalDataError, match="does not exist"):
        local.add(tmp_path / "nowhere")


def test_the_copy_is_tokenized_with_the_campaigns_tokenizer_and_revoking_deletes_it(
    notes: Path, tmp_path: Path, small_dataset: Path
) -> None:
    local = LocalData(tmp_path / "config", tmp_path / "data")
    local.add(notes)
    rules = DataRules(max_file_bytes=4096)
    folder, manifest = local.prepare(small_dataset / "tokenizer.json", rules)
    assert folder.is_relative_to(tmp_path / "data")
    data = TokenDataset.open(folder, verify=True)
    assert data.num_train_tokens == manifest.train_tokens > 0 and data.num_holdout_tokens > 0  # its own holdout
    assert data.vocab_size == TokenDataset.open(small_dataset).vocab_size
    again, _ = local.prepare(small_dataset / "tokenizer.json", rules)
    assert (
        again == folder
        and (folder / "manifest.json").stat().st_mtime_ns == (again / "manifest.json").stat().st_mtime_ns
    )
    with pytest.raises(LocalDataError, match="needs at least"):
        local.prepare(small_dataset / "tokenizer.json", DataRules(max_file_bytes=4096, min_tokens=10**9))
    local.prepare(small_dataset / "tokenizer.json", rules)
    assert local.remove(notes) and not folder.exists()  # revoked: its tokens are gone too
    assert not local.remove(notes)
    with pytest.raises(LocalDataError, match="none of the chosen"):
        local.prepare(small_dataset / "tokenizer.json", rules)


def test_the_cli_adds_lists_and_removes(notes: Path, tmp_path: Path) -> None:
    def data(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "commonweights", "volunteer", "data", *args, "--config-dir", str(tmp_path)]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)

    added = data("add", str(notes))
    assert added.returncode == 0, added.stderr
    assert str(notes) in added.stdout and "Would be used: 14 file(s)" in added.stdout
    assert "left out" in added.stdout and "script.py" in added.stdout
    listed = data("list")
    assert "never leave this machine" in listed.stdout and "at most ε = 10 of privacy" in listed.stdout
    limited = data("list", "--max-epsilon", "4")
    assert limited.returncode == 0 and "at most ε = 4 of privacy" in limited.stdout
    assert LocalData(tmp_path, tmp_path / "data").max_epsilon == 4.0
    assert "any amount of privacy" in data("list", "--max-epsilon", "inf").stdout
    refused = data("list", "--max-epsilon", "0")
    assert refused.returncode == 2 and "ε must be above 0" in refused.stderr
    removed = data("remove", str(notes))
    assert removed.returncode == 0 and "No folder or file is chosen" in removed.stdout
    assert data("remove").returncode == 2


def test_the_owners_privacy_limit_is_kept_and_a_bad_one_refused(tmp_path: Path) -> None:
    local = LocalData(tmp_path / "config", tmp_path / "data")
    assert local.max_epsilon == 10.0 and local.accepts(8.0) and not local.accepts(math.inf)
    local.set_max_epsilon(math.inf)
    assert LocalData(tmp_path / "config", tmp_path / "data").accepts(math.inf)  # kept in local-data.toml
    local.set_max_epsilon(2.5)
    again = LocalData(tmp_path / "config", tmp_path / "data")
    assert again.max_epsilon == 2.5 and again.accepts(2.5) and not again.accepts(2.6)
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(LocalDataError, match="above 0"):
            local.set_max_epsilon(bad)
    (tmp_path / "config" / "local-data.toml").write_text('max_epsilon = "lots"\nsources = []\n')
    with pytest.raises(LocalDataError, match="max_epsilon must be a number"):
        LocalData(tmp_path / "config", tmp_path / "data")


@pytest.mark.parametrize(
    "modules",
    [
        pytest.param("volunteer_app.local_data, volunteer_app.privacy_ledger", id="choices-and-ledger"),
        pytest.param(
            "volunteer_app.tray.app, volunteer_app.tray.data_box",
            id="app-and-data-box",
            marks=pytest.mark.skipif(
                importlib.util.find_spec("PySide6") is None, reason="PySide6 is not installed (the app's extra)"
            ),
        ),
    ],
)
def test_what_the_app_process_shows_loads_without_numpy_tokenizers_or_torch(modules: str) -> None:
    """The desktop app's own process is built without them (installers/build.py); it shows the choices,
    the privacy ledger and the Your own data box."""
    probe = (
        f"import sys, {modules}\n"
        "print(sorted(m for m in ('numpy', 'tokenizers', 'torch', 'training.data') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
