"""Choosing a backend: the factory's order, its Wayland guard and its labelled fallback."""

from __future__ import annotations

import sys

import pytest

import volunteer_app.idle as idle
import volunteer_app.idle.detect as detect
from volunteer_app.idle import BackendUnavailable, IdleSource, PowerSource


class StubSource:
    def __init__(self, name: str) -> None:
        self.name = name
        self.description = f"stub {name}"

    def idle_seconds(self) -> float | None:
        return 1.0


def unavailable(backend: str, reason: str) -> object:
    def make(*args: object, **kwargs: object) -> StubSource:
        raise BackendUnavailable(backend, reason)

    return make


@pytest.fixture
def linux_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Linux backend unavailable unless a test says otherwise."""
    for attr, name in [
        ("X11IdleSource", "x11"),
        ("WaylandIdleSource", "wayland"),
        ("GnomeMutterIdleSource", "gnome-mutter"),
        ("LogindIdleSource", "logind"),
    ]:
        monkeypatch.setattr(detect, attr, unavailable(name, f"{name} missing"))


def test_x11_session_uses_x11(monkeypatch: pytest.MonkeyPatch, linux_backends: None) -> None:
    monkeypatch.setattr(detect, "X11IdleSource", lambda **kw: StubSource("x11"))
    source = idle.detect_idle_source(platform="linux", environ={"DISPLAY": ":0", "XDG_SESSION_TYPE": "x11"})
    assert source.name == "x11"


def test_wayland_session_never_tries_x11(monkeypatch: pytest.MonkeyPatch, linux_backends: None) -> None:
    def forbidden(**kw: object) -> StubSource:
        raise AssertionError("X11 opened on a Wayland session")

    monkeypatch.setattr(detect, "X11IdleSource", forbidden)
    monkeypatch.setattr(detect, "GnomeMutterIdleSource", lambda: StubSource("gnome-mutter"))
    env = {"DISPLAY": ":0", "WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}
    assert idle.detect_idle_source(platform="linux", environ=env).name == "gnome-mutter"


def test_a_wayland_compositors_idle_protocol_comes_before_mutter(
    monkeypatch: pytest.MonkeyPatch, linux_backends: None
) -> None:
    monkeypatch.setattr(detect, "WaylandIdleSource", lambda environ: StubSource("wayland-ext-idle-notify"))
    monkeypatch.setattr(detect, "GnomeMutterIdleSource", lambda: StubSource("gnome-mutter"))
    env = {"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}
    assert idle.detect_idle_source(platform="linux", environ=env).name == "wayland-ext-idle-notify"
    assert idle.detect_idle_source(platform="linux", environ={"XDG_SESSION_TYPE": "wayland"}).name == "gnome-mutter"


def test_logind_is_tried_after_mutter(monkeypatch: pytest.MonkeyPatch, linux_backends: None) -> None:
    monkeypatch.setattr(detect, "LogindIdleSource", lambda: StubSource("logind"))
    env = {"WAYLAND_DISPLAY": "wayland-0"}
    assert idle.detect_idle_source(platform="linux", environ=env).name == "logind"


def test_nothing_works_gives_labelled_manual_mode_with_reasons(linux_backends: None) -> None:
    source = idle.detect_idle_source(platform="linux", environ={"DISPLAY": ":0"})
    assert isinstance(source, idle.ManualIdleSource)
    assert source.idle_seconds() is None
    assert "manual mode" in source.description
    assert source.reason == "x11: x11 missing; gnome-mutter: gnome-mutter missing; logind: logind missing"


def test_cpu_guess_fallback_is_opt_in_and_labelled(linux_backends: None) -> None:
    source = idle.detect_idle_source(platform="linux", environ={}, fallback="cpu-load")
    assert source.name == "cpu-load-guess"  # /proc/stat exists on the Linux test machines
    assert "guess" in source.description.lower()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks the absence of Win32/macOS libraries")
@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_missing_os_libraries_give_manual_mode_not_an_exception(platform: str) -> None:
    source = idle.detect_idle_source(platform=platform, environ={})
    assert source.name == "manual"
    assert isinstance(source, idle.ManualIdleSource)
    assert source.reason.startswith(("windows:", "macos:"))


def test_power_source_per_platform() -> None:
    assert idle.detect_power_source(platform="linux").name == "linux-sysfs"
    assert idle.detect_power_source(platform="freebsd13").on_battery() is None


def test_every_backend_class_satisfies_the_protocols() -> None:
    assert isinstance(StubSource("x"), IdleSource)
    assert isinstance(idle.ManualIdleSource(), IdleSource)
    assert isinstance(idle.SysfsPowerSource(), PowerSource)
    assert isinstance(idle.UnknownPowerSource(), PowerSource)


def test_public_surface() -> None:
    for name in idle.__all__:
        assert hasattr(idle, name), name


def test_docstring_examples_run() -> None:
    import doctest

    from volunteer_app.idle import fallback

    for module in (idle, detect, fallback):
        assert doctest.testmod(module).failed == 0, module.__name__
