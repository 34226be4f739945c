"""The settings dialog's "Your own data" box (issue 16): the folders and files this volunteer lets campaigns
on volunteers' data train on, what in them would be used and how much, and a way to revoke each one.

    box = DataBox(LocalData(config_dir, data_dir))
    box.add_paths([Path("~/notes").expanduser()])     # what "Add folder…" and "Add files…" do
    box.remove_selected()                             # revokes: forgotten, tokenized copies deleted

Reading what the folders hold walks them, so it runs on a worker thread; its answer comes back to the GUI
thread through a queued signal, and only the latest one is shown.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from volunteer_app.local_data import DataRules, Inventory, LocalData, LocalDataError

__all__ = ["DataBox", "describe"]

PRIVACY_NOTE = (
    "These never leave this computer: it trains on them here and sends only model updates and their "
    "metrics. Campaigns that train on volunteers' own data use them; others don't."
)


def describe(inventory: Inventory) -> str:
    """One line on what would be used, and how much is left out."""
    if not inventory.files:
        return "Nothing in them would be used (.txt, .md and .jsonl files are)."
    megabytes = inventory.total_bytes / 1e6
    left = f"; {len(inventory.skipped)} left out" if inventory.skipped else ""
    return f"{len(inventory.files)} file(s), {megabytes:.1f} MB would be used{left}."


class _Answers(QObject):
    arrived = Signal(int, object)  # (question number, an Inventory or a LocalDataError), on the GUI thread


class DataBox(QGroupBox):
    def __init__(self, local: LocalData, *, rules: DataRules | None = None, parent: QWidget | None = None) -> None:
        super().__init__("Your own data", parent)
        self.setObjectName("own-data")
        self.local = local
        self.rules = rules or DataRules()
        self._asked = 0
        self._answers = _Answers()  # no parent: see account_box, the worker thread may hold its last reference
        self._answers.arrived.connect(self._show)
        self.sources = QListWidget()
        self.sources.setObjectName("own-data-sources")
        self.sources.setMaximumHeight(90)
        self.summary = QLabel()
        self.summary.setObjectName("own-data-summary")
        self.summary.setWordWrap(True)
        note = QLabel(PRIVACY_NOTE)
        note.setWordWrap(True)
        self.add_folder = QPushButton("Add folder…")
        self.add_files = QPushButton("Add files…")
        self.remove = QPushButton("Remove")
        self.remove.setToolTip("Revoke: forgotten, and its tokenized copies are deleted")
        self.add_folder.clicked.connect(self._pick_folder)
        self.add_files.clicked.connect(self._pick_files)
        self.remove.clicked.connect(self.remove_selected)
        buttons = QHBoxLayout()
        for button in (self.add_folder, self.add_files, self.remove):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.sources)
        layout.addLayout(buttons)
        layout.addWidget(self.summary)
        layout.addWidget(note)
        self.refresh()

    def add_paths(self, paths: Sequence[Path]) -> None:
        try:
            for path in paths:
                self.local.add(path)
        except LocalDataError as error:
            self.summary.setText(str(error))
        self.refresh()

    def remove_selected(self) -> None:
        for item in self.sources.selectedItems():
            self.local.remove(Path(item.text()))
        self.refresh()

    def refresh(self) -> None:
        self.sources.clear()
        self.sources.addItems([str(source) for source in self.local.sources])
        self.remove.setEnabled(bool(self.local.sources))
        if not self.local.sources:
            self.summary.setText("None chosen: campaigns on volunteers' data get nothing from this computer.")
            return
        self.summary.setText("Looking through them…")
        self._asked += 1
        number, local, rules, answers = self._asked, self.local, self.rules, self._answers

        def work() -> None:  # holds nothing of the box's but the parentless `answers`
            try:
                answer: object = local.inventory(rules)
            except (LocalDataError, OSError) as error:
                answer = LocalDataError("unreadable", str(error))
            answers.arrived.emit(number, answer)

        threading.Thread(target=work, name="own-data", daemon=True).start()

    def _show(self, number: int, answer: object) -> None:
        if number != self._asked:
            return  # an older answer, overtaken
        self.summary.setText(describe(answer) if isinstance(answer, Inventory) else str(answer))

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of your own text")
        if folder:
            self.add_paths([Path(folder)])

    def _pick_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Add files of your own text", "", "Text (*.txt *.md *.jsonl)")
        self.add_paths([Path(f) for f in files])
