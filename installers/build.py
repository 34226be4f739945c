"""Build the volunteer app's installers into dist/, with SHA256SUMS beside them.

    python installers/build.py linux     # dist/commonweights_VERSION_amd64.deb (needs dpkg-deb)
    python installers/build.py windows   # dist/Commonweights-Setup-VERSION.exe (needs makensis)
    python installers/build.py macos     # dist/Commonweights-VERSION.dmg (on macOS only; see installers/README.md)
    python installers/build.py wheels --out DIR   # the wheels first-run setup needs, for an offline site

Every installer is small: it carries the tray app (which never imports torch), uv, and this release's
wheel. On first run the app builds its training environment with the PyTorch build the machine's
device wants (volunteer_app/environment.py), so nobody downloads CUDA libraries for a CPU.

- **linux**: the tray app frozen with PyInstaller (its own Python and Qt) under /opt/commonweights,
  an app-menu entry, and a postrm that removes the users' training environments (never their
  credentials or statistics).
- **windows**: an NSIS installer (per user, no administrator) with uv.exe from uv's Windows wheel and
  the wheels of the app's environment, which it builds at install time (uv fetches a Python and Qt);
  Start menu and desktop shortcuts, opt-in autostart, the coordinator URL asked on a page, and an
  uninstaller that keeps the user's data unless asked.
- **macos**: the frozen app as Commonweights.app in a .dmg, signed and notarized when the signing
  inputs are given.

Inputs from the environment: COMMONWEIGHTS_WHEELS (a folder of wheels to take the Windows app's
from instead of the package index), and for macOS APPLE_SIGNING_IDENTITY, APPLE_ID, APPLE_TEAM_ID,
APPLE_APP_PASSWORD.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "installers"
ICON = REPO / "assets" / "icons" / "training-256.png"
APP = "commonweights-app"
# What the tray app may not carry: training happens in the training environment.
EXCLUDED = ("torch", "numpy", "tokenizers", "safetensors", "onnx", "onnxruntime", "onnxscript", "aiohttp",
            "coordinator", "benchmarks", "playwright", "schemathesis", "hypothesis", "pytest", "tkinter",
            "PySide6.QtQml", "PySide6.QtQuick", "PySide6.QtPdf", "PySide6.QtSvg")  # fmt: skip
# The Windows app environment: the tray app's imports, without torch (commonweights goes in --no-deps).
# Carried in the installer; Qt (PySide6, ~75 MB) comes from the package index at install time, when uv
# fetches the Python anyway (installers/windows/commonweights.nsi), which keeps the installer small.
WINDOWS_APP_REQUIREMENTS = ("platformdirs>=3.0", "msgspec>=0.21", "tomli-w>=0.1", "rich>=12.0")
WINDOWS_PYTHON = "3.12"


def version() -> str:
    sys.path.insert(0, str(REPO))
    from protocol.version import RELEASE_VERSION

    return RELEASE_VERSION


def run(*argv: str | Path, cwd: Path | None = None) -> None:
    print("+", " ".join(str(a) for a in argv), flush=True)
    subprocess.run([str(a) for a in argv], check=True, cwd=cwd)


def build_wheel(out: Path) -> Path:
    """This release's wheel (commonweights, every package, no dependencies)."""
    out.mkdir(parents=True, exist_ok=True)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, REPO)
    (wheel,) = out.glob("commonweights-*.whl")
    return wheel


def training_wheels(folder: Path) -> None:
    """Into `folder`: this release's wheel and every wheel its training environment needs, as an
    offline site keeps them for first-run setup (COMMONWEIGHTS_SETUP_FIND_LINKS). torch comes from
    pip's configuration: on this project's machines a local CPU wheel; elsewhere, point
    PIP_INDEX_URL at a CPU wheel index."""
    sys.path.insert(0, str(REPO))
    from volunteer_app.environment import TORCH_VERSION

    wheel = build_wheel(folder)
    run(sys.executable, "-m", "pip", "download", "-q", "-d", folder, f"torch=={TORCH_VERSION}", wheel)


def uv_binary(platform_tag: str, into: Path) -> Path:
    """The uv executable from uv's wheel for `platform_tag` (PyPI ships one per platform)."""
    with tempfile.TemporaryDirectory() as tmp:
        run(sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", platform_tag,
            "-q", "-d", tmp, "uv>=0.5")  # fmt: skip
        (wheel,) = Path(tmp).glob("uv-*.whl")
        name = "uv.exe" if platform_tag.startswith("win") else "uv"
        with zipfile.ZipFile(wheel) as archive:
            member = next(m for m in archive.namelist() if m.endswith(f".data/scripts/{name}"))
            target = into / name
            target.write_bytes(archive.read(member))
    target.chmod(0o755)
    return target


def freeze(work: Path) -> Path:
    """The tray app frozen with PyInstaller for this OS: a folder with the `commonweights-app` executable."""
    entry = work / "launch.py"
    entry.write_text("import sys\nfrom volunteer_app.tray.main import main\nsys.exit(main())\n")
    args: list[str | Path] = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
                              "--name", APP, "--distpath", work / "dist", "--workpath", work / "build",
                              "--specpath", work, "--paths", REPO]  # fmt: skip
    for module in EXCLUDED:
        args += ["--exclude-module", module]
    if sys.platform == "darwin":
        args += ["--windowed", "--osx-bundle-identifier", "org.commonweights.app"]
    run(*args, entry)
    return work / "dist" / (f"{APP}.app" if sys.platform == "darwin" else APP)


def install_record(wheels: str, coordinator_url: str | None = None) -> str:
    record: dict[str, str] = {"wheels": wheels}
    if coordinator_url:
        record["coordinator_url"] = coordinator_url
    return json.dumps(record, indent=2) + "\n"


def desktop_entry(exec_path: str) -> str:
    return (
        "[Desktop Entry]\nType=Application\nName=Commonweights\nGenericName=Volunteer computing\n"
        "Comment=Train language models with this computer's idle time\n"
        f"Exec={exec_path}\nIcon=commonweights\nTerminal=false\nCategories=Science;Network;\n"
        "StartupWMClass=commonweights\n"
    )


def build_linux(out: Path, coordinator_url: str | None) -> Path:
    if shutil.which("dpkg-deb") is None:
        raise SystemExit("dpkg-deb is missing: apt-get install dpkg")
    release = version()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frozen = freeze(work)
        root = work / "package"
        app = root / "opt" / "commonweights"
        shutil.copytree(frozen, app, symlinks=True)
        uv_binary("manylinux_2_17_x86_64", app)
        build_wheel(app / "wheels")
        (app / "install.json").write_text(install_record("wheels", coordinator_url))
        (root / "usr" / "bin").mkdir(parents=True)
        (root / "usr" / "bin" / APP).symlink_to(f"/opt/commonweights/{APP}")
        applications = root / "usr" / "share" / "applications"
        applications.mkdir(parents=True)
        (applications / "commonweights.desktop").write_text(desktop_entry(f"/opt/commonweights/{APP}"))
        icons = root / "usr" / "share" / "icons" / "hicolor" / "256x256" / "apps"
        icons.mkdir(parents=True)
        shutil.copy(ICON, icons / "commonweights.png")
        debian = root / "DEBIAN"
        debian.mkdir()
        # The frozen Python and Qt need at least the C library they were built against: this machine's.
        glibc = platform.libc_ver()[1] or "2.28"
        size_kib = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) // 1024
        (debian / "control").write_text(
            f"Package: commonweights\nVersion: {release}\nArchitecture: amd64\nMaintainer: Commonweights\n"
            f"Installed-Size: {size_kib}\nSection: science\nPriority: optional\n"
            f"Depends: libc6 (>= {glibc}), libxcb-cursor0, libxkbcommon-x11-0, libegl1, libfontconfig1, libdbus-1-3\n"
            "Homepage: https://github.com/commonweights\n"
            "Description: Volunteer computing for training language models\n"
            " A tray app that trains small work units of a language model while the computer is idle.\n"
            " It builds its training environment (PyTorch for this machine's device) on first run.\n"
        )
        for script in ("postinst", "postrm"):
            shutil.copy(HERE / "linux" / script, debian / script)
            (debian / script).chmod(0o755)
        target = out / f"commonweights_{release}_amd64.deb"
        out.mkdir(parents=True, exist_ok=True)
        run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, target)
    return target


def windows_wheels(into: Path) -> list[Path]:
    """This release's wheel and the Windows wheels of the app environment (cp312, win_amd64)."""
    wheels = [build_wheel(into)]
    source = os.environ.get("COMMONWEIGHTS_WHEELS")
    sources = ["--no-index", "--find-links", source] if source else []
    run(sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--platform", "win_amd64",
        "--python-version", WINDOWS_PYTHON, "-q", "-d", into, *sources, *WINDOWS_APP_REQUIREMENTS)  # fmt: skip
    return wheels


def build_windows(out: Path, coordinator_url: str | None) -> Path:
    makensis = shutil.which("makensis")
    if makensis is None:
        raise SystemExit("makensis is missing: apt-get install nsis")
    release = version()
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp)
        uv_binary("win_amd64", stage)
        windows_wheels(stage / "wheels")
        (stage / "install.json").write_text(install_record("wheels", coordinator_url))
        shutil.copy(HERE / "windows" / "commonweights.nsi", stage)
        shutil.copy(REPO / "assets" / "icons" / "training-256.png", stage / "icon.png")
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"Commonweights-Setup-{release}.exe"
        run(makensis, "-V2", f"-DVERSION={release}", f"-DPYTHON={WINDOWS_PYTHON}", f"-DOUTFILE={target.resolve()}",
            stage / "commonweights.nsi")  # fmt: skip
    return target


def build_macos(out: Path, coordinator_url: str | None) -> Path:
    if platform.system() != "Darwin":
        raise SystemExit("the macOS .app and .dmg are built on macOS (hdiutil, codesign): see installers/README.md")
    release = version()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = freeze(work)
        # Code in Contents/MacOS (uv beside the app, where find_uv looks); data in Contents/Resources,
        # as codesign and notarization expect (volunteer_app.environment.installation looks there).
        uv_binary("macosx_11_0_arm64" if platform.machine() == "arm64" else "macosx_10_12_x86_64",
                  bundle / "Contents" / "MacOS")  # fmt: skip
        resources = bundle / "Contents" / "Resources"
        build_wheel(resources / "wheels")
        (resources / "install.json").write_text(install_record("wheels", coordinator_url))
        final = work / "Commonweights.app"
        bundle.rename(final)
        identity = os.environ.get("APPLE_SIGNING_IDENTITY")
        if identity:
            run("codesign", "--deep", "--force", "--options", "runtime", "--timestamp", "--sign", identity, final)
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"Commonweights-{release}.dmg"
        run("hdiutil", "create", "-volname", "Commonweights", "-srcfolder", final, "-ov", "-format", "UDZO", target)
        if identity and os.environ.get("APPLE_ID"):
            apple = {key: os.environ[key] for key in ("APPLE_ID", "APPLE_TEAM_ID", "APPLE_APP_PASSWORD")}
            run("xcrun", "notarytool", "submit", target, "--apple-id", apple["APPLE_ID"],
                "--team-id", apple["APPLE_TEAM_ID"], "--password", apple["APPLE_APP_PASSWORD"], "--wait")  # fmt: skip
            run("xcrun", "stapler", "staple", target)
    return target


def write_sums(out: Path) -> None:
    lines = []
    for path in sorted(p for p in out.iterdir() if p.is_file() and p.name != "SHA256SUMS"):
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    (out / "SHA256SUMS").write_text("".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", choices=("linux", "windows", "macos", "wheels"))
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the installer goes (default: dist/)")
    parser.add_argument("--coordinator", default=None, metavar="URL", help="the coordinator the app uses at first")
    args = parser.parse_args(argv)
    if args.target == "wheels":  # what an offline site keeps for first-run setup: no installer, no SHA256SUMS
        training_wheels(args.out)
        return 0
    builders = {"linux": build_linux, "windows": build_windows, "macos": build_macos}
    target = builders[args.target](args.out, args.coordinator)
    write_sums(args.out)
    print(f"{target} ({target.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
