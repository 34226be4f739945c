"""Render the tray app's state icons into assets/icons/ (PNG, 16-256 px) from volunteer_app/tray/icons.py.

    python assets/make_icons.py            # rewrites assets/icons/<state>-<size>.png

The app draws the same icons itself at run time; these files are for installers (a .desktop icon,
a Windows .ico, a macOS bundle) and for documentation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PySide6.QtGui import QGuiApplication

from volunteer_app.tray.controller import AppState
from volunteer_app.tray.icons import SIZES, render_state

OUT = Path(__file__).resolve().parent / "icons"


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QGuiApplication(sys.argv[:1])
    OUT.mkdir(exist_ok=True)
    for state in AppState:
        for size in SIZES:
            if not render_state(state, size).save(str(OUT / f"{state.value}-{size}.png")):
                raise SystemExit(f"could not write {OUT / f'{state.value}-{size}.png'}")
    print(f"wrote {len(AppState) * len(SIZES)} icons to {OUT}")
    del app
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
