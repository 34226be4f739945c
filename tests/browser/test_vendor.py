"""The vendored JavaScript (coordinator/static/vendor/) is exactly what .ci/vendor_js.py pinned: every
file listed in VENDOR.json with its SHA-256, each package with its license, nothing else."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.live import REPO

VENDOR = REPO / "coordinator" / "static" / "vendor"


def test_the_vendored_files_are_the_pinned_ones_with_their_licenses() -> None:
    check = subprocess.run(
        [sys.executable, ".ci/vendor_js.py", "--check"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    manifest = json.loads((VENDOR / "VENDOR.json").read_text())
    assert {entry["package"] for entry in manifest.values()} == {"onnxruntime-web", "@msgpack/msgpack"}
    for name, entry in manifest.items():
        assert "LICENSE" in entry["files"] and entry["npm_integrity"].startswith("sha512-"), name
        assert entry["license"] in (VENDOR / name / "LICENSE").read_text() or entry["license"] == "ISC", name


def test_a_changed_or_added_vendored_file_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    target = copy / "msgpack-msgpack-3.1.3" / "dist.esm" / "index.mjs"
    target.write_bytes(target.read_bytes() + b"\n// tampered\n")
    (copy / "extra.js").write_text("// not pinned")
    check = subprocess.run(
        [sys.executable, ".ci/vendor_js.py", "--check", str(copy)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 1, check.stdout
    assert "changed: msgpack-msgpack-3.1.3/dist.esm/index.mjs" in check.stdout
    assert "not in VENDOR.json: extra.js" in check.stdout
