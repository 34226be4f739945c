"""The layers of DESIGN.md hold, and `lint-imports` (the contracts in pyproject.toml) notices when one breaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[dev]')")

REPO = Path(__file__).resolve().parents[1]
INDEPENDENT = "coordinator and volunteer_app never import each other"
PACKAGES = ("protocol", "training", "coordinator", "volunteer_app", "benchmarks", "commonweights", "tests")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` over the packages under `root`, with the real tree's contracts."""
    command = Path(sys.executable).with_name("lint-imports")
    if not command.exists():
        pytest.skip(f"no lint-imports next to {sys.executable}")
    # PYTHONPATH first, so a copied tree shadows the installed (editable) packages.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(command), "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_real_tree_keeps_every_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        ("protocol/limits.py", "import training.model", "protocol imports nothing of ours"),
        ("training/outer.py", "import coordinator.store.blobs", "training imports only protocol"),
        ("coordinator/campaign.py", "import volunteer_app.policy", INDEPENDENT),
        ("volunteer_app/policy.py", "import coordinator.campaign", INDEPENDENT),
        ("volunteer_app/events.py", "import benchmarks.report", "the product never imports the benchmarks"),
        ("benchmarks/report.py", "import commonweights.demo", "nothing imports commonweights (the CLI)"),
        ("tests/support/live.py", "import commonweights.demo", "nothing imports commonweights (the CLI)"),
    ],
)
def test_a_wrong_import_breaks_its_contract(tmp_path: Path, module: str, wrong_import: str, contract: str) -> None:
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "static", "*.png")
        )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert lint_imports(tmp_path).returncode == 0, "the copy should pass before it is broken"

    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{wrong_import}  # deliberately against the layers\n")
    result = lint_imports(tmp_path)

    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {wrong_import.split()[1]}" in result.stdout, result.stdout
