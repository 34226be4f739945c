"""A small line chart drawn with QPainter (QtCharts is not in PySide6-Essentials).

    chart = LineChart("Training loss", value_format="{:.2f}")
    chart.set_points([(t0, 5.1), (t1, 4.8), ...])     # (wall time in seconds, value)

The x axis is time, labelled relative to the newest point ("-5m", "now"); the y axis spans the
values shown, with the extremes labelled. Where the points are further apart than `gap_s` (and five
times their usual spacing), as across a pause, the line breaks; a `staircase` chart (a running
total) holds each value until the next.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

__all__ = ["LineChart"]


def _relative(seconds: float) -> str:
    if seconds < 1:
        return "now"
    if seconds < 99.5:
        return f"-{seconds:.0f}s"
    if seconds < 7200:
        return f"-{seconds / 60:.0f}m"
    return f"-{seconds / 3600:.1f}h"


class LineChart(QWidget):
    def __init__(
        self,
        title: str,
        *,
        value_format: str = "{:.3g}",
        colour: str = "#2e9d4f",
        gap_s: float = 10.0,
        staircase: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.gap_s = gap_s
        self.staircase = staircase
        self.title = title
        self.value_format = value_format
        self.colour = QColor(colour)
        self.points: list[tuple[float, float]] = []
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(260, 150)

    def sizeHint(self) -> QSize:
        return QSize(420, 190)

    def set_points(self, points: Iterable[tuple[float, float]]) -> None:
        self.points = [(x, y) for x, y in points if math.isfinite(y)]
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        palette = self.palette()
        text = palette.color(QPalette.ColorRole.WindowText)
        faint = QColor(text)
        faint.setAlpha(45)
        painter.fillRect(self.rect(), palette.color(QPalette.ColorRole.Base))
        metrics = painter.fontMetrics()
        line = metrics.height()
        title_font = painter.font()
        title_font.setBold(True)
        painter.setFont(title_font)
        painter.setPen(text)
        latest = f"  {self.value_format.format(self.points[-1][1])}" if self.points else ""
        painter.drawText(QPointF(8, line), f"{self.title}{latest}")
        painter.setFont(self.font())
        y0, y1 = self._y_range()
        left = max(56, max(metrics.horizontalAdvance(self._label(v)) for v in (y0, y1)) + 14)
        plot = QRectF(left, line * 1.6, self.width() - left - 12, self.height() - line * 3.0)
        if plot.width() < 20 or plot.height() < 20:
            return
        painter.setPen(QPen(faint, 1))
        for i in range(5):
            y = plot.top() + plot.height() * i / 4
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
        if len(self.points) < 2:
            painter.setPen(text)
            note = "no data yet" if not self.points else "one reading so far"
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, note)
            return
        x0, x1 = self.points[0][0], self.points[-1][0]
        span_x = max(x1 - x0, 1e-9)

        def at(x: float, y: float) -> QPointF:
            return QPointF(
                plot.left() + (x - x0) / span_x * plot.width(),
                plot.bottom() - (y - y0) / (y1 - y0) * plot.height(),
            )

        # A pause shows as a gap, not as a straight line across it.
        gap = max(self.gap_s, 5 * statistics.median(b[0] - a[0] for a, b in itertools.pairwise(self.points)))
        path = QPainterPath(at(*self.points[0]))
        for (x_before, y_before), (x, y) in itertools.pairwise(self.points):
            if self.staircase:  # a total that jumps when something is counted: level, then up
                path.lineTo(at(x, y_before))
                path.lineTo(at(x, y))
            elif x - x_before > gap:
                path.moveTo(at(x, y))
            else:
                path.lineTo(at(x, y))
        painter.setPen(QPen(self.colour, 2))
        painter.drawPath(path)
        painter.setPen(text)
        right_aligned = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for value, y in ((y1, plot.top()), (y0, plot.bottom())):
            painter.drawText(QRectF(0, y - line / 2, left - 6, line), right_aligned, self._label(value))
        baseline = plot.bottom() + line * 1.1
        painter.drawText(QPointF(plot.left(), baseline), _relative(x1 - x0))
        now_label = _relative(0)
        painter.drawText(QPointF(plot.right() - metrics.horizontalAdvance(now_label), baseline), now_label)

    def _y_range(self) -> tuple[float, float]:
        """The values shown, padded by 5 %; a flat series gets a unit-high band around it."""
        if not self.points:
            return 0.0, 1.0
        ys = [y for _, y in self.points]
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1e-12:
            return y0 - 0.5, y1 + 0.5
        pad = (y1 - y0) * 0.05
        low = max(0.0, y0 - pad) if y0 >= 0 else y0 - pad  # a non-negative series stays above zero
        return low, y1 + pad

    def _label(self, value: float) -> str:
        return self.value_format.format(value)
