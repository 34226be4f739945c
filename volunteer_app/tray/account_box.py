"""The settings dialog's "Account" box: which volunteer account this machine is in, whether the account
paused it, and a field to link it with a code from the dashboard's My machines page.

    box = AccountBox(link=lambda code: link_machine(url, code, config_dir=d),
                     status=lambda: machine_status(url, config_dir=d))
    box.refresh()                      # reads the state in the background; the label follows

The calls go over the network, so they run on a worker thread and their answer comes back to the GUI
thread through a queued signal: the dialog never freezes on a slow or unreachable coordinator.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget

from volunteer_app.account import AccountError, Linked, MachineStatus

__all__ = ["AccountBox"]


class _Answers(QObject):
    arrived = Signal(int, object)  # (request number, a Linked, a MachineStatus or an AccountError), GUI thread


class AccountBox(QGroupBox):
    def __init__(
        self,
        *,
        link: Callable[[str], Linked],
        status: Callable[[], MachineStatus],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__("Account", parent)
        self.setObjectName("account")
        self._link, self._status = link, status
        self._asked = 0  # questions sent; only the latest one's answer is shown
        self._linking = False
        # No parent: Python alone owns it. The worker thread holds it (never the box), and the last reference
        # can go on that thread; Shiboken then deletes it on the main thread, which must not find it already
        # deleted by a parent (that double delete crashed the app's tests).
        self._answers = _Answers()
        self._answers.arrived.connect(self._show)
        self.state = QLabel("Checking…")
        self.state.setObjectName("account-state")
        self.state.setWordWrap(True)
        self.code = QLineEdit()
        self.code.setObjectName("link-code")
        self.code.setPlaceholderText("e.g. K7QX-M2PD")
        self.code.setToolTip("Make a code on the dashboard: My machines > Link a machine. It works once, for 15 min.")
        self.code.returnPressed.connect(self.link)
        self.link_button = QPushButton("Link")
        self.link_button.setObjectName("link")
        self.link_button.clicked.connect(self.link)
        row = QHBoxLayout()
        row.addWidget(self.code)
        row.addWidget(self.link_button)
        form = QFormLayout(self)
        form.addRow("This machine:", self.state)
        form.addRow("Link code:", row)

    def refresh(self) -> None:
        """Read the machine's state again (the dialog does each time it opens)."""
        if not self._linking:
            self._run(self._status)

    def link(self) -> None:
        code = self.code.text().strip()
        if not code:
            self.state.setText("Type the code the dashboard shows (My machines > Link a machine).")
            return
        self.link_button.setEnabled(False)
        self._linking = True
        self.state.setText("Linking…")
        self._run(functools.partial(self._link, code))

    def _run(self, call: Callable[[], object]) -> None:
        """`call` on a worker thread, its answer shown here. Nothing of the box's goes to the thread but the
        parentless `_answers`: a Qt object whose last reference ends on another thread must own itself."""
        self._asked += 1
        number, answers = self._asked, self._answers

        def work() -> None:
            try:
                answer: object = call()
            except AccountError as error:
                answer = error
            except Exception as error:  # whatever fails, the box must not stay on "Linking…"
                answer = AccountError("internal", f"that failed: {error}")
            answers.arrived.emit(number, answer)

        threading.Thread(target=work, name="account", daemon=True).start()

    def _show(self, number: int, answer: object) -> None:
        if number != self._asked:
            return  # an older question's answer, overtaken by a newer one
        self._linking = False
        self.link_button.setEnabled(True)
        if isinstance(answer, Linked):
            self.code.clear()
            self.state.setText(f"In the account {answer.account_name}. See it on the dashboard's My machines page.")
        elif isinstance(answer, MachineStatus):
            if answer.account_name is None:
                self.state.setText("In no account. Link it to see it, and pause it, from the dashboard.")
            else:
                paused = " Paused from the account's page." if answer.paused else ""
                self.state.setText(f"In the account {answer.account_name}.{paused}")
        elif isinstance(answer, AccountError):
            self.state.setText(str(answer))
