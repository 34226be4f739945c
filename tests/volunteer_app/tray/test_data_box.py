"""The settings dialog's "Your own data" box under Xvfb (issue 16): folders chosen there are remembered
where `commonweights volunteer data` reads them, what they hold is summed up, and removing one revokes it.
The OS file dialog is the one thing substituted (no one can click it here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from volunteer_app.local_data import LocalData

from .conftest import MakeApp

pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install pytest-qt)")

WALK_MS = 10_000  # a bound on reading the folders, not a sleep


def test_folders_are_chosen_summed_up_and_revoked_from_the_settings(
    qtbot: Any, make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QFileDialog

    notes, diary = tmp_path / "notes", tmp_path / "diary"
    for folder, count in ((notes, 3), (diary, 2)):
        folder.mkdir()
        for i in range(count):
            (folder / f"{i}.md").write_text("a line of my own\n" * 100)
    (notes / "photo.jpg").write_bytes(b"\xff\xd8" * 10)
    desktop, _ = make_app()
    desktop.start()
    desktop.actions.settings.trigger()
    dialog = desktop.settings_dialog
    assert dialog is not None and dialog.own_data is not None
    box = dialog.own_data
    assert "None chosen" in box.summary.text() and not box.remove.isEnabled()

    box.add_paths([notes])
    qtbot.waitUntil(lambda: "3 file(s), 0.0 MB would be used" in box.summary.text(), timeout=WALK_MS)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *args, **kwargs: str(diary))
    qtbot.mouseClick(box.add_folder, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "5 file(s)" in box.summary.text(), timeout=WALK_MS)
    assert [box.sources.item(i).text() for i in range(box.sources.count())] == [str(notes), str(diary)]
    assert LocalData(tmp_path / "config", tmp_path).sources == [notes, diary]  # where the CLI looks too

    box.sources.item(0).setSelected(True)
    qtbot.mouseClick(box.remove, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "2 file(s)" in box.summary.text(), timeout=WALK_MS)
    assert LocalData(tmp_path / "config", tmp_path).sources == [diary]
    assert "never leave this computer" in " ".join(label.text() for label in box.findChildren(type(box.summary)))
