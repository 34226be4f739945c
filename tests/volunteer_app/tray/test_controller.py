"""AppController as a specification, without Qt or processes: a manual clock, a settable idle source
and a child that records what it is told."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path

from volunteer_app.awake import KeepAwake
from volunteer_app.events import Connected, StateChanged, TrainingProgress, UnitResult, UnitStarted, WorkerState
from volunteer_app.preferences import Preferences, load_preferences
from volunteer_app.tray.controller import AppState, ControllerTuning
from volunteer_app.tray.ipc import ChildExited, ChildFinished, DeviceChosen

from .fakes import FakeIdle, FakePower, FakeThermometer, make_rig


def test_waits_for_idle_then_starts_the_child_running(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=5.0)
    status = rig.controller.status
    assert (status.state, status.running) == (AppState.WAITING, False)
    assert status.headline == "Waiting for idle — user active"
    assert rig.children == []
    rig.step(idle=61.0)
    assert len(rig.children) == 1 and rig.child.started and not rig.child.config.start_paused
    assert rig.child.config.coordinator_url == "ws://127.0.0.1:9/ws"
    rig.step()
    assert rig.controller.status.state is AppState.TRAINING


def test_input_pauses_the_child_at_the_next_tick_and_idleness_resumes_it(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=61.0)
    rig.step(idle=0.1)  # the user touched the mouse
    assert rig.child.commands == ["pause"] and rig.child.paused
    assert rig.controller.status.state is AppState.WAITING
    rig.step(idle=30.0)
    assert rig.child.commands == ["pause"]  # not idle long enough yet
    rig.step(idle=60.0)
    assert rig.child.commands == ["pause", "resume"]
    assert len(rig.children) == 1  # the same process, paused and resumed


def test_pause_and_resume_from_the_menu(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=61.0)
    rig.controller.pause()
    status = rig.controller.status
    assert status.state is AppState.PAUSED and status.may_resume and rig.child.paused
    assert "Paused" in status.tooltip
    rig.step(idle=600.0)
    assert rig.child.paused  # idleness does not override the user
    rig.controller.resume()
    assert not rig.child.paused and rig.controller.status.running


def test_snooze_suspends_for_an_hour_and_is_saved(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=61.0)
    rig.controller.snooze(3600)
    status = rig.controller.status
    assert status.state is AppState.SNOOZED and rig.child.paused
    assert status.snoozed_until == rig.clock.now() + timedelta(hours=1)
    assert load_preferences(rig.prefs_path).snooze_until == status.snoozed_until
    assert status.headline.startswith("Snoozed until ")
    rig.step(3601)
    assert rig.controller.status.state is AppState.TRAINING and not rig.child.paused
    rig.controller.snooze(3600)
    rig.controller.cancel_snooze()
    assert rig.controller.status.running and load_preferences(rig.prefs_path).snooze_until is None


def test_a_crashed_child_is_reported_then_restarted_after_the_delay(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=61.0)
    rig.child.crash(-9)
    rig.step()
    status = rig.controller.status
    assert status.state is AppState.ERROR
    assert status.headline == "The training process stopped unexpectedly (killed by SIGKILL). Restarting in 2 s."
    assert [n.kind for n in rig.controller.notifications] == ["crashed"]
    rig.step(1.0)
    assert len(rig.children) == 1  # still waiting out the delay
    rig.step(1.0)
    assert len(rig.children) == 2 and rig.children[1].started
    rig.step()
    assert rig.controller.status.state is AppState.TRAINING
    rig.child.crash(1)  # again, soon after: the next delay is longer
    rig.step()
    assert "exit code 1" in rig.controller.status.headline and "Restarting in 10 s" in rig.controller.status.headline


def test_a_refusing_worker_waits_for_resume_instead_of_restarting(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=61.0)
    rig.child.deliver(ChildFinished(0, 0.0, "banned", "this volunteer is banned"))
    rig.child.deliver(ChildExited(0, expected=False, finished=True))
    rig.step(100.0)
    assert rig.controller.status.state is AppState.ERROR
    assert rig.controller.status.headline == "this volunteer is banned"
    assert len(rig.children) == 1
    rig.controller.resume()  # "try again"
    assert len(rig.children) == 2


def test_three_rejections_in_a_row_notify_once(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=61.0)
    for i in range(4):
        rig.child.deliver(UnitResult(f"u{i}", "rejected", "bad_norm", "update norm too large", 0.0))
    rig.step()
    assert [n.kind for n in rig.controller.notifications] == ["rejections"]
    assert "rejected 3 updates in a row" in rig.controller.notifications[0].message


def test_a_finished_campaign_is_announced_once(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=61.0)
    rig.child.deliver(UnitStarted("u1", "1", "tiny-lm", 3, 50, resumed=False))
    for _ in range(2):
        rig.child.deliver(
            StateChanged(WorkerState.IDLE, "campaign tiny-lm has finished its token budget; asking again in 60 s")
        )
    rig.step()
    assert [(n.kind, n.message) for n in rig.controller.notifications] == [
        ("campaign_finished", "tiny-lm has finished. Thank you for helping!")
    ]


def test_an_unreachable_coordinator_shows_offline_and_notifies_after_a_minute(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=61.0)
    rig.child.deliver(StateChanged(WorkerState.BACKOFF, "connection refused; reconnecting in 4 s"))
    rig.step()
    assert rig.controller.status.state is AppState.OFFLINE
    assert rig.controller.notifications == []
    rig.step(61.0)
    assert [n.kind for n in rig.controller.notifications] == ["unreachable"]
    rig.child.deliver(Connected("v1", "0.1.0", 2.5, None, registered=False))
    rig.child.deliver(StateChanged(WorkerState.TRAINING, "tiny-lm"))
    rig.step()
    assert rig.controller.status.state is AppState.TRAINING


def test_new_worker_settings_restart_the_child_with_them(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=61.0)
    prefs = dataclasses.replace(
        rig.controller.preferences, coordinator_url="http://10.0.0.2:8470", cpu_cores=2, cpu_percent=40
    )
    rig.controller.apply_preferences(prefs)
    assert rig.children[0].commands == ["stop"]
    rig.step()
    assert len(rig.children) == 2
    config = rig.child.config
    assert (config.coordinator_url, config.threads, config.cpu_percent) == ("http://10.0.0.2:8470", 2, 40)
    assert load_preferences(rig.prefs_path).coordinator_url == "http://10.0.0.2:8470"
    rig.controller.apply_preferences(dataclasses.replace(prefs, idle_minutes=2))  # policy only
    assert len(rig.children) == 2 and rig.child.commands[-1:] != ["stop"]


def test_a_child_suspended_for_long_is_stopped_and_started_again_on_idle(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, tuning=ControllerTuning(linger_s=120.0))
    rig.step(idle=61.0)
    rig.step(idle=0.0)
    rig.step(60.0, idle=1.0)
    assert rig.child.commands == ["pause"]
    rig.step(61.0, idle=1.0)
    assert rig.child.commands == ["pause", "stop"]
    rig.step(idle=61.0)
    assert len(rig.children) == 2


def test_the_gpu_waits_for_idleness_while_input_does_not_suspend(tmp_path: Path) -> None:
    prefs = Preferences(idle_minutes=1, suspend_on_input=False, gpu_only_when_idle=True, device="auto")
    rig = make_rig(tmp_path, prefs)
    rig.step(idle=61.0)
    rig.child.device("cuda")
    rig.step(idle=2.0)  # the user is back: training may go on, but not on the GPU
    assert rig.children[0].commands == ["stop"]
    rig.step(idle=3.0)
    assert rig.child.config.device == "cpu"
    rig.child.device("cpu")
    rig.step(idle=70.0)  # away again: back to the GPU
    assert rig.children[1].commands == ["stop"]
    rig.step(idle=71.0)
    assert rig.child.config.device == "auto"


def test_without_idle_detection_work_waits_for_the_user_to_start_it(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, idle=FakeIdle(None, name="manual"))
    rig.step()
    status = rig.controller.status
    assert status.manual_mode and status.may_resume and rig.children == []
    assert status.headline == "Idle detection unavailable — manual mode"
    rig.controller.resume()
    assert len(rig.children) == 1
    rig.controller.pause()
    assert rig.child.paused


def test_training_progress_reaches_the_headline_and_the_statistics(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    rig.step(idle=61.0)
    rig.child.deliver(UnitStarted("u1", "1", "tiny-lm", 3, 50, resumed=False))
    rig.child.deliver(StateChanged(WorkerState.TRAINING, "tiny-lm"))
    rig.child.deliver(TrainingProgress("u1", 7, 50, 4.25, 448))
    rig.child.deliver(UnitResult("u1", "accepted", None, "ok", 1.5))
    rig.controller.drain_inbox()
    assert rig.controller.status.headline == "Training tiny-lm: step 7/50, loss 4.250"
    assert rig.controller.stats.totals.units_accepted == 1
    assert rig.controller.stats.totals.tokens_contributed == 448


def test_heat_and_an_exclusive_program_hold_training_back_and_the_status_says_why(tmp_path: Path) -> None:
    heat = FakeThermometer(95.0)
    prefs = Preferences(idle_minutes=1, coordinator_url="ws://127.0.0.1:9/ws", pause_above_celsius=90)
    rig = make_rig(tmp_path, prefs, thermometer=heat)
    rig.step(idle=61.0)
    status = rig.controller.status
    assert rig.children == [] and not status.running
    assert status.reason.startswith("too hot (fake sensor 95 °C") and status.temperature == "95 °C (fake sensor)"
    heat.celsius = 85.0  # cooler, not yet by the hysteresis
    rig.step(3.0)
    assert rig.children == []
    heat.celsius = 70.0
    rig.step(3.0)
    assert len(rig.children) == 1 and rig.controller.status.running
    # This test's own interpreter is a running program: on the exclusive list, it pauses the child.
    running = os.path.basename(os.path.realpath(sys.executable))
    rig.controller.apply_preferences(dataclasses.replace(prefs, exclusive_programs=(running,)))
    rig.step(3.0)
    assert rig.child.paused and rig.controller.status.reason == f"{running.lower()} is running (an exclusive program)"


def test_after_the_computer_slept_a_child_on_the_gpu_is_restarted_and_one_on_the_cpu_is_not(tmp_path: Path) -> None:
    prefs = Preferences(idle_minutes=1, coordinator_url="ws://127.0.0.1:9/ws", device="auto")
    rig = make_rig(tmp_path, prefs)
    rig.step(idle=61.0)
    rig.child.device("cuda")
    rig.step()
    rig.clock.sleep_through(3600)  # an hour asleep: wall time jumped, monotonic time did not
    rig.step()
    assert rig.children[0].commands == ["stop"]  # the CUDA context is not trusted after sleep
    rig.step()
    assert len(rig.children) == 2 and rig.child.config.device == "auto"  # it finds its device anew
    rig.child.device("cpu")
    rig.step()
    rig.clock.sleep_through(3600)
    rig.step()
    assert rig.children[1].commands == []  # a CPU child just goes on


def test_the_computer_is_kept_awake_only_while_training_on_mains_power_when_asked(tmp_path: Path) -> None:
    awake = KeepAwake([shutil.which("cat") or "/bin/cat"], name="stand-in")  # logind isn't here
    power = FakePower()
    prefs = Preferences(idle_minutes=1, coordinator_url="ws://127.0.0.1:9/ws", keep_awake_on_ac=True)
    rig = make_rig(tmp_path, prefs, keep_awake=awake, power=power)
    try:
        rig.step(idle=5.0)
        assert not awake.held  # waiting for idle: sleep is the computer's business
        rig.step(idle=61.0)
        rig.step()
        assert rig.controller.status.state is AppState.TRAINING and awake.held
        power.battery = True
        rig.step(3.0)  # the power source is read on the slow poll
        assert not awake.held
        power.battery = False
        rig.step(3.0)
        rig.step()
        assert awake.held
        rig.controller.apply_preferences(dataclasses.replace(prefs, keep_awake_on_ac=False))
        rig.step()
        assert not awake.held
    finally:
        awake.release()


def test_chosen_gpus_that_are_not_there_are_told_when_training_falls_back_to_the_cpu(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, Preferences(idle_minutes=1, coordinator_url="ws://127.0.0.1:9/ws", gpus=(3,)))
    rig.step(idle=61.0)
    assert rig.child.config.gpus == (3,) and rig.child.config.device == "auto"
    rig.child.deliver(DeviceChosen("cpu", "a CPU", 8 << 30))
    rig.step()
    assert [(n.kind, n.title) for n in rig.controller.notifications] == [("gpus_missing", "Training on the CPU")]
    assert "No GPU numbered 3" in rig.controller.notifications[0].message
