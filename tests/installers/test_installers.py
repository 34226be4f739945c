"""The installers (installers/build.py) as a volunteer gets them.

- Linux: the .deb is built, unpacked, and its app run under Xvfb with a system tray, a fresh HOME
  and no project environment on PATH: the tray icon appears, first-run setup builds the training
  environment offline from a local wheel folder with CPU PyTorch, and the app trains a unit that a
  real coordinator process accepts.
- Windows: the NSIS installer is built with makensis; what it carries is listed with 7-Zip.
- The workflow that builds and smoke-tests all three on native runners passes actionlint.

Each skips, saying why, where its tools are missing (`.ci/run` installs them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.version import RELEASE_VERSION
from tests.support.live import LiveCoordinator, live_coordinator, poll
from volunteer_app.preferences import Preferences, save_preferences

REPO = Path(__file__).resolve().parents[2]
BUILD = [sys.executable, str(REPO / "installers" / "build.py")]
MAX_INSTALLER_BYTES = 80_000_000  # the target, each installer
ACTIONLINT = Path(sys.executable).with_name("actionlint")


def _sums_match(folder: Path) -> None:
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    assert lines, "SHA256SUMS is empty"
    for line in lines:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.skipif(not ACTIONLINT.exists(), reason="actionlint is not installed (the dev extra has it)")
def test_the_installer_workflow_passes_actionlint() -> None:
    workflows = sorted((REPO / ".github" / "workflows").glob("*.yml"))
    assert workflows
    done = subprocess.run([str(ACTIONLINT), *map(str, workflows)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (REPO / ".github" / "workflows" / "installers.yml").read_text()
    for target in ("linux", "windows", "macos"):
        assert f"installers/build.py {target}" in text, f"the workflow does not build {target}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is missing (apt-get install shellcheck)")
def test_the_debian_maintainer_scripts_pass_shellcheck() -> None:
    scripts = [REPO / "installers" / "linux" / name for name in ("postinst", "postrm")]
    done = subprocess.run(["shellcheck", "--shell=sh", *map(str, scripts)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("makensis") is None, reason="makensis is missing (apt-get install nsis)")
def test_the_windows_installer_is_built_with_makensis_and_carries_what_first_run_needs(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    subprocess.run([*BUILD, "windows", "--out", str(out), "--coordinator", "https://cw.example.org"], check=True)
    setup = out / f"Commonweights-Setup-{RELEASE_VERSION}.exe"
    assert setup.read_bytes()[:2] == b"MZ", "a Windows executable"
    assert setup.stat().st_size < MAX_INSTALLER_BYTES
    _sums_match(out)
    seven = shutil.which("7zz") or shutil.which("7z")
    if seven is None:
        pytest.skip("7z is missing (apt-get install 7zip): the installer was built, its contents not listed")
    listing = subprocess.run([seven, "l", "-slt", str(setup)], capture_output=True, text=True, check=True).stdout
    paths = {line.split(" = ", 1)[1].replace("\\", "/") for line in listing.splitlines() if line.startswith("Path = ")}
    assert "uv.exe" in paths
    wheels = {Path(p).name for p in paths if p.startswith("wheels/")}
    assert f"commonweights-{RELEASE_VERSION}-py3-none-any.whl" in wheels
    assert any(w.startswith("msgspec-") and w.endswith("win_amd64.whl") for w in wheels), wheels
    assert not any(w.startswith("torch-") for w in wheels), "torch comes at first run, for the device"
    extracted = tmp_path / "contents"
    subprocess.run([seven, "x", f"-o{extracted}", str(setup), "uv.exe"], check=True, capture_output=True)
    assert (extracted / "uv.exe").read_bytes()[:2] == b"MZ", "uv.exe is Windows' uv"


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is missing")
    pytest.importorskip("PyInstaller", reason="PyInstaller is missing (pip install commonweights[installers])")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([*BUILD, "linux", "--out", str(out)], check=True)
    (package,) = out.glob("commonweights_*_amd64.deb")
    _sums_match(out)
    return package


@pytest.fixture(scope="module")
def installed(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files as dpkg lays them out, under a folder instead of /."""
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


@pytest.mark.slow
def test_the_deb_holds_the_frozen_app_uv_the_wheel_and_a_menu_entry_and_no_torch(deb: Path, installed: Path) -> None:
    assert deb.stat().st_size < MAX_INSTALLER_BYTES
    control = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "Package: commonweights" in control and f"Version: {RELEASE_VERSION}" in control
    app = installed / "opt" / "commonweights"
    assert os.access(app / "commonweights-app", os.X_OK) and os.access(app / "uv", os.X_OK)
    assert (app / "wheels" / f"commonweights-{RELEASE_VERSION}-py3-none-any.whl").is_file()
    assert json.loads((app / "install.json").read_text()) == {"wheels": "wheels"}
    entry = (installed / "usr" / "share" / "applications" / "commonweights.desktop").read_text()
    assert "Exec=/opt/commonweights/commonweights-app" in entry
    if shutil.which("desktop-file-validate"):
        subprocess.run(["desktop-file-validate", str(installed / "usr/share/applications/commonweights.desktop")],
                       check=True)  # fmt: skip
    assert not list(app.rglob("libtorch*")) and not list(app.rglob("torch")), "torch comes at first run"
    assert (installed / "usr" / "bin" / "commonweights-app").is_symlink()


@pytest.fixture
def coordinator(tmp_path: Path, small_dataset: Path) -> Iterator[LiveCoordinator]:
    with live_coordinator(tmp_path, small_dataset) as live:
        live.api.post_campaign(
            {
                "name": "installed",
                "dataset": "small",
                "model": "tiny",
                "codec": "int8",
                "token_budget": 2_000_000,
                "inner": {"steps": 8, "batch_size": 2, "seq_len": 32, "warmup_steps": 0},
                "rounds": {"units_per_round": 1, "min_accepted": 1},
                "validation": {"replication_rate": 0.0, "holdout_check_rate": 0.0},
            }
        )
        yield live


@pytest.mark.slow
def test_the_installed_app_shows_its_tray_icon_sets_up_pytorch_on_first_run_and_trains_an_accepted_unit(
    installed: Path, coordinator: LiveCoordinator, wheelhouse: Path, tmp_path: Path
) -> None:
    from volunteer_app.tray.xsession import SystemTray, XSessionError, XvfbDisplay

    if shutil.which("trayer") is None:
        pytest.skip("trayer is missing (apt-get install trayer)")
    home = tmp_path / "home"
    home.mkdir()
    prefs = home / "preferences.toml"
    save_preferences(Preferences(coordinator_url=coordinator.ws, idle_minutes=0.01, cpu_cores=1), prefs)
    try:
        display = XvfbDisplay().start()
    except XSessionError as error:
        pytest.skip(str(error))
    tray = SystemTray(display.name).start()
    trace = home / "trace.jsonl"
    env = {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",  # no project environment: the app brings its own Python
        "DISPLAY": display.name,
        "QT_QPA_PLATFORM": "xcb",
        "LANG": "C.UTF-8",
        # An offline site: setup takes PyTorch from a local folder of wheels instead of the index.
        "COMMONWEIGHTS_SETUP_FIND_LINKS": str(wheelhouse),
        "COMMONWEIGHTS_SETUP_OFFLINE": "1",
    }
    app = installed / "opt" / "commonweights" / "commonweights-app"
    command = [str(app), "--preferences", str(prefs), "--trace", str(trace), "--name", "installed-app"]
    log = (home / "app.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def records() -> list[dict[str, Any]]:
            if process.poll() is not None:
                raise AssertionError(f"the app exited ({process.returncode}): {(home / 'app.log').read_text()[-3000:]}")
            if not trace.exists():
                return []
            return [json.loads(line) for line in trace.read_text().splitlines() if line.endswith("}")]

        training_env = home / ".local" / "share" / "commonweights" / "training-env"
        poll("first-run setup to build the training environment", lambda: (training_env / "setup.json").exists()
             and len(json.loads((training_env / "setup.json").read_text())["done"]) == 4, timeout=600)  # fmt: skip
        started = poll(
            "the tray icon",
            lambda: next((r for r in records() if r["kind"] == "app" and r.get("event") == "started"), None),
            timeout=120,
        )
        assert started["tray"] is not None, "the icon sits in the system tray, not in a window"

        def accepted() -> int:
            with sqlite3.connect(f"file:{coordinator.data_dir / 'coordinator.sqlite3'}?mode=ro", uri=True) as db:
                return int(db.execute(
                    "SELECT COUNT(*) FROM submissions s JOIN volunteers v ON v.id = s.volunteer_id "
                    "WHERE v.name = 'installed-app' AND s.status = 'accepted'"
                ).fetchone()[0])  # fmt: skip

        poll("a unit from the installed app to be accepted", accepted, timeout=600)
        children = [r for r in records() if r["kind"] == "child" and r.get("event") == "started"]
        assert children, "training ran in a child process"
        python = training_env / "venv" / "bin" / "python"
        assert python.exists()
        try:  # the training child runs from the training environment's Python (unless it finished already:
            # an exited child not yet reaped has an empty command line)
            argv = [arg for arg in Path(f"/proc/{children[-1]['pid']}/cmdline").read_bytes().split(b"\0") if arg]
        except OSError:
            argv = []
        assert not argv or argv[0].decode() == str(python), argv
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        tray.stop()
        display.stop()
