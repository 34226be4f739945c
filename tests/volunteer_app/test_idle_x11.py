"""The X11 backend: unit tests with fake libX11/libXss, then the real thing under Xvfb, with
xdotool as the user.

The Xvfb tests need Debian's `xvfb`, `xdotool` and `libxss1`; without them they skip and say which
is missing.
"""

from __future__ import annotations

import ctypes.util
import os
import select
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from volunteer_app.idle import BackendUnavailable, X11IdleSource, is_wayland_session, measure_reset_latency
from volunteer_app.idle.x11 import X11Libraries

# --- with fake libraries ------------------------------------------------------------------------


class FakeXlib:
    def __init__(self, opens: bool = True) -> None:
        self.opens = opens
        self.open_displays: set[int] = set()

    def XOpenDisplay(self, name: bytes) -> int:
        self.opened_name = name
        if not self.opens:
            return 0
        self.open_displays.add(0xD15)
        return 0xD15

    def XCloseDisplay(self, display: int) -> int:
        self.open_displays.remove(display)
        return 0

    def XDefaultRootWindow(self, display: int) -> int:
        return 0x1A5


class FakeXss:
    def __init__(self, idle_ms: int = 0, has_extension: bool = True) -> None:
        self.idle_ms = idle_ms
        self.has_extension = has_extension
        self.ok = True

    def XScreenSaverQueryExtension(self, display: int, event_base: Any, error_base: Any) -> int:
        return int(self.has_extension)

    def XScreenSaverQueryInfo(self, display: int, drawable: int, info: Any) -> int:
        assert drawable == 0x1A5
        info.contents.idle = self.idle_ms
        return int(self.ok)


def fake_libraries(xlib: FakeXlib | None = None, xss: FakeXss | None = None) -> X11Libraries:
    return X11Libraries(xlib=xlib or FakeXlib(), xss=xss or FakeXss())


@pytest.mark.parametrize(
    ("environ", "wayland"),
    [
        ({"XDG_SESSION_TYPE": "wayland", "DISPLAY": ":0"}, True),
        ({"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}, True),
        ({"XDG_SESSION_TYPE": "x11", "DISPLAY": ":0"}, False),
        ({"DISPLAY": ":0"}, False),
        ({"XDG_SESSION_TYPE": "tty"}, False),
    ],
)
def test_wayland_session_detection(environ: dict[str, str], wayland: bool) -> None:
    assert is_wayland_session(environ) is wayland


def test_never_opened_on_a_wayland_session() -> None:
    xlib = FakeXlib()
    with pytest.raises(BackendUnavailable, match="Wayland"):
        X11IdleSource(environ={"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}, libraries=fake_libraries(xlib))
    assert not hasattr(xlib, "opened_name")


def test_no_display_is_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="DISPLAY"):
        X11IdleSource(environ={}, libraries=fake_libraries())


def test_display_from_environment_and_idle_in_seconds() -> None:
    xlib, xss = FakeXlib(), FakeXss(idle_ms=4_731)
    with X11IdleSource(environ={"DISPLAY": ":7"}, libraries=fake_libraries(xlib, xss)) as source:
        assert xlib.opened_name == b":7"
        assert source.idle_seconds() == pytest.approx(4.731)
        assert ":7" in source.description
        xss.ok = False
        assert source.idle_seconds() is None
    assert xlib.open_displays == set()
    assert source.idle_seconds() is None  # closed
    source.close()  # idempotent


def test_unopenable_display_is_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="cannot open"):
        X11IdleSource(":3", environ={}, libraries=fake_libraries(FakeXlib(opens=False)))


def test_display_without_screensaver_extension_is_closed_and_unavailable() -> None:
    xlib = FakeXlib()
    with pytest.raises(BackendUnavailable, match="MIT-SCREEN-SAVER"):
        X11IdleSource(":3", environ={}, libraries=fake_libraries(xlib, FakeXss(has_extension=False)))
    assert xlib.open_displays == set()


# --- the real thing under Xvfb ------------------------------------------------------------------

_MISSING = [
    what
    for what, present in [
        ("Xvfb (Debian package xvfb)", shutil.which("Xvfb")),
        ("xdotool (Debian package xdotool)", shutil.which("xdotool")),
        ("libXss (Debian package libxss1)", ctypes.util.find_library("Xss")),
        ("libX11 (Debian package libx11-6)", ctypes.util.find_library("X11")),
    ]
    if not present
]
needs_xvfb = pytest.mark.skipif(bool(_MISSING), reason="needs " + ", ".join(_MISSING))

_XVFB_START_TIMEOUT_S = 15.0


def start_xvfb() -> tuple[subprocess.Popen[bytes], str]:
    """Start Xvfb on a display number it picks itself (-displayfd), waiting (bounded) until it says
    it is ready by writing that number."""
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-nolisten", "tcp", "-screen", "0", "320x240x24"],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(write_fd)
    try:
        answer = b""
        deadline = time.monotonic() + _XVFB_START_TIMEOUT_S
        while not answer.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([read_fd], [], [], max(0.0, remaining))
            chunk = os.read(read_fd, 64) if ready else b""
            if not chunk:
                proc.kill()
                proc.wait()
                pytest.fail(f"Xvfb did not report a display within {_XVFB_START_TIMEOUT_S}s")
            answer += chunk
    finally:
        os.close(read_fd)
    return proc, ":" + answer.decode().strip()


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def xvfb_display() -> Iterator[str]:
    if _MISSING:
        pytest.skip("needs " + ", ".join(_MISSING))
    proc, display = start_xvfb()
    yield display
    stop(proc)


@pytest.fixture
def x11_source(xvfb_display: str) -> Iterator[X11IdleSource]:
    with X11IdleSource(xvfb_display, environ={}) as source:
        yield source


class Xdotool:
    def __init__(self, display: str) -> None:
        self.env = {**os.environ, "DISPLAY": display}
        self.position = 0

    def move_mouse(self) -> None:
        self.position = (self.position + 37) % 200  # always somewhere new, or no event happens
        subprocess.run(
            ["xdotool", "mousemove", str(20 + self.position), str(10 + self.position // 2)],
            env=self.env,
            check=True,
            timeout=10,
        )

    def press_key(self) -> None:
        subprocess.run(["xdotool", "key", "shift"], env=self.env, check=True, timeout=10)


def poll_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def idle_now(source: X11IdleSource) -> float:
    value = source.idle_seconds()
    assert value is not None
    return value


@needs_xvfb
def test_idle_time_grows_while_nobody_touches_anything(x11_source: X11IdleSource) -> None:
    start = idle_now(x11_source)
    assert poll_until(lambda: idle_now(x11_source) >= start + 0.2)


@needs_xvfb
@pytest.mark.parametrize("action", ["move_mouse", "press_key"])
def test_input_resets_idle_time(x11_source: X11IdleSource, xvfb_display: str, action: str) -> None:
    assert poll_until(lambda: idle_now(x11_source) >= 0.3)
    getattr(Xdotool(xvfb_display), action)()
    assert poll_until(lambda: idle_now(x11_source) < 0.3, timeout=2.0)


@needs_xvfb
def test_reset_latency_helper_measures_real_input(x11_source: X11IdleSource, xvfb_display: str) -> None:
    user = Xdotool(xvfb_display)
    for _ in range(3):
        latency = measure_reset_latency(x11_source, user.move_mouse, timeout=10.0, min_baseline=0.1)
        assert latency >= 0.0


@needs_xvfb
def test_wayland_guard_holds_even_with_a_working_display(xvfb_display: str) -> None:
    with pytest.raises(BackendUnavailable, match="Wayland"):
        X11IdleSource(xvfb_display, environ={"XDG_SESSION_TYPE": "wayland"})


@needs_xvfb
def test_losing_the_x_server_reads_unknown_instead_of_exiting() -> None:
    # In a child process: without the guard, Xlib would exit() the whole test run.
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from tests.volunteer_app.test_idle_x11 import start_xvfb
        from volunteer_app.idle import X11IdleSource
        proc, display = start_xvfb()
        source = X11IdleSource(display, environ={})
        assert source.idle_seconds() is not None
        proc.terminate(); proc.wait()  # the server goes away under an open connection
        print("after loss:", source.idle_seconds(), source.idle_seconds())
        source.close()
        print("still running")
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", script, root], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "after loss: None None" in done.stdout
    assert "still running" in done.stdout
