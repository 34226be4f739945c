"""How busy the CPU is with other people's work: the share of all cores used by processes that are
not ours, measured between two calls from Linux's /proc accounting.

    meter = OtherCpuLoad(exclude_pids=lambda: [os.getpid(), worker.pid])
    meter.sample()   # None: the first call has nothing to compare with
    meter.sample()   # 0.07: from 0.0 (idle) to 1.0 (every core busy)

Feeds the policy's "other programs are busy" suspend and the CPU-load idle guess. Other OSes get
None (unknown) until they have their own reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative CPU time counters (any consistent unit: /proc gives clock ticks)."""

    total: float  # all cores, all states
    busy: float  # all cores, not idle and not waiting for IO
    excluded: float  # used by the excluded processes (ours)


def own_process_tree(proc: Path = PROC, pid: int | None = None) -> list[int]:
    """This process and its descendants, via /proc/<pid>/task/<tid>/children (empty where unsupported)."""
    root = os.getpid() if pid is None else pid
    seen: list[int] = []
    todo = [root]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        try:
            tasks = list((proc / str(current) / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
    return seen


def read_proc_cpu_times(exclude_pids: Iterable[int], proc: Path = PROC) -> CpuTimes | None:
    """System totals from /proc/stat and the excluded processes' utime+stime from /proc/<pid>/stat."""
    try:
        first = (proc / "stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not first or first[0] != "cpu":
        return None
    try:
        fields = [float(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    except ValueError:
        return None
    fields += [0.0] * (8 - len(fields))
    total = sum(fields)
    busy = total - fields[3] - fields[4]
    excluded = 0.0
    for pid in exclude_pids:
        try:
            stat = (proc / str(pid) / "stat").read_text()
        except OSError:
            continue  # exited: its time is no longer ours to subtract, nor counted again
        # The command name may contain spaces; fields after its closing parenthesis are fixed.
        rest = stat[stat.rfind(")") + 2 :].split()
        try:
            excluded += float(rest[11]) + float(rest[12])  # utime, stime (fields 14, 15)
        except (IndexError, ValueError):
            continue
    return CpuTimes(total=total, busy=busy, excluded=excluded)


class OtherCpuLoad:
    """Fraction of total CPU capacity used by other processes since the previous `sample()`."""

    def __init__(
        self,
        exclude_pids: Callable[[], Iterable[int]] = own_process_tree,
        read: Callable[[Iterable[int]], CpuTimes | None] = read_proc_cpu_times,
    ) -> None:
        self._exclude_pids = exclude_pids
        self._read = read
        self._previous: CpuTimes | None = None

    @property
    def readable(self) -> bool:
        """Whether the last attempt to read the counters worked."""
        return self._previous is not None

    def sample(self) -> float | None:
        """Load in [0, 1] since the last call; None on the first call, when unreadable, and when
        called again before the counters moved (the next call then measures the longer interval)."""
        current = self._read(list(self._exclude_pids()))
        previous = self._previous
        if current is None or previous is None:
            self._previous = current
            return None
        d_total = current.total - previous.total
        if d_total <= 0:
            return None
        self._previous = current
        # A process that exited between samples takes its counted time with it: clamp at zero.
        d_excluded = max(0.0, current.excluded - previous.excluded)
        d_other = current.busy - previous.busy - d_excluded
        return min(1.0, max(0.0, d_other / d_total))
