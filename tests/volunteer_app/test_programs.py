"""Exclusive programs: training suspends while a program on the volunteer's list runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from volunteer_app.policy import ComputePolicy, ManualClock, Observation, RunState
from volunteer_app.preferences import Preferences, PreferencesError
from volunteer_app.programs import ProgramWatcher, normalize, running_programs


def test_names_compare_without_case_path_or_exe() -> None:
    assert normalize("C:\\Games\\Cyberpunk2077.EXE") == "cyberpunk2077"
    assert normalize("/usr/bin/blender") == "blender"
    watcher = ProgramWatcher(["Blender.exe", "steam", " "], list_programs=lambda: {"bash", "steam", "blender"})
    assert watcher.exclusive == {"blender", "steam"}
    assert watcher.running_exclusive() == "blender"
    assert ProgramWatcher([], list_programs=lambda: {"steam"}).running_exclusive() is None


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc (Linux); macOS and Windows use ps/tasklist"
)
def test_a_real_program_started_is_seen_running_and_gone_once_it_exits(tmp_path: Path) -> None:
    sleeper = tmp_path / "cw-exclusive-game"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", sleeper)
    watcher = ProgramWatcher(["CW-Exclusive-Game"])
    assert watcher.running_exclusive() is None
    process = subprocess.Popen([str(sleeper), "30"])
    try:
        deadline = time.monotonic() + 10
        while watcher.running_exclusive() is None:
            assert time.monotonic() < deadline, "the running program was never seen"
            time.sleep(0.05)
        assert watcher.running_exclusive() == "cw-exclusive-game"
        assert normalize(os.path.realpath(sys.executable)) in running_programs()  # this test's own interpreter
    finally:
        process.kill()
        process.wait()
    assert watcher.running_exclusive() is None


def test_the_policy_suspends_while_an_exclusive_program_runs() -> None:
    policy = ComputePolicy(Preferences(idle_minutes=0), ManualClock(datetime(2026, 12, 3, tzinfo=UTC)))
    decision = policy.decide(Observation(idle_seconds=600, exclusive_running="steam"))
    assert decision.state is RunState.SUSPEND and decision.reason == "steam is running (an exclusive program)"
    assert policy.decide(Observation(idle_seconds=600)).state is RunState.RUN


def test_the_list_is_checked_kept_in_order_and_written_back() -> None:
    prefs = Preferences(exclusive_programs=["steam", " blender.exe ", "steam"])  # type: ignore[arg-type]
    assert prefs.exclusive_programs == ("steam", "blender.exe")
    assert Preferences.from_dict(prefs.to_dict()).exclusive_programs == ("steam", "blender.exe")
    with pytest.raises(PreferencesError, match=r"exclusive_programs\[1\]"):
        Preferences(exclusive_programs=("steam", ""))
    with pytest.raises(PreferencesError, match="list of at most"):
        Preferences(exclusive_programs="steam")  # type: ignore[arg-type]
