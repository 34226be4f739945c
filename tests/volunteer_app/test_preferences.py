"""Preferences: defaults, validation that names the field, and the TOML file."""

from __future__ import annotations

import dataclasses
import sys
import tomllib
from datetime import UTC, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volunteer_app.preferences import (
    Preferences,
    PreferencesError,
    TimeWindow,
    default_preferences_path,
    load_preferences,
    save_preferences,
)


def test_defaults_are_like_boinc() -> None:
    prefs = Preferences()
    assert prefs.idle_minutes == 3
    assert prefs.suspend_on_input is True
    assert prefs.run_on_battery is False
    assert prefs.device == "auto"
    assert prefs.time_windows == ()
    assert prefs.snooze_until is None
    assert prefs.idle_seconds_required == 180


def test_default_path_is_in_the_user_config_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = default_preferences_path()
    assert path.parts[-2:] == ("commonweights", "preferences.toml")
    if sys.platform.startswith("linux"):
        assert path == tmp_path / "commonweights" / "preferences.toml"


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert load_preferences(tmp_path / "nope.toml") == Preferences()


def full_preferences() -> Preferences:
    return Preferences(
        idle_minutes=5.5,
        suspend_on_input=False,
        run_on_battery=True,
        cpu_cores=4,
        cpu_percent=80,
        suspend_other_cpu_percent=40,
        gpu_only_when_idle=False,
        gpu_memory_limit_mb=6144,
        time_windows=(TimeWindow.parse("22:00", "07:00"), TimeWindow.parse("12:00", "13:30")),
        network_mb_per_day=2048,
        coordinator_url="https://coordinator.example.org/",
        device="cuda",
        autostart=True,
        snooze_until=datetime(2025, 3, 1, 14, 5, tzinfo=timezone(timedelta(hours=1))),
    )


def test_toml_round_trip_of_every_field(tmp_path: Path) -> None:
    path = tmp_path / "preferences.toml"
    prefs = full_preferences()
    assert save_preferences(prefs, path) == path
    assert load_preferences(path) == prefs


def test_file_is_plain_readable_toml(tmp_path: Path) -> None:
    path = save_preferences(full_preferences(), tmp_path / "p.toml")
    text = path.read_text()
    assert text.startswith("# Commonweights computing preferences")
    data = tomllib.loads(text)
    assert data["time_windows"] == [["22:00", "07:00"], ["12:00", "13:30"]]
    assert data["idle_minutes"] == 5.5
    assert data["snooze_until"] == datetime(2025, 3, 1, 14, 5, tzinfo=timezone(timedelta(hours=1)))
    assert "cpu_cores = 4" in text


def test_whole_minutes_are_written_as_integers_and_absent_values_left_out(tmp_path: Path) -> None:
    text = save_preferences(Preferences(), tmp_path / "p.toml").read_text()
    assert "idle_minutes = 3\n" in text
    assert "cpu_cores" not in text and "snooze_until" not in text


def test_hand_written_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(
        'idle_minutes = 10\ntime_windows = [["23:00", "24:00"]]\ndevice = "cpu"\nsnooze_until = 2025-03-01T14:05:00\n'
    )
    prefs = load_preferences(path)
    assert prefs.idle_minutes == 10.0
    assert prefs.time_windows == (TimeWindow(time(23, 0), time(0, 0)),)
    assert prefs.device == "cpu"
    assert prefs.snooze_until is not None and prefs.snooze_until.tzinfo is not None  # local time, made aware


def test_unknown_keys_are_kept_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "p.toml"
    path.write_text('idle_minutes = 4\nfuture_knob = "on"\n\n[experimental]\nlevel = 3\n')
    prefs = load_preferences(path)
    assert prefs.unknown_keys == ["experimental", "future_knob"]
    assert "future_knob" in caplog.text
    save_preferences(dataclasses.replace(prefs, idle_minutes=6), path)
    data = tomllib.loads(path.read_text())
    assert data["future_knob"] == "on" and data["experimental"] == {"level": 3}
    assert data["idle_minutes"] == 6


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"idle_minutes": -1}, "idle_minutes"),
        ({"idle_minutes": "3"}, "idle_minutes"),
        ({"idle_minutes": float("nan")}, "idle_minutes"),
        ({"idle_minutes": 100_000}, "idle_minutes"),
        ({"suspend_on_input": 1}, "suspend_on_input"),
        ({"run_on_battery": "no"}, "run_on_battery"),
        ({"cpu_cores": 0}, "cpu_cores"),
        ({"cpu_cores": 2.5}, "cpu_cores"),
        ({"cpu_cores": True}, "cpu_cores"),
        ({"cpu_percent": 0}, "cpu_percent"),
        ({"cpu_percent": 101}, "cpu_percent"),
        ({"suspend_other_cpu_percent": 120}, "suspend_other_cpu_percent"),
        ({"gpu_only_when_idle": None}, "gpu_only_when_idle"),
        ({"gpu_memory_limit_mb": -5}, "gpu_memory_limit_mb"),
        ({"network_mb_per_day": 0}, "network_mb_per_day"),
        ({"coordinator_url": "ftp://example.org"}, "coordinator_url"),
        ({"coordinator_url": "localhost:8080"}, "coordinator_url"),
        ({"coordinator_url": "http://host:99999"}, "coordinator_url"),
        ({"coordinator_url": 42}, "coordinator_url"),
        ({"device": "tpu"}, "device"),
        ({"autostart": "yes"}, "autostart"),
        ({"snooze_until": "tomorrow"}, "snooze_until"),
        ({"time_windows": "22:00-07:00"}, "time_windows"),
    ],
)
def test_invalid_values_name_their_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(PreferencesError) as info:
        Preferences(**changes)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert info.value.code == "preferences.invalid"


@pytest.mark.parametrize(
    ("windows", "field", "words"),
    [
        ([["25:00", "07:00"]], "time_windows[0].start", "not a time of day"),
        ([["22:00", "7"]], "time_windows[0].end", "HH:MM"),
        ([["22:00", "07:00"], ["09:00"]], "time_windows[1]", "pair"),
        ([["08:00", "08:00"]], "time_windows[0]", "same time"),
        ([["08:00", 800]], "time_windows[0].end", "HH:MM"),
        ("22:00", "time_windows", "list"),
    ],
)
def test_invalid_time_windows_in_a_file_name_the_window(
    tmp_path: Path, windows: object, field: str, words: str
) -> None:
    with pytest.raises(PreferencesError, match=words) as info:
        Preferences.from_dict({"time_windows": windows})
    assert info.value.field == field


def test_invalid_value_in_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('device = "tpu"\n')
    with pytest.raises(PreferencesError, match="device: must be one of auto, cpu, cuda, mps"):
        load_preferences(path)


def test_broken_toml_is_reported_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("idle_minutes = = 3\n")
    with pytest.raises(PreferencesError) as info:
        load_preferences(path)
    assert info.value.field is None
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "p.toml"
    save_preferences(Preferences(idle_minutes=1), path)
    save_preferences(Preferences(idle_minutes=2), path)
    assert load_preferences(path).idle_minutes == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.toml"]


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_preferences(Preferences(idle_minutes=7), tmp_path / "p.toml")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        save_preferences(Preferences(idle_minutes=8), path)
    monkeypatch.undo()
    assert load_preferences(path).idle_minutes == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.toml"]


def test_replace_revalidates() -> None:
    with pytest.raises(PreferencesError, match="cpu_percent"):
        dataclasses.replace(Preferences(), cpu_percent=0)


def test_naive_snooze_is_taken_as_local_time() -> None:
    naive = datetime(2025, 3, 1, 14, 5)
    prefs = Preferences(snooze_until=naive)
    assert prefs.snooze_until == naive.astimezone()


def test_time_window_contains() -> None:
    night = TimeWindow.parse("22:00", "07:00")
    assert night.crosses_midnight
    assert night.contains(time(23)) and night.contains(time(3)) and not night.contains(time(7))
    day = TimeWindow.parse("09:00", "17:00")
    assert day.contains(time(9)) and not day.contains(time(17)) and not day.contains(time(8, 59))
    assert str(night) == "22:00–07:00"


clock_times = st.builds(time, st.integers(0, 23), st.integers(0, 59))
windows = st.tuples(clock_times, clock_times).filter(lambda p: p[0] != p[1]).map(lambda p: TimeWindow(*p))
valid_preferences = st.builds(
    Preferences,
    idle_minutes=st.floats(0, 1440, allow_nan=False),
    suspend_on_input=st.booleans(),
    run_on_battery=st.booleans(),
    cpu_cores=st.none() | st.integers(1, 256),
    cpu_percent=st.integers(1, 100),
    suspend_other_cpu_percent=st.floats(0, 100, allow_nan=False),
    gpu_memory_limit_mb=st.none() | st.integers(1, 200_000),
    time_windows=st.lists(windows, max_size=3).map(tuple),
    network_mb_per_day=st.none() | st.integers(1, 10**6),
    device=st.sampled_from(["auto", "cpu", "cuda", "mps"]),
    snooze_until=st.none()
    | st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=0, tzinfo=UTC)
    ),
)


@settings(max_examples=40, deadline=None)
@given(valid_preferences)
def test_any_valid_preferences_survive_a_round_trip(
    tmp_path_factory: pytest.TempPathFactory, prefs: Preferences
) -> None:
    path = tmp_path_factory.mktemp("rt") / "p.toml"
    save_preferences(prefs, path)
    assert load_preferences(path) == prefs


def test_module_docstring_example_runs() -> None:
    import doctest

    from volunteer_app import preferences

    assert doctest.testmod(preferences).failed == 0


def test_time_windows_accept_plain_pairs_as_a_settings_dialog_gives_them() -> None:
    prefs = Preferences(time_windows=(("22:00", "07:00"),))  # type: ignore[arg-type]
    assert prefs.time_windows == (TimeWindow(time(22), time(7)),)
    with pytest.raises(PreferencesError) as info:
        Preferences(time_windows=(("09:00", "9pm"),))  # type: ignore[arg-type]
    assert info.value.field == "time_windows[0].end"
