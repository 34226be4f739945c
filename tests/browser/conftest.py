"""Chromium for the browser tests: Debian's, driven by Playwright (never Playwright's own download).

Test modules that need it skip themselves, saying why, where /usr/bin/chromium (or
COMMONWEIGHTS_CHROMIUM) or the playwright package is missing: `needs_chromium()` at module level.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import REPO

CHROMIUM = Path(os.environ.get("COMMONWEIGHTS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def needs_chromium() -> Any:
    """The playwright.sync_api module; skips the calling test module where Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = needs_chromium()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: COMMONWEIGHTS_SCREENSHOTS (e.g. docs/screenshots) or the test's temporary folder."""
    folder = Path(os.environ.get("COMMONWEIGHTS_SCREENSHOTS", tmp_path))
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    return folder
