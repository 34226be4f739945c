"""GNOME Mutter IdleMonitor and logind IdleHint, with the busctl/gdbus runner replaced by canned
replies (copied from what the real tools print)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from volunteer_app.idle import BackendUnavailable, GnomeMutterIdleSource, LogindIdleSource
from volunteer_app.idle.wayland import DBusCallError, DBusCli, parse_busctl_value, parse_gdbus_value


class FakeRunner:
    """Answers by the method or property asked for; records every argv."""

    def __init__(self, replies: dict[str, str | Exception]) -> None:
        self.replies = replies
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> str:
        self.calls.append(list(argv))
        for key, reply in self.replies.items():
            if key in argv or any(a.endswith("." + key) for a in argv):
                if isinstance(reply, Exception):
                    raise reply
                return reply
        raise DBusCallError(f"no such method in {argv}")


@pytest.mark.parametrize(
    ("line", "value"), [("t 12345", 12345), ("u 7", 7), ("b true", True), ("b false", False), ("x -3", -3)]
)
def test_busctl_values(line: str, value: int | bool) -> None:
    assert parse_busctl_value(line) == value


@pytest.mark.parametrize(
    ("reply", "value"),
    [
        ("(uint64 12345,)\n", 12345),
        ("(true,)", True),
        ("(<false>,)", False),
        ("(<uint64 99>,)", 99),
        ("(uint32 5,)", 5),
    ],
)
def test_gdbus_values(reply: str, value: int | bool) -> None:
    assert parse_gdbus_value(reply) == value


@pytest.mark.parametrize("line", ["", "s hello", "t", "garbage text here"])
def test_unreadable_busctl_replies_raise(line: str) -> None:
    with pytest.raises(DBusCallError):
        parse_busctl_value(line)


@pytest.mark.parametrize("reply", ["", "(<'text'>,)", "garbage", "(uint64 1, uint64 2,)"])
def test_unreadable_gdbus_replies_raise(reply: str) -> None:
    with pytest.raises(DBusCallError):
        parse_gdbus_value(reply)


def test_mutter_idle_time_via_busctl() -> None:
    runner = FakeRunner({"GetIdletime": "t 61500\n"})
    source = GnomeMutterIdleSource(DBusCli("busctl", runner))
    assert source.idle_seconds() == pytest.approx(61.5)
    assert runner.calls[-1] == [
        "busctl", "--user", "call", "org.gnome.Mutter.IdleMonitor",
        "/org/gnome/Mutter/IdleMonitor/Core", "org.gnome.Mutter.IdleMonitor", "GetIdletime",
    ]  # fmt: skip
    assert "busctl" in source.description


def test_mutter_idle_time_via_gdbus() -> None:
    runner = FakeRunner({"GetIdletime": "(uint64 250,)\n"})
    source = GnomeMutterIdleSource(DBusCli("gdbus", runner))
    assert source.idle_seconds() == pytest.approx(0.25)
    assert runner.calls[-1][:3] == ["gdbus", "call", "--session"]
    assert "org.gnome.Mutter.IdleMonitor.GetIdletime" in runner.calls[-1]


def test_mutter_missing_makes_the_backend_unavailable() -> None:
    runner = FakeRunner({"GetIdletime": DBusCallError("The name org.gnome.Mutter.IdleMonitor was not provided")})
    with pytest.raises(BackendUnavailable, match="not answering"):
        GnomeMutterIdleSource(DBusCli("busctl", runner))


def test_mutter_transient_failure_reads_unknown() -> None:
    runner = FakeRunner({"GetIdletime": "t 1000"})
    source = GnomeMutterIdleSource(DBusCli("busctl", runner))
    runner.replies["GetIdletime"] = DBusCallError("timeout")
    assert source.idle_seconds() is None
    runner.replies["GetIdletime"] = "t 2000"
    assert source.idle_seconds() == pytest.approx(2.0)


class MonotonicUs:
    def __init__(self, now_us: int) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us


def logind(runner: FakeRunner, tool: str = "busctl", clock: MonotonicUs | None = None) -> LogindIdleSource:
    cli = DBusCli("busctl" if tool == "busctl" else "gdbus", runner)
    return LogindIdleSource(cli, monotonic_us=clock or MonotonicUs(500_000_000))


def test_logind_not_idle_reads_zero() -> None:
    runner = FakeRunner({"IdleHint": "b false\nt 0\n"})
    assert logind(runner).idle_seconds() == 0.0
    assert runner.calls[-1] == [
        "busctl", "--system", "get-property", "org.freedesktop.login1",
        "/org/freedesktop/login1/session/auto", "org.freedesktop.login1.Session",
        "IdleHint", "IdleSinceHintMonotonic",
    ]  # fmt: skip


def test_logind_idle_counts_from_the_hint_timestamp() -> None:
    runner = FakeRunner({"IdleHint": "b true\nt 380000000\n"})
    assert logind(runner, clock=MonotonicUs(500_000_000)).idle_seconds() == pytest.approx(120.0)


def test_logind_via_gdbus_reads_each_property() -> None:
    runner = FakeRunner({"IdleHint": "(<true>,)\n", "IdleSinceHintMonotonic": "(<uint64 499000000>,)\n"})
    assert logind(runner, tool="gdbus").idle_seconds() == pytest.approx(1.0)
    assert all("org.freedesktop.DBus.Properties.Get" in call for call in runner.calls)


def test_logind_idle_without_timestamp_counts_from_first_sight() -> None:
    runner = FakeRunner({"IdleHint": "b false\nt 0\n"})
    clock = MonotonicUs(500_000_000)
    source = logind(runner, clock=clock)
    runner.replies["IdleHint"] = "b true\nt 0\n"
    assert source.idle_seconds() == 0.0
    clock.now_us += 30_000_000
    assert source.idle_seconds() == pytest.approx(30.0)


def test_logind_unreadable_session_is_unavailable() -> None:
    runner = FakeRunner({"IdleHint": DBusCallError("Failed to connect to bus")})
    with pytest.raises(BackendUnavailable, match="logind"):
        logind(runner)
