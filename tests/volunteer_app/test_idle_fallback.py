"""The labelled fallbacks: the CPU-load meter and guess (on a fake /proc), and manual mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from volunteer_app.idle import CpuLoadIdleGuess, ManualIdleSource, OtherCpuLoad
from volunteer_app.idle.cpu_load import CpuTimes, own_process_tree, read_proc_cpu_times


class FakeProc:
    """A /proc with /proc/stat and per-process stat files whose counters tests advance."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.user = self.system = self.idle = 0
        self.procs: dict[int, tuple[int, int]] = {}
        self.write()

    def write(self) -> None:
        (self.root / "stat").write_text(
            f"cpu  {self.user} 0 {self.system} {self.idle} 0 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nctxt 1\n"
        )
        for pid, (utime, stime) in self.procs.items():
            d = self.root / str(pid)
            d.mkdir(exist_ok=True)
            # The command name contains spaces and a parenthesis, as real ones can.
            fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime)]
            (d / "stat").write_text(f"{pid} (python (worker) x) " + " ".join(fields + ["0"] * 30) + "\n")

    def tick(self, busy: int, idle: int, ours: dict[int, int] | None = None) -> None:
        self.user += busy
        self.idle += idle
        for pid, extra in (ours or {}).items():
            utime, stime = self.procs.get(pid, (0, 0))
            self.procs[pid] = (utime + extra, stime)
        self.write()


def meter_on(proc: FakeProc, pids: list[int]) -> OtherCpuLoad:
    return OtherCpuLoad(exclude_pids=lambda: pids, read=lambda p: read_proc_cpu_times(p, proc.root))


def test_proc_reader_sums_counters(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.tick(busy=300, idle=700, ours={42: 120})
    times = read_proc_cpu_times([42, 999], tmp_path)  # 999 has exited: ignored
    assert times == CpuTimes(total=1000, busy=300, excluded=120)


def test_unreadable_proc_gives_none(tmp_path: Path) -> None:
    assert read_proc_cpu_times([], tmp_path / "nothing") is None


def test_load_of_other_programs_excludes_ours(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    meter = meter_on(proc, [42])
    assert meter.sample() is None  # first call primes
    proc.tick(busy=600, idle=400, ours={42: 500})  # we used 500 of the 600 busy ticks
    assert meter.sample() == pytest.approx(0.1)


def test_repeated_sample_before_counters_move_keeps_the_interval(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    meter = meter_on(proc, [])
    meter.sample()
    proc.tick(busy=50, idle=50)
    assert meter.sample() == pytest.approx(0.5)
    assert meter.sample() is None  # no time passed
    assert meter.readable
    proc.tick(busy=100, idle=0)
    assert meter.sample() == pytest.approx(1.0)


def test_own_process_tree_follows_children(tmp_path: Path) -> None:
    for pid, children in {10: "11 12", 11: "13", 12: "", 13: ""}.items():
        task = tmp_path / str(pid) / "task" / str(pid)
        task.mkdir(parents=True)
        (task / "children").write_text(children)
    assert sorted(own_process_tree(tmp_path, pid=10)) == [10, 11, 12, 13]


class Ticker:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_cpu_guess_counts_quiet_time_and_resets_on_busy(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    clock = Ticker()
    guess = CpuLoadIdleGuess(meter_on(proc, []), busy_threshold=0.10, clock=clock)
    assert guess.name == "cpu-load-guess"
    assert "guess" in guess.description.lower() and "can start work while you read" in guess.description
    for _ in range(5):
        clock.t += 1
        proc.tick(busy=5, idle=95)
        idle = guess.idle_seconds()
    assert idle == pytest.approx(5.0)  # starting up counted as activity
    clock.t += 1
    proc.tick(busy=50, idle=50)
    assert guess.idle_seconds() == 0.0
    clock.t += 1
    proc.tick(busy=1, idle=99)
    assert guess.idle_seconds() == pytest.approx(1.0)


def test_cpu_guess_without_proc_is_unknown(tmp_path: Path) -> None:
    meter = OtherCpuLoad(exclude_pids=list, read=lambda p: read_proc_cpu_times(p, tmp_path / "none"))
    assert CpuLoadIdleGuess(meter).idle_seconds() is None


def test_manual_mode_never_claims_idle() -> None:
    source = ManualIdleSource(reason="no X display")
    assert source.idle_seconds() is None
    assert source.name == "manual"
    assert source.description.startswith("Idle detection unavailable — manual mode")
    assert source.reason == "no X display"
