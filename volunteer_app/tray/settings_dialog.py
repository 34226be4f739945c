"""The settings dialog: coordinator, computing preferences, device and autostart, applied at once.

    dialog = SettingsDialog(controller.preferences, apply=controller.apply_preferences,
                            idle_description=controller.idle_source.description)
    dialog.show()

OK and Apply build a new `Preferences` (which validates every field) and hand it to `apply`; an
invalid value is shown next to its field and nothing changes. Fields this dialog does not show
(a snooze, keys from a newer app) are kept as they were.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractButton,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from volunteer_app.duty import DutyCycle
from volunteer_app.preferences import DEVICES, THEMES, Preferences, PreferencesError, TimeWindow
from volunteer_app.tray.account_box import AccountBox
from volunteer_app.tray.data_box import DataBox

__all__ = ["SettingsDialog", "format_windows", "parse_gpus", "parse_windows"]

_ERROR_STYLE = "border: 2px solid #d13b32;"


def format_windows(windows: tuple[TimeWindow, ...]) -> str:
    return ", ".join(f"{w.start:%H:%M}-{w.end:%H:%M}" for w in windows)


def parse_windows(text: str) -> list[tuple[str, str]]:
    """ "22:00-07:00, 12:00-13:00" → [("22:00", "07:00"), ("12:00", "13:00")]; empty: any time."""
    pairs = []
    for i, part in enumerate(p.strip() for p in text.replace("–", "-").split(",")):
        if not part:
            continue
        start, dash, end = part.partition("-")
        if not dash:
            raise PreferencesError(f"time_windows[{i}]", f"write a window as start-end, like 22:00-07:00; got {part!r}")
        pairs.append((start.strip(), end.strip()))
    return pairs


def parse_gpus(text: str) -> list[object]:
    """ "0, 2" as [0, 2]; "" or "all" as [] (every GPU); anything else is passed on for Preferences to refuse."""
    items = [item.strip() for item in text.replace(";", ",").split(",") if item.strip()]
    if [item.lower() for item in items] in ([], ["all"]):
        return []
    return [int(item) if item.isascii() and item.isdigit() else item for item in items]


def _spin(low: int, high: int, *, special: str | None = None, suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setSuffix(suffix)
    if special is not None:
        box.setSpecialValueText(special)
    return box


class SettingsDialog(QDialog):
    def __init__(
        self,
        prefs: Preferences,
        *,
        apply: Callable[[Preferences], None],
        idle_description: str = "",
        rebuild: Callable[[], None] | None = None,
        account: AccountBox | None = None,
        own_data: DataBox | None = None,
        parent: QWidget | None = None,
    ) -> None:
        """`account`: the box linking this machine to a volunteer account; `own_data`: the box choosing the
        volunteer's own files for campaigns that train on them (None: not shown)."""
        super().__init__(parent)
        self.setWindowTitle("Commonweights — Settings")
        self.setObjectName("settings")
        self._apply = apply
        self._prefs = prefs

        self.coordinator_url = QLineEdit()
        self.coordinator_url.setPlaceholderText("http://127.0.0.1:8470")
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.theme = QComboBox()
        self.theme.addItems(list(THEMES))
        self.autostart = QCheckBox("Start Commonweights when I log in")

        self.idle_minutes = QDoubleSpinBox()
        self.idle_minutes.setRange(0, 1440)
        self.idle_minutes.setDecimals(2)
        self.idle_minutes.setSuffix(" min")
        self.suspend_on_input = QCheckBox("Suspend as soon as I use the keyboard or mouse")
        self.run_on_battery = QCheckBox("Work while the computer runs on battery")
        self.suspend_while_fullscreen = QCheckBox("Pause while a window is full screen (games, films)")
        self.keep_awake_on_ac = QCheckBox("Keep the computer awake while it trains on mains power")
        self.time_windows = QLineEdit()
        self.time_windows.setPlaceholderText("any time, or e.g. 22:00-07:00, 12:00-13:00")
        self.exclusive_programs = QLineEdit()
        self.exclusive_programs.setPlaceholderText("none, or e.g. steam, blender.exe")
        self.exclusive_programs.setToolTip("Training pauses while any of these programs runs (games, editors)")
        self.network_mb_per_day = _spin(0, 1 << 30, special="no cap", suffix=" MB")

        self.cpu_cores = _spin(0, max(os.cpu_count() or 1, 1), special="all")
        self.cpu_percent = _spin(1, 100, suffix=" %")
        self.suspend_other_cpu_percent = QDoubleSpinBox()
        self.suspend_other_cpu_percent.setRange(0, 100)
        self.suspend_other_cpu_percent.setDecimals(0)
        self.suspend_other_cpu_percent.setSuffix(" %")
        self.suspend_other_cpu_percent.setSpecialValueText("never")
        self.pause_above_celsius = QDoubleSpinBox()
        self.pause_above_celsius.setRange(0, 120)
        self.pause_above_celsius.setDecimals(0)
        self.pause_above_celsius.setSuffix(" °C")
        self.pause_above_celsius.setSpecialValueText("never")
        self.pause_above_celsius.setToolTip(
            "Pause while the hottest CPU or GPU sensor reads this much, until it has cooled by 10 °C"
        )
        self.gpu_only_when_idle = QCheckBox("Use the GPU only while I am away")
        self.gpu_memory_limit_mb = _spin(0, 1 << 24, special="no limit", suffix=" MB")
        self.gpu_percent = _spin(1, 100, suffix=" %")
        self.gpu_percent.setToolTip("Share of each second the training may use the GPU")
        self.gpus = QLineEdit()
        self.gpus.setPlaceholderText("all, or e.g. 0, 2")
        self.gpus.setToolTip("Which NVIDIA GPUs may train, numbered as nvidia-smi numbers them")

        self.fields: dict[str, QWidget] = {
            "coordinator_url": self.coordinator_url,
            "device": self.device,
            "theme": self.theme,
            "autostart": self.autostart,
            "idle_minutes": self.idle_minutes,
            "suspend_on_input": self.suspend_on_input,
            "run_on_battery": self.run_on_battery,
            "suspend_while_fullscreen": self.suspend_while_fullscreen,
            "keep_awake_on_ac": self.keep_awake_on_ac,
            "time_windows": self.time_windows,
            "exclusive_programs": self.exclusive_programs,
            "network_mb_per_day": self.network_mb_per_day,
            "cpu_cores": self.cpu_cores,
            "cpu_percent": self.cpu_percent,
            "suspend_other_cpu_percent": self.suspend_other_cpu_percent,
            "pause_above_celsius": self.pause_above_celsius,
            "gpu_only_when_idle": self.gpu_only_when_idle,
            "gpu_memory_limit_mb": self.gpu_memory_limit_mb,
            "gpu_percent": self.gpu_percent,
            "gpus": self.gpus,
        }

        general = QFormLayout()
        general.addRow("Coordinator URL:", self.coordinator_url)
        general.addRow("Device:", self.device)
        general.addRow("Appearance:", self.theme)
        general.addRow("", self.autostart)
        # An installed app's training environment (PyTorch for the device): built again at the next
        # start, e.g. after a driver update, or to switch to the CPU build.
        self.rebuild: QPushButton | None = None
        if rebuild is not None:
            self.rebuild = QPushButton("Set up PyTorch again at the next start")
            self.rebuild.setObjectName("rebuild")
            self.rebuild.setToolTip("After a GPU driver update, or to choose the CPU build: quit and start the app")

            def request() -> None:
                rebuild()
                assert self.rebuild is not None
                self.rebuild.setEnabled(False)
                self.rebuild.setText("PyTorch is set up again when the app next starts")

            self.rebuild.clicked.connect(request)
            general.addRow("PyTorch:", self.rebuild)
        when = QFormLayout()
        when.addRow("Start after idle for:", self.idle_minutes)
        when.addRow("", self.suspend_on_input)
        when.addRow("", self.run_on_battery)
        when.addRow("", self.suspend_while_fullscreen)
        when.addRow("", self.keep_awake_on_ac)
        when.addRow("Only during:", self.time_windows)
        when.addRow("Pause while these run:", self.exclusive_programs)
        when.addRow("Network per day:", self.network_mb_per_day)
        idle_note = QLabel(idle_description)
        idle_note.setWordWrap(True)
        idle_note.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.MinimumExpanding)
        idle_note.setMinimumWidth(320)
        when.addRow("Idle detection:", idle_note)
        usage = QFormLayout()
        usage.addRow("CPU cores:", self.cpu_cores)
        usage.addRow("CPU time:", self.cpu_percent)
        usage.addRow("Suspend when other programs use over:", self.suspend_other_cpu_percent)
        usage.addRow("Pause when the CPU or GPU is hotter than:", self.pause_above_celsius)
        usage.addRow("", self.gpu_only_when_idle)
        usage.addRow("GPU memory limit:", self.gpu_memory_limit_mb)
        if DutyCycle.supported():  # held by suspending the process, which Windows can't do from outside
            usage.addRow("GPU time:", self.gpu_percent)
        else:
            self.gpu_percent.hide()
        usage.addRow("GPUs to use:", self.gpus)

        self.error = QLabel()
        self.error.setObjectName("error")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #d13b32; font-weight: bold;")
        self.error.hide()
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok
            | QDialogButtonBox.StandardButton.Apply
            | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.clicked.connect(self._clicked)

        # Two columns: in one, the dialog would be taller than a laptop's screen.
        columns = QHBoxLayout()
        left, right = QVBoxLayout(), QVBoxLayout()
        for column, title, form in (
            (left, "Connection", general),
            (left, "When to work", when),
            (right, "How much to use", usage),
        ):
            box = QGroupBox(title)
            box.setLayout(form)
            column.addWidget(box)
        self.account = account
        if account is not None:
            right.addWidget(account)
            account.refresh()
        self.own_data = own_data
        if own_data is not None:
            right.addWidget(own_data)
            own_data.refresh()
        for column in (left, right):
            column.addStretch()
            columns.addLayout(column)
        layout = QVBoxLayout(self)
        layout.addLayout(columns)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)
        self.load(prefs)

    def load(self, prefs: Preferences) -> None:
        """Show `prefs` in the fields, clearing any error."""
        self._prefs = prefs
        self.coordinator_url.setText(prefs.coordinator_url)
        self.device.setCurrentText(prefs.device)
        self.theme.setCurrentText(prefs.theme)
        self.autostart.setChecked(prefs.autostart)
        self.idle_minutes.setValue(prefs.idle_minutes)
        self.suspend_on_input.setChecked(prefs.suspend_on_input)
        self.run_on_battery.setChecked(prefs.run_on_battery)
        self.suspend_while_fullscreen.setChecked(prefs.suspend_while_fullscreen)
        self.keep_awake_on_ac.setChecked(prefs.keep_awake_on_ac)
        self.time_windows.setText(format_windows(prefs.time_windows))
        self.exclusive_programs.setText(", ".join(prefs.exclusive_programs))
        self.network_mb_per_day.setValue(prefs.network_mb_per_day or 0)
        self.cpu_cores.setValue(prefs.cpu_cores or 0)
        self.cpu_percent.setValue(prefs.cpu_percent)
        self.suspend_other_cpu_percent.setValue(prefs.suspend_other_cpu_percent)
        self.pause_above_celsius.setValue(prefs.pause_above_celsius)
        self.gpu_only_when_idle.setChecked(prefs.gpu_only_when_idle)
        self.gpu_memory_limit_mb.setValue(prefs.gpu_memory_limit_mb or 0)
        self.gpu_percent.setValue(prefs.gpu_percent)
        self.gpus.setText(", ".join(str(i) for i in prefs.gpus))
        self._show_error(None)

    def preferences(self) -> Preferences:
        """The preferences the fields describe; PreferencesError names the bad field."""
        return dataclasses.replace(
            self._prefs,
            coordinator_url=self.coordinator_url.text(),
            device=self.device.currentText(),  # type: ignore[arg-type]  # Preferences checks it
            theme=self.theme.currentText(),
            autostart=self.autostart.isChecked(),
            idle_minutes=self._idle_minutes(),
            suspend_on_input=self.suspend_on_input.isChecked(),
            run_on_battery=self.run_on_battery.isChecked(),
            suspend_while_fullscreen=self.suspend_while_fullscreen.isChecked(),
            keep_awake_on_ac=self.keep_awake_on_ac.isChecked(),
            time_windows=tuple(parse_windows(self.time_windows.text())),  # type: ignore[arg-type]
            exclusive_programs=tuple(p.strip() for p in self.exclusive_programs.text().split(",") if p.strip()),
            network_mb_per_day=self.network_mb_per_day.value() or None,
            cpu_cores=self.cpu_cores.value() or None,
            cpu_percent=self.cpu_percent.value(),
            suspend_other_cpu_percent=self.suspend_other_cpu_percent.value(),
            pause_above_celsius=self.pause_above_celsius.value(),
            gpu_only_when_idle=self.gpu_only_when_idle.isChecked(),
            gpu_memory_limit_mb=self.gpu_memory_limit_mb.value() or None,
            gpu_percent=self.gpu_percent.value(),
            gpus=parse_gpus(self.gpus.text()),  # type: ignore[arg-type]  # Preferences checks it
        )

    def _idle_minutes(self) -> float:
        """The spin box rounds to 0.01 min; an unchanged box keeps the file's exact value."""
        shown, kept = self.idle_minutes.value(), self._prefs.idle_minutes
        return kept if round(kept, 2) == shown else shown

    def apply(self) -> bool:
        """Validate and apply; False (with the error shown) when something is wrong."""
        try:
            prefs = self.preferences()
            self._apply(prefs)
        except PreferencesError as error:
            self._show_error(error.message, error.field)
            return False
        except OSError as error:  # autostart or the preferences file could not be written
            self._show_error(str(error))
            return False
        self._prefs = prefs
        self._show_error(None)
        return True

    def _clicked(self, button: QAbstractButton) -> None:
        role = self.buttons.buttonRole(button)
        if role == QDialogButtonBox.ButtonRole.RejectRole:
            self.reject()
        elif role == QDialogButtonBox.ButtonRole.ApplyRole:
            self.apply()
        elif role == QDialogButtonBox.ButtonRole.AcceptRole and self.apply():
            self.accept()

    def _show_error(self, message: str | None, field: str | None = None) -> None:
        for widget in self.fields.values():
            widget.setStyleSheet("")
        if message is None:
            self.error.hide()
            return
        name = (field or "").split("[")[0].split(".")[0]
        culprit = self.fields.get(name)
        label = name.replace("_", " ") if culprit is not None else ""
        self.error.setText(f"{label.capitalize()}: {message}" if label else message)
        self.error.show()
        if culprit is not None:
            culprit.setStyleSheet(_ERROR_STYLE)
            culprit.setFocus(Qt.FocusReason.OtherFocusReason)
