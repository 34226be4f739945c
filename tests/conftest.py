"""Fixtures shared across the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

# `backend` (SQLite, or PostgreSQL + S3) and the servers behind it.
pytest_plugins = ["tests.support.backends"]


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpus (this Python's stdlib sources), cut small so it prepares in about a second."""
    from training.data import ensure_default_dataset

    return ensure_default_dataset(tmp_path_factory.mktemp("cache"), max_bytes=400_000, vocab_size=512, progress=False)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with this release's wheel and every wheel its training environment needs, as an
    offline site has them (installers/build.py `training_wheels`); made once per run."""
    from installers.build import training_wheels

    folder = tmp_path_factory.mktemp("wheels")
    training_wheels(folder)
    return folder
