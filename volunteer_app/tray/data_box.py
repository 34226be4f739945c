"""The settings dialog's "Your own data" box (issue 16): the folders and files this volunteer lets campaigns on
volunteers' data train on, what in them would be used, a way to revoke each, and the privacy spent so far.

    box = DataBox(config_dir, data_dir)    # the folders `commonweights volunteer data` reads and writes
    box.refresh()                          # reads them again; what they hold follows in the background
    box.add_paths([Path("~/notes").expanduser()])     # what "Add folder…" and "Add files…" do

What would be used is found by walking the folders, and the privacy ledger is a file too: both are read on a
worker thread whose answer comes back to the GUI thread through a queued signal, and only the latest answer
is shown. This module and everything it imports stay free of numpy, tokenizers and torch, which the installed
app's process does not carry.
"""

from __future__ import annotations

import html
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from volunteer_app.local_data import DataRules, Inventory, LocalData, LocalDataError
from volunteer_app.privacy_ledger import LEDGER_FILE, LedgerError, PrivacyLedger

__all__ = ["LEDGER_FILE", "DataBox", "describe", "shown"]

SHOWN_LEFT_OUT = 500  # reasons listed in the box's detail; the rest are counted
TOOLTIP_LEFT_OUT = 15  # and in the summary's tooltip
NOTE = (
    "Your files never leave this computer: it trains on them here and sends only the noised update and its "
    "metrics. Only campaigns that train on volunteers' own data use them."
)
NOTHING_SENT = "No update trained on your files has been sent yet."
LEFT_OUT_LINK = "left-out"


def describe(inventory: Inventory, rules: DataRules) -> str:
    """One line on what would be used and how much is left out, as rich text: the count left out is a link
    that shows why."""
    if inventory.files:
        used = f"{len(inventory.files)} file(s), {inventory.total_bytes / 1e6:.1f} MB would be used"
    else:
        used = f"Nothing in them would be used (campaigns take {', '.join(rules.kinds)} files)"
    if not inventory.skipped:
        return html.escape(used) + "."
    return f'{html.escape(used)}; <a href="{LEFT_OUT_LINK}">{len(inventory.skipped)} left out</a>.'


def shown(path: Path) -> str:
    """A path as the box shows it: under the home folder as ~/…"""
    try:
        return str(Path("~") / path.relative_to(Path.home()))
    except (ValueError, RuntimeError):  # elsewhere, or no home folder
        return str(path)


def _left_out(inventory: Inventory, most: int) -> str:
    lines = [f"{shown(skipped.path)}: {skipped.reason}" for skipped in inventory.skipped[:most]]
    if len(inventory.skipped) > most:
        lines.append(f"… and {len(inventory.skipped) - most} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class _Reading:
    """One look at the chosen sources and the ledger, made on a worker thread."""

    inventory: Inventory | str  # or why it could not be taken
    privacy: list[str] | str  # each campaign's line, or why the ledger could not be read


def _read(config_dir: Path, data_dir: Path, rules: DataRules, ledger: Path) -> _Reading:
    inventory: Inventory | str
    privacy: list[str] | str
    try:
        # Read afresh here: the box's own LocalData stays on the GUI thread, which may change it meanwhile.
        inventory = LocalData(config_dir, data_dir).inventory(rules)
    except LocalDataError as error:
        inventory = str(error)
    except Exception as error:  # a file gone mid-walk, a folder unreadable: the box must not stay on "Looking…"
        inventory = f"Can't look through them: {error}"
    try:
        privacy = [entry.describe() for entry in PrivacyLedger(ledger).entries()]
    except LedgerError as error:
        privacy = str(error)
    except Exception as error:
        privacy = f"Can't read the privacy ledger {ledger}: {error}"
    return _Reading(inventory, privacy)


LIMITS = (1.0, 2.0, 4.0, 8.0, 10.0, 16.0, math.inf)  # the ceilings offered; the CLI may set any other


class _Answers(QObject):
    arrived = Signal(int, object)  # (question number, a _Reading), on the GUI thread


class DataBox(QGroupBox):
    def __init__(
        self,
        config_dir: Path,
        data_dir: Path,
        *,
        rules: DataRules | None = None,
        parent: QWidget | None = None,
    ) -> None:
        """`config_dir` holds local-data.toml (the choices), `data_dir` the tokenized copies and the privacy
        ledger; `rules`: what is counted as used (by default `DataRules()`, a campaign's defaults)."""
        super().__init__("Your own data", parent)
        self.setObjectName("own-data")
        self.config_dir, self.data_dir = config_dir, data_dir
        self.rules = rules or DataRules()
        self.local: LocalData | None = None  # None while local-data.toml can't be read
        self._asked = 0  # questions sent; only the latest one's answer is shown
        # No parent, as in account_box: the worker thread holds it (never the box), and its last reference may
        # go on that thread; a parent deleting it first would have Shiboken delete it twice.
        self._answers = _Answers()
        self._answers.arrived.connect(self._show)

        self.sources = QListWidget()
        self.sources.setObjectName("own-data-sources")
        self.sources.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.sources.setMaximumHeight(84)
        self.sources.itemSelectionChanged.connect(self._selection_changed)
        self.add_folder = QPushButton("Add folder…")
        self.add_files = QPushButton("Add files…")
        self.remove = QPushButton("Remove")
        self.remove.setToolTip("Revoke: forgotten, and the tokenized copies made of your files are deleted")
        self.remove.setEnabled(False)
        self.add_folder.clicked.connect(self._pick_folder)
        self.add_files.clicked.connect(self._pick_files)
        self.remove.clicked.connect(self.remove_selected)
        self.notice = QLabel()  # what went wrong adding or removing; hidden when nothing did
        self.notice.setObjectName("own-data-notice")
        self.notice.setWordWrap(True)
        self.notice.setTextFormat(Qt.TextFormat.PlainText)
        self.notice.hide()
        self.summary = QLabel()
        self.summary.setObjectName("own-data-summary")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.linkActivated.connect(self._toggle_left_out)
        self.left_out = QPlainTextEdit()  # why each left-out file is left out; opened from the summary's link
        self.left_out.setObjectName("own-data-left-out")
        self.left_out.setReadOnly(True)
        self.left_out.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.left_out.setMaximumHeight(self.fontMetrics().lineSpacing() * 5 + 12)
        self.left_out.hide()
        note = QLabel(NOTE)
        note.setObjectName("own-data-note")
        note.setWordWrap(True)
        self.limit = QComboBox()  # the owner's own ceiling on any campaign's ε budget (local-data.toml)
        self.limit.setObjectName("own-data-limit")
        self.limit.setToolTip(
            "A campaign that may spend more of your privacy than this (or any amount) gets no update from your files"
        )
        self.limit.currentIndexChanged.connect(self._limit_chosen)
        limit_row = QHBoxLayout()
        limit_row.addWidget(QLabel("Each campaign may spend at most"))
        limit_row.addWidget(self.limit)
        limit_row.addStretch()
        self.privacy = QLabel("Privacy spent: checking…")
        self.privacy.setObjectName("own-data-privacy")
        self.privacy.setWordWrap(True)
        self.privacy.setTextFormat(Qt.TextFormat.PlainText)

        buttons = QHBoxLayout()
        for button in (self.add_folder, self.add_files, self.remove):
            buttons.addWidget(button)
        buttons.addStretch()
        layout = QVBoxLayout(self)
        layout.addWidget(self.sources)
        layout.addLayout(buttons)
        layout.addWidget(self.notice)
        layout.addWidget(self.summary)
        layout.addWidget(self.left_out)
        layout.addWidget(note)
        layout.addLayout(limit_row)
        layout.addWidget(self.privacy)

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / LEDGER_FILE

    def refresh(self) -> None:
        """Read the choices again (`commonweights volunteer data` may have changed them) and look through them
        in the background (the dialog does each time it opens)."""
        self._refresh([])

    def _refresh(self, problems: list[str]) -> None:
        try:
            self.local = LocalData(self.config_dir, self.data_dir)
        except LocalDataError as error:
            self.local = None
            problems = [*problems, f"{error}. Fix or remove that file to choose folders here."]
        self.notice.setText("\n".join(problems))
        self.notice.setHidden(not problems)
        sources = self.local.sources if self.local is not None else []
        self.sources.clear()
        for source in sources:
            item = QListWidgetItem(shown(source))
            item.setData(Qt.ItemDataRole.UserRole, str(source))
            item.setToolTip(str(source))
            self.sources.addItem(item)
        for button in (self.add_folder, self.add_files):
            button.setEnabled(self.local is not None)
        self._show_limit()
        self._selection_changed()
        self.summary.setToolTip("")
        self.left_out.clear()
        self.left_out.hide()
        if self.local is None:
            self.summary.setText("")
        elif not sources:
            self.summary.setText("None chosen: campaigns on volunteers' data get nothing from this computer.")
        else:
            self.summary.setText("Looking through them…")
        self._asked += 1
        number, answers = self._asked, self._answers
        config_dir, data_dir, rules, ledger = self.config_dir, self.data_dir, self.rules, self.ledger_path

        def work() -> None:  # holds nothing of the box's but the parentless `answers`
            answers.arrived.emit(number, _read(config_dir, data_dir, rules, ledger))

        threading.Thread(target=work, name="own-data", daemon=True).start()

    def add_paths(self, paths: Sequence[Path]) -> None:
        """Choose these folders or files (remembered in local-data.toml), then look through them all again."""
        if self.local is None:
            return
        problems = []
        for path in paths:
            try:
                self.local.add(path)
            except LocalDataError as error:
                problems.append(str(error))
        self._refresh(problems)

    def remove_selected(self) -> None:
        """Revoke the selected sources, once the volunteer confirms: forgotten, and the tokenized copies of
        their files deleted."""
        chosen = [Path(item.data(Qt.ItemDataRole.UserRole)) for item in self.sources.selectedItems()]
        if self.local is None or not chosen:
            return
        names = "\n".join(shown(path) for path in chosen)
        answer = QMessageBox.question(
            self,
            "Remove your own data",
            f"Stop training on these?\n\n{names}\n\nThey are forgotten here, and the tokenized copies made of your "
            "files are deleted. Your files themselves stay where they are.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Cancel,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return
        problems = []
        for path in chosen:
            try:
                self.local.remove(path)
            except (LocalDataError, OSError) as error:  # local-data.toml could not be written
                problems.append(f"Could not remove {shown(path)}: {error}")
        self._refresh(problems)

    def _show_limit(self) -> None:
        """The choices of ceiling, the current one (perhaps set with the CLI to another value) selected."""
        current = self.local.max_epsilon if self.local is not None else None
        values = sorted({*LIMITS, *([current] if current is not None else [])})
        self.limit.blockSignals(True)
        self.limit.clear()
        for value in values:
            self.limit.addItem("no limit (even no noise)" if math.isinf(value) else f"ε = {value:g}", value)
        if current is not None:
            self.limit.setCurrentIndex(values.index(current))
        self.limit.setEnabled(self.local is not None)
        self.limit.blockSignals(False)

    def _limit_chosen(self, index: int) -> None:
        value = self.limit.itemData(index)
        if self.local is None or value is None or value == self.local.max_epsilon:
            return
        try:
            self.local.set_max_epsilon(float(value))
        except (LocalDataError, OSError) as error:  # local-data.toml could not be written
            self._refresh([f"Could not change the privacy limit: {error}"])

    def _selection_changed(self) -> None:
        self.remove.setEnabled(self.local is not None and bool(self.sources.selectedItems()))

    def _show(self, number: int, reading: _Reading) -> None:
        if number != self._asked:
            return  # an older question's answer, overtaken by a newer one
        if self.local is not None and self.local.sources:
            inventory = reading.inventory
            if isinstance(inventory, Inventory):
                self.summary.setText(describe(inventory, self.rules))
                self.summary.setToolTip(_left_out(inventory, TOOLTIP_LEFT_OUT))
                self.left_out.setPlainText(_left_out(inventory, SHOWN_LEFT_OUT))
            else:
                self.summary.setText(html.escape(inventory))
        if isinstance(reading.privacy, str):
            self.privacy.setText(reading.privacy)
        elif reading.privacy:
            self.privacy.setText("Privacy spent, per campaign:\n" + "\n".join(reading.privacy))
        else:
            self.privacy.setText(NOTHING_SENT)

    def _toggle_left_out(self, link: str) -> None:
        if link == LEFT_OUT_LINK:
            self.left_out.setHidden(not self.left_out.isHidden())
            self.window().adjustSize()  # room for it, or back to the size without it

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of your own text")
        if folder:
            self.add_paths([Path(folder)])

    def _pick_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "Add files of your own text", "", f"Text ({' '.join('*' + kind for kind in self.rules.kinds)})"
        )
        self.add_paths([Path(file) for file in files])
