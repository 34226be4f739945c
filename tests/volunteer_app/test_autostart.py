"""Autostart entries for each OS, written into temporary directories and a fake registry."""

from __future__ import annotations

import plistlib
import subprocess
import sys
from pathlib import Path

import pytest

from volunteer_app import autostart
from volunteer_app.autostart import (
    AutostartError,
    LaunchAgentAutostart,
    RunKeyAutostart,
    XdgAutostart,
    autostart_for,
    desktop_exec_line,
    disable_autostart,
    enable_autostart,
    is_autostart_enabled,
)


class FakeRunKey:
    """Dict-backed RunKeyAccess."""

    def __init__(self) -> None:
        self.run: dict[str, str] = {}
        self.approved: dict[str, bytes] = {}

    def get(self, name: str) -> str | None:
        return self.run.get(name)

    def set(self, name: str, command: str) -> None:
        self.run[name] = command

    def delete(self, name: str) -> None:
        self.run.pop(name, None)

    def startup_approved(self, name: str) -> bytes | None:
        return self.approved.get(name)

    def clear_startup_approved(self, name: str) -> None:
        self.approved.pop(name, None)


def unescape_exec(line: str) -> list[str]:
    """Read an Exec value back the way the Desktop Entry spec says a desktop does: undo the string
    escapes, then split on spaces honouring double quotes (inside which \\ escapes " ` $ and \\),
    then turn %% into %."""
    value = line.replace("\\\\", "\\")
    args: list[str] = []
    current: list[str] = []
    in_arg = quoted = False
    chars = iter(value)
    for c in chars:
        if quoted and c == "\\":
            current.append(next(chars))
        elif c == '"':
            quoted, in_arg = not quoted, True
        elif c == " " and not quoted:
            if in_arg:
                args.append("".join(current))
            current, in_arg = [], False
        else:
            current.append(c)
            in_arg = True
    if in_arg:
        args.append("".join(current))
    return [a.replace("%%", "%") for a in args]


# --- XDG ----------------------------------------------------------------------------------------


def test_xdg_enable_writes_a_desktop_entry(tmp_path: Path) -> None:
    xdg = XdgAutostart(tmp_path)
    assert not xdg.is_enabled()
    xdg.enable(["/opt/commonweights/bin/commonweights-app", "--minimized"])
    entry = tmp_path / "autostart" / "commonweights.desktop"
    assert xdg.location == str(entry)
    text = entry.read_text()
    assert text.startswith("[Desktop Entry]\n")
    assert "Exec=/opt/commonweights/bin/commonweights-app --minimized\n" in text
    assert "Type=Application\n" in text and "Name=Commonweights\n" in text
    assert xdg.is_enabled()
    xdg.disable()
    assert not entry.exists()
    assert not xdg.is_enabled()
    xdg.disable()  # twice is fine


def test_xdg_default_command_is_commonweights_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))  # no launcher beside the interpreter
    monkeypatch.setattr("shutil.which", lambda name: None)
    XdgAutostart(tmp_path).enable()
    assert "Exec=commonweights-app\n" in (tmp_path / "autostart" / "commonweights.desktop").read_text()
    monkeypatch.setattr("shutil.which", lambda name: f"/home/v/.local/bin/{name}")
    assert autostart.default_command() == ["/home/v/.local/bin/commonweights-app"]


def test_an_installed_apps_autostart_starts_the_installed_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = tmp_path / "bin" / "commonweights-app"
    launcher.parent.mkdir()
    launcher.write_text("")
    monkeypatch.setattr("sys.executable", str(tmp_path / "bin" / "python"))
    assert autostart.default_command() == [str(launcher)], "an app environment's own launcher"
    monkeypatch.setattr("sys.frozen", True, raising=False)
    monkeypatch.setattr("sys.executable", "/opt/commonweights/commonweights-app")
    assert autostart.default_command() == ["/opt/commonweights/commonweights-app"], "a frozen app: itself"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["app"], "app"),
        (["/path with space/app", "--x"], '"/path with space/app" --x'),
        (["app", "50%"], "app 50%%"),
        (["app", 'say "hi"'], 'app "say \\\\"hi\\\\""'),
        (["app", "C:\\dir"], 'app "C:\\\\\\\\dir"'),
        (["app", "$HOME"], 'app "\\\\$HOME"'),
    ],
)
def test_exec_line_quoting_follows_the_desktop_entry_spec(argv: list[str], line: str) -> None:
    assert desktop_exec_line(argv) == line
    assert unescape_exec(line) == argv


@pytest.mark.parametrize("content", ["Hidden=true", "X-GNOME-Autostart-enabled=false"])
def test_xdg_entry_switched_off_by_the_desktop_reads_disabled(tmp_path: Path, content: str) -> None:
    xdg = XdgAutostart(tmp_path)
    xdg.enable(["app"])
    with xdg.path.open("a") as f:
        f.write(content + "\n")
    assert not xdg.is_enabled()


def test_xdg_disable_hides_a_system_wide_entry(tmp_path: Path) -> None:
    system = tmp_path / "etc-xdg"
    (system / "autostart").mkdir(parents=True)
    (system / "autostart" / "commonweights.desktop").write_text("[Desktop Entry]\nExec=commonweights-app\n")
    xdg = XdgAutostart(tmp_path / "home", [system])
    assert xdg.is_enabled()
    xdg.disable()
    assert "Hidden=true" in xdg.path.read_text()
    assert not xdg.is_enabled()
    xdg.enable(["app"])
    assert xdg.is_enabled()


def test_xdg_location_from_environment(tmp_path: Path) -> None:
    xdg = XdgAutostart.from_environment({"XDG_CONFIG_HOME": str(tmp_path), "XDG_CONFIG_DIRS": ""})
    assert xdg.path == tmp_path / "autostart" / "commonweights.desktop"


def test_unwritable_location_raises_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(AutostartError, match=r"cannot write .*commonweights\.desktop"):
        XdgAutostart(blocker).enable(["app"])


@pytest.mark.parametrize("argv", [[], [""], ["app", "line\nbreak"]])
def test_bad_commands_are_refused(tmp_path: Path, argv: list[str]) -> None:
    with pytest.raises(ValueError, match="autostart"):
        XdgAutostart(tmp_path).enable(argv)


# --- macOS --------------------------------------------------------------------------------------


def test_launch_agent_plist(tmp_path: Path) -> None:
    agent = LaunchAgentAutostart(tmp_path)
    agent.enable(["/Applications/Commonweights.app/Contents/MacOS/commonweights-app"])
    path = tmp_path / "org.commonweights.app.plist"
    plist = plistlib.loads(path.read_bytes())
    assert plist["Label"] == "org.commonweights.app"
    assert plist["ProgramArguments"] == ["/Applications/Commonweights.app/Contents/MacOS/commonweights-app"]
    assert plist["RunAtLoad"] is True
    assert agent.is_enabled()
    agent.disable()
    assert not path.exists() and not agent.is_enabled()


def test_launch_agent_garbage_or_disabled_reads_disabled(tmp_path: Path) -> None:
    agent = LaunchAgentAutostart(tmp_path)
    agent.path.write_bytes(b"not a plist")
    assert not agent.is_enabled()
    agent.path.write_bytes(
        plistlib.dumps({"Label": "org.commonweights.app", "ProgramArguments": ["x"], "Disabled": True})
    )
    assert not agent.is_enabled()


# --- Windows ------------------------------------------------------------------------------------


def test_run_key_value(tmp_path: Path) -> None:
    registry = FakeRunKey()
    run = RunKeyAutostart(registry)
    run.enable([r"C:\Program Files\Commonweights\commonweights-app.exe", "--minimized"])
    assert registry.run["Commonweights"] == r'"C:\Program Files\Commonweights\commonweights-app.exe" --minimized'
    assert run.is_enabled()
    assert run.location.endswith(r"CurrentVersion\Run\Commonweights")
    run.disable()
    assert registry.run == {} and not run.is_enabled()


def test_task_manager_disable_is_respected_and_enable_overrides_it() -> None:
    registry = FakeRunKey()
    run = RunKeyAutostart(registry)
    run.enable(["app.exe"])
    registry.approved["Commonweights"] = bytes([3]) + bytes(11)  # Task Manager: Disabled
    assert not run.is_enabled()
    registry.approved["Commonweights"] = bytes([2]) + bytes(11)  # Enabled
    assert run.is_enabled()
    registry.approved["Commonweights"] = bytes([3]) + bytes(11)
    run.enable(["app.exe"])
    assert run.is_enabled() and "Commonweights" not in registry.approved


def test_registry_failure_raises_autostart_error() -> None:
    class Denied(FakeRunKey):
        def set(self, name: str, command: str) -> None:
            raise PermissionError(5, "Access is denied")

    with pytest.raises(AutostartError, match="Access is denied"):
        RunKeyAutostart(Denied()).enable(["app.exe"])


def test_command_line_quoting_matches_windows_rules() -> None:
    registry = FakeRunKey()
    argv = [r"C:\a b\app.exe", 'quote"d', "plain"]
    RunKeyAutostart(registry).enable(argv)
    assert registry.run["Commonweights"] == subprocess.list2cmdline(argv)


# --- choosing ------------------------------------------------------------------------------------


def test_autostart_for_each_platform(tmp_path: Path) -> None:
    assert isinstance(autostart_for("linux", base_dir=tmp_path), XdgAutostart)
    assert isinstance(autostart_for("freebsd14", base_dir=tmp_path), XdgAutostart)
    assert isinstance(autostart_for("darwin", base_dir=tmp_path), LaunchAgentAutostart)
    assert isinstance(autostart_for("win32", registry=FakeRunKey()), RunKeyAutostart)


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_module_functions_round_trip(tmp_path: Path, platform: str) -> None:
    assert not is_autostart_enabled(platform=platform, base_dir=tmp_path)
    enable_autostart(["commonweights-app"], platform=platform, base_dir=tmp_path)
    assert is_autostart_enabled(platform=platform, base_dir=tmp_path)
    disable_autostart(platform=platform, base_dir=tmp_path)
    assert not is_autostart_enabled(platform=platform, base_dir=tmp_path)


def test_module_functions_on_windows_use_the_given_registry() -> None:
    registry = FakeRunKey()
    enable_autostart(["commonweights-app.exe"], platform="win32", registry=registry)
    assert is_autostart_enabled(platform="win32", registry=registry)
    disable_autostart(platform="win32", registry=registry)
    assert not is_autostart_enabled(platform="win32", registry=registry)


def test_real_registry_is_refused_off_windows() -> None:
    if sys.platform == "win32":
        pytest.skip("on Windows the real registry exists")
    with pytest.raises(AutostartError, match="only on Windows"):
        autostart.WinregRunKey().get("Commonweights")
