"""Light or dark: the app follows the system's colour scheme, or the volunteer's choice.

    >>> apply_theme(qt_app, "system")     # or "light", "dark"; again whenever the preference changes

Qt knows the system's scheme on Windows, macOS and desktops with a Qt platform theme (GNOME's portal,
KDE), and follows it by itself. Where it doesn't (`Qt.ColorScheme.Unknown`: a bare X11 session, a
desktop without a platform theme), the GNOME setting `org.gnome.desktop.interface color-scheme`
(`gsettings`) or a `GTK_THEME` ending in `:dark` says it. A dark scheme Qt can't apply itself is drawn
with the Fusion style and a dark palette; the charts read the palette, so they follow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

__all__ = ["apply_theme", "desktop_scheme"]


def desktop_scheme(environ: dict[str, str] | None = None) -> str | None:
    """ "dark" or "light" as the desktop's settings say, or None when they don't say."""
    env = os.environ if environ is None else environ
    gtk = env.get("GTK_THEME", "")
    if gtk:
        return "dark" if gtk.lower().endswith(":dark") or gtk.lower().endswith("-dark") else "light"
    gsettings = shutil.which("gsettings")
    if gsettings is None:
        return None
    try:
        answer = subprocess.run(
            [gsettings, "get", "org.gnome.desktop.interface", "color-scheme"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"'prefer-dark'": "dark", "'prefer-light'": "light", "'default'": "light"}.get(answer)


def _dark_palette() -> Any:
    from PySide6.QtGui import QColor, QPalette

    palette = QPalette()
    role, group = QPalette.ColorRole, QPalette.ColorGroup
    colours = {
        role.Window: "#1a2129",
        role.WindowText: "#e7ecf1",
        role.Base: "#11161c",
        role.AlternateBase: "#1f2730",
        role.Text: "#e7ecf1",
        role.Button: "#232c36",
        role.ButtonText: "#e7ecf1",
        role.ToolTipBase: "#1a2129",
        role.ToolTipText: "#e7ecf1",
        role.PlaceholderText: "#8593a1",
        role.Highlight: "#6cb4e8",
        role.HighlightedText: "#0b1a26",
        role.Link: "#6cb4e8",
        role.BrightText: "#ff8a8f",
    }
    for which, colour in colours.items():
        palette.setColor(which, QColor(colour))
    for which in (role.WindowText, role.Text, role.ButtonText):
        palette.setColor(group.Disabled, which, QColor("#6b7884"))
    return palette


def apply_theme(app: Any, preference: str) -> str:
    """Make `app` (a QApplication) light or dark by `preference` ("system", "light", "dark"); returns
    the scheme it shows."""
    from PySide6.QtCore import Qt

    hints = app.styleHints()
    if hasattr(hints, "unsetColorScheme"):  # Qt 6.8: forget an earlier choice, to read the system's own
        hints.unsetColorScheme()
    known = {Qt.ColorScheme.Dark: "dark", Qt.ColorScheme.Light: "light"}.get(hints.colorScheme())
    wanted = preference if preference in ("light", "dark") else known or desktop_scheme() or "light"
    if preference in ("light", "dark") and hasattr(hints, "setColorScheme"):  # where the platform can
        hints.setColorScheme(Qt.ColorScheme.Dark if wanted == "dark" else Qt.ColorScheme.Light)
        known = {Qt.ColorScheme.Dark: "dark", Qt.ColorScheme.Light: "light"}.get(hints.colorScheme())
    drawn_by_us = hasattr(app, "_commonweights_style")
    if known == wanted:  # the platform draws it: undo our own dark drawing, if any
        if drawn_by_us:
            app.setStyle(app._commonweights_style)
            app.setPalette(app.style().standardPalette())
            del app._commonweights_style
        return wanted
    if wanted == "dark":
        if not drawn_by_us:
            app._commonweights_style = app.style().name()  # what to go back to
        app.setStyle("Fusion")
        app.setPalette(_dark_palette())
    elif drawn_by_us:
        app.setStyle(app._commonweights_style)
        app.setPalette(app.style().standardPalette())
        del app._commonweights_style
    return wanted
