"""The tray icon for each app state, drawn with QPainter so it is crisp at every size.

    icon = state_icon(AppState.TRAINING)     # a QIcon with 16-256 px renderings
    render_state(AppState.PAUSED, 64)        # one QImage, as `assets/make_icons.py` saves them

Each state has its own colour and glyph, so the states differ in shape as well as colour: a play
triangle (training), a clock (waiting for idle), two bars (paused), a "z" (snoozed), an exclamation
mark (error) and a crossed-out link (offline). No artwork is downloaded; `assets/icons/` holds these
same drawings as PNG files for installers and documentation.
"""

from __future__ import annotations

from functools import cache

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QIcon, QImage, QPainter, QPainterPath, QPen, QPixmap

from volunteer_app.tray.controller import AppState

__all__ = ["COLOURS", "SIZES", "render_state", "state_icon"]

SIZES = (16, 22, 24, 32, 48, 64, 128, 256)
COLOURS = {
    AppState.TRAINING: "#2e9d4f",
    AppState.WAITING: "#3a78c2",
    AppState.PAUSED: "#d99a1e",
    AppState.SNOOZED: "#7b5cc4",
    AppState.ERROR: "#d13b32",
    AppState.OFFLINE: "#6f7782",
}


def render_state(state: AppState, size: int) -> QImage:
    """One rendering of the icon, `size` pixels square, on a transparent background."""
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.scale(size / 100.0, size / 100.0)  # draw on a 100 × 100 canvas
    colour = QColor(COLOURS[state])
    painter.setPen(QPen(colour.darker(140), 4))
    painter.setBrush(QBrush(colour))
    painter.drawEllipse(QRectF(4, 4, 92, 92))
    white = QColor("#ffffff")
    painter.setPen(QPen(white, 10, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin))
    painter.setBrush(Qt.BrushStyle.NoBrush)
    _GLYPHS[state](painter, white)
    painter.end()
    return image


def _training(painter: QPainter, white: QColor) -> None:
    path = QPainterPath(QPointF(38, 28))
    path.lineTo(QPointF(72, 50))
    path.lineTo(QPointF(38, 72))
    path.closeSubpath()
    painter.setBrush(white)
    painter.setPen(QPen(white, 6, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin))
    painter.drawPath(path)


def _waiting(painter: QPainter, white: QColor) -> None:
    painter.setPen(QPen(white, 8))
    painter.drawEllipse(QRectF(24, 24, 52, 52))
    painter.setPen(QPen(white, 8, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    painter.drawLine(QPointF(50, 50), QPointF(50, 34))
    painter.drawLine(QPointF(50, 50), QPointF(62, 58))


def _paused(painter: QPainter, white: QColor) -> None:
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(white)
    painter.drawRoundedRect(QRectF(32, 28, 13, 44), 3, 3)
    painter.drawRoundedRect(QRectF(55, 28, 13, 44), 3, 3)


def _snoozed(painter: QPainter, white: QColor) -> None:
    path = QPainterPath(QPointF(33, 32))
    path.lineTo(QPointF(67, 32))
    path.lineTo(QPointF(33, 68))
    path.lineTo(QPointF(67, 68))
    painter.drawPath(path)


def _error(painter: QPainter, white: QColor) -> None:
    painter.setPen(QPen(white, 12, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    painter.drawLine(QPointF(50, 26), QPointF(50, 56))
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(white)
    painter.drawEllipse(QPointF(50, 73), 7, 7)


def _offline(painter: QPainter, white: QColor) -> None:
    painter.setPen(QPen(white, 8, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    painter.drawArc(QRectF(24, 34, 30, 30), 90 * 16, 180 * 16)  # a broken chain link, left half
    painter.drawArc(QRectF(46, 34, 30, 30), -90 * 16, 180 * 16)  # and right half
    painter.drawLine(QPointF(30, 30), QPointF(70, 70))


_GLYPHS = {
    AppState.TRAINING: _training,
    AppState.WAITING: _waiting,
    AppState.PAUSED: _paused,
    AppState.SNOOZED: _snoozed,
    AppState.ERROR: _error,
    AppState.OFFLINE: _offline,
}


@cache
def state_icon(state: AppState) -> QIcon:
    """The icon for `state`, at every size in SIZES (needs a QGuiApplication)."""
    icon = QIcon()
    for size in SIZES:
        icon.addPixmap(QPixmap.fromImage(render_state(state, size)))
    return icon
