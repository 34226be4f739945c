"""Fixtures shared across the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpus (this Python's stdlib sources), cut small so it prepares in about a second."""
    from training.data import ensure_default_dataset

    return ensure_default_dataset(tmp_path_factory.mktemp("cache"), max_bytes=400_000, vocab_size=512, progress=False)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with this release's wheel and every wheel its training environment needs, as an
    offline site has them; made once per run. torch comes from pip's configuration: on these machines
    a local CPU wheel (pip.conf's find-links); elsewhere, point PIP_INDEX_URL at a CPU wheel index."""
    from volunteer_app.environment import TORCH_VERSION

    folder = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(folder), str(REPO)],
        check=True,
        cwd=REPO,
    )
    (wheel,) = folder.glob("commonweights-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "-d", str(folder), f"torch=={TORCH_VERSION}", str(wheel)],
        check=True,
    )
    return folder
