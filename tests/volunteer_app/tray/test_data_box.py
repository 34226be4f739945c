"""The settings dialog's "Your own data" box under Xvfb (issue 16): folders and files chosen there are remembered
where `commonweights volunteer data` reads them, what they hold is counted (and what is left out, with why),
removing one revokes it, and the privacy spent per campaign is shown from the volunteer's ledger. The OS file
dialog and the confirmation are the only things substituted (no one can click them here)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from volunteer_app.local_data import DataRules, LocalData
from volunteer_app.privacy_ledger import PrivacyLedger, PrivacyTerms

from .conftest import MakeApp

pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")

WALK_MS = 10_000  # a bound on looking through the folders, not a sleep
LINE = "Wrote about the garden and the rain.\n"  # 37 bytes


@pytest.fixture
def notes(tmp_path: Path) -> Path:
    """3 notes of 111,000 bytes each, code the campaign doesn't take, and a file over its size limit."""
    folder = tmp_path / "notes"
    (folder / "journal").mkdir(parents=True)
    for day in range(3):
        (folder / "journal" / f"day{day}.md").write_text(LINE * 3000)
    (folder / "script.py").write_text("print('code is not what these campaigns take')\n")
    with (folder / "huge.txt").open("wb") as huge:  # sparse: over the limit without filling the disk
        huge.truncate(DataRules().max_file_bytes + 1)
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff" * 100)  # not text at all: not even listed
    return folder


def _open_box(desktop: Any) -> Any:
    desktop.actions.settings.trigger()
    dialog = desktop.settings_dialog
    assert dialog is not None and dialog.own_data is not None
    return dialog.own_data


def _chosen(box: Any) -> list[str]:
    from PySide6.QtCore import Qt

    return [box.sources.item(i).data(Qt.ItemDataRole.UserRole) for i in range(box.sources.count())]


def test_chosen_folders_and_files_are_shown_and_what_they_hold_is_counted(
    qtbot: Any, make_app: MakeApp, tmp_path: Path, notes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QFileDialog

    letter = tmp_path / "letter.txt"
    letter.write_text(LINE * 2000)  # 74,000 bytes
    desktop, _ = make_app()
    desktop.start()
    box = _open_box(desktop)
    qtbot.waitUntil(lambda: "None chosen" in box.summary.text(), timeout=WALK_MS)
    assert _chosen(box) == [] and not box.remove.isEnabled()
    assert "never leave this computer" in box.findChild(type(box.summary), "own-data-note").text()

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args, **kwargs: str(notes))
    qtbot.mouseClick(box.add_folder, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "3 file(s), 0.3 MB would be used" in box.summary.text(), timeout=WALK_MS)
    assert "2 left out" in box.summary.text()
    reasons = box.left_out.toPlainText()
    assert f"{notes / 'huge.txt'}: over the campaign's {DataRules().max_file_bytes} bytes per file" in reasons
    assert f"{notes / 'script.py'}: this campaign takes .txt, .md, .jsonl files" in reasons
    assert box.summary.toolTip() == reasons and box.left_out.isHidden()  # under 15: all in the tooltip too
    box.summary.linkActivated.emit("left-out")  # what clicking "2 left out" does
    assert not box.left_out.isHidden()

    monkeypatch.setattr(QFileDialog, "getOpenFileNames", lambda *args, **kwargs: ([str(letter)], ""))
    qtbot.mouseClick(box.add_files, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "4 file(s), 0.4 MB would be used" in box.summary.text(), timeout=WALK_MS)
    assert _chosen(box) == [str(notes), str(letter)]
    config = tmp_path / "config"
    assert LocalData(config, config / "data").sources == [notes, letter]  # where the CLI looks

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args, **kwargs: str(tmp_path / "gone"))
    qtbot.mouseClick(box.add_folder, Qt.MouseButton.LeftButton)
    assert "does not exist" in box.notice.text() and not box.notice.isHidden()
    assert _chosen(box) == [str(notes), str(letter)]


def test_remove_revokes_a_source_after_confirmation_and_deletes_the_tokenized_copies(
    qtbot: Any, make_app: MakeApp, tmp_path: Path, notes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QMessageBox

    letter = tmp_path / "letter.txt"
    letter.write_text(LINE * 2000)
    config = tmp_path / "config"
    chosen = LocalData(config, config / "data")  # chosen earlier, with `commonweights volunteer data add`
    chosen.add(notes)
    chosen.add(letter)
    copy = config / "data" / "local-data" / "0123456789abcdef"  # a tokenized copy holding the notes' text
    copy.mkdir(parents=True)
    (copy / "train-000.bin").write_bytes(b"\x00" * 64)
    asked: list[str] = []
    answer = QMessageBox.StandardButton.Cancel

    def confirm(parent: Any, title: str, text: str, *args: Any) -> QMessageBox.StandardButton:
        asked.append(text)
        return answer

    monkeypatch.setattr(QMessageBox, "question", confirm)
    desktop, _ = make_app()
    desktop.start()
    box = _open_box(desktop)
    qtbot.waitUntil(lambda: "4 file(s)" in box.summary.text(), timeout=WALK_MS)
    assert _chosen(box) == [str(notes), str(letter)] and not box.remove.isEnabled()

    box.sources.item(0).setSelected(True)
    assert box.remove.isEnabled()
    qtbot.mouseClick(box.remove, Qt.MouseButton.LeftButton)  # and cancelled
    assert str(notes) in asked[-1] and "tokenized copies" in asked[-1] and "deleted" in asked[-1]
    assert LocalData(config, config / "data").sources == [notes, letter] and copy.exists()

    answer = QMessageBox.StandardButton.Yes
    box.sources.item(0).setSelected(True)
    qtbot.mouseClick(box.remove, Qt.MouseButton.LeftButton)
    assert LocalData(config, config / "data").sources == [letter]
    assert str(notes) not in (config / "local-data.toml").read_text()
    assert not copy.exists()
    assert _chosen(box) == [str(letter)]
    qtbot.waitUntil(lambda: "1 file(s), 0.1 MB would be used." in box.summary.text(), timeout=WALK_MS)


def test_the_privacy_spent_per_campaign_is_shown_from_the_ledger(
    qtbot: Any, make_app: MakeApp, tmp_path: Path, notes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the notes are in the volunteer's home folder
    config = tmp_path / "config"
    LocalData(config, config / "data").add(notes)
    desktop, _ = make_app()
    desktop.start()
    box = _open_box(desktop)
    qtbot.waitUntil(lambda: "No update trained on your files has been sent yet." in box.privacy.text(), timeout=WALK_MS)

    # As the worker writes it, before each update leaves:
    ledger = PrivacyLedger(config / "data" / "privacy-ledger.json")
    stdlib = PrivacyTerms("c-1", "stdlib-private", noise_multiplier=4.0, delta=1e-5, clip_norm=1.0, epsilon_budget=8.0)
    letters = PrivacyTerms("c-2", "letters", noise_multiplier=2.0, delta=1e-6, clip_norm=0.5, epsilon_budget=math.inf)
    for _ in range(12):
        ledger.spend(stdlib)
    ledger.spend(letters)
    lines = [entry.describe() for entry in ledger.entries()]
    assert len(lines) == 2
    dialog = desktop.settings_dialog
    assert dialog is not None
    dialog.hide()
    desktop.actions.settings.trigger()  # opening it again reads the ledger again
    qtbot.waitUntil(lambda: all(line in box.privacy.text() for line in lines), timeout=WALK_MS)
    assert "No update" not in box.privacy.text()
    qtbot.waitUntil(lambda: "3 file(s)" in box.summary.text(), timeout=WALK_MS)
    assert box.sources.item(0).text() == "~/notes"
    shots = os.environ.get("COMMONWEIGHTS_SCREENSHOTS")
    if shots:
        box.summary.linkActivated.emit("left-out")  # the reasons shown too
        qtbot.waitExposed(dialog)
        dialog.grab().save(os.path.join(shots, "app-settings-own-data.png"))


def test_the_privacy_limit_is_chosen_in_the_box_and_kept_where_the_cli_reads_it(
    qtbot: Any, make_app: MakeApp, tmp_path: Path, notes: Path
) -> None:
    config = tmp_path / "config"
    LocalData(config, config / "data").add(notes)
    desktop, _ = make_app()
    desktop.start()
    box = _open_box(desktop)
    assert box.limit.currentText() == "ε = 10" and box.limit.isEnabled()  # the default
    box.limit.setCurrentIndex(box.limit.findText("ε = 4"))
    assert LocalData(config, config / "data").max_epsilon == 4.0
    box.limit.setCurrentIndex(box.limit.findText("no limit (even no noise)"))
    assert LocalData(config, config / "data").max_epsilon == math.inf

    LocalData(config, config / "data").set_max_epsilon(2.5)  # as `volunteer data --max-epsilon 2.5` does
    dialog = desktop.settings_dialog
    assert dialog is not None
    dialog.hide()
    desktop.actions.settings.trigger()
    assert box.limit.currentText() == "ε = 2.5"  # a value the box doesn't offer is shown as it is
    assert LocalData(config, config / "data").max_epsilon == 2.5  # showing it changed nothing


def test_a_damaged_ledger_or_choices_file_is_shown_as_its_message(
    qtbot: Any, make_app: MakeApp, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    (config / "data").mkdir(parents=True)
    (config / "data" / "privacy-ledger.json").write_text('{"campaigns": [{"terms": {}}')
    desktop, _ = make_app()
    desktop.start()
    box = _open_box(desktop)
    qtbot.waitUntil(lambda: "is damaged" in box.privacy.text(), timeout=WALK_MS)
    assert str(config / "data" / "privacy-ledger.json") in box.privacy.text()
    assert "None chosen" in box.summary.text() and box.add_folder.isEnabled()

    (config / "local-data.toml").write_text("sources = [")
    desktop.settings_dialog.hide()
    desktop.actions.settings.trigger()
    assert "can't read" in box.notice.text() and not box.notice.isHidden()
    assert not box.add_folder.isEnabled() and not box.add_files.isEnabled() and not box.remove.isEnabled()
