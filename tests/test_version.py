"""One version number: pyproject.toml's, read from the package metadata, reported everywhere the same."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from commonweights.cli import main
from coordinator.app import create_app
from coordinator.service import CoordinatorConfig
from protocol.version import RELEASE_VERSION

REPO = Path(__file__).resolve().parents[1]


def test_the_release_version_is_pyprojects_as_installed() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert RELEASE_VERSION == version("commonweights") == declared


def test_the_cli_reports_the_release_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"commonweights {RELEASE_VERSION}"


async def test_the_coordinators_health_reports_the_release_version(tmp_path: Path) -> None:
    app = create_app(CoordinatorConfig(data_dir=tmp_path / "data", datasets={}))
    async with TestClient(TestServer(app)) as client, client.get("/api/health") as response:
        assert response.status == 200
        assert (await response.json())["version"] == RELEASE_VERSION
