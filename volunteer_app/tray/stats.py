"""What the statistics window shows: live series for the charts and running totals, kept by the app.

    book = StatsBook(data_dir / "app-stats.json")
    book.record(TrainingProgress("u1", 3, 50, 4.2, 192))   # every worker event goes through here
    book.loss[-1]                                           # (wall time, 4.2)
    book.totals.units_accepted                              # survives restarts (the JSON file)

"Contributed" counts what the coordinator accepted: a unit's tokens are added when its result says
accepted. The live "tokens trained" series counts this session's training as it happens. Downloads
are counted per day for the daily network cap (uploads are not reported by the worker).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from pathlib import Path

from training.atomic_write import write_atomically
from volunteer_app.events import Connected, Downloading, TrainingProgress, UnitResult, UnitStarted, WorkerEvent

__all__ = ["StatsBook", "Totals"]

log = logging.getLogger(__name__)

MAX_POINTS = 2000


@dataclass
class Totals:
    """All-time numbers for this install."""

    tokens_contributed: int = 0
    units_accepted: int = 0
    units_rejected: int = 0
    units_abandoned: int = 0
    credit_earned: float = 0.0
    network_day: str = ""  # ISO date the byte count below belongs to
    network_bytes: int = 0

    @classmethod
    def from_json(cls, data: object) -> Totals:
        if not isinstance(data, dict):
            return cls()
        known = {f.name: f.type for f in fields(cls)}  # annotations are strings here: "int", "float", "str"
        values: dict[str, int | float | str] = {}
        for name, value in data.items():
            kind = known.get(name)
            if kind == "int" and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                values[name] = value
            elif kind == "float" and isinstance(value, int | float) and math.isfinite(value):
                values[name] = float(value)
            elif kind == "str" and isinstance(value, str):
                values[name] = value
        return cls(**values)  # type: ignore[arg-type]  # each value was checked against its field


class StatsBook:
    """Series and totals from the worker's events; `path` None keeps everything in memory."""

    def __init__(
        self,
        path: Path | None,
        *,
        wall: Callable[[], float] = time.time,
        today: Callable[[], date] = date.today,
        max_points: int = MAX_POINTS,
    ) -> None:
        self.path = path
        self._wall = wall
        self._today = today
        self.totals = self._load()
        self.loss: deque[tuple[float, float]] = deque(maxlen=max_points)
        self.tokens_trained: deque[tuple[float, int]] = deque(maxlen=max_points)
        self.credit: deque[tuple[float, float]] = deque(maxlen=max_points)
        self.session_tokens = 0
        self.credit_total: float | None = None  # the coordinator's number for this volunteer
        self.unit: UnitStarted | None = None
        self.progress: TrainingProgress | None = None
        self._unit_tokens: dict[str, int] = {}  # last cumulative count seen, per unit
        self._download_done: dict[str, int] = {}

    def record(self, event: WorkerEvent) -> None:
        now = self._wall()
        if isinstance(event, Connected):
            self.credit_total = event.credit_total
            self.credit.append((now, event.credit_total))
        elif isinstance(event, UnitStarted):
            self.unit, self.progress = event, None
        elif isinstance(event, TrainingProgress):
            self._progress(event, now)
        elif isinstance(event, Downloading):
            self._downloaded(event)
        elif isinstance(event, UnitResult):
            self._result(event, now)

    def _progress(self, event: TrainingProgress, now: float) -> None:
        self.progress = event
        if math.isfinite(event.loss):
            self.loss.append((now, event.loss))
        # The first count seen for a unit is its baseline: a unit resumed from a checkpoint made
        # before this session started does not count its earlier tokens again.
        before = self._unit_tokens.get(event.unit_id, event.tokens)
        self._unit_tokens[event.unit_id] = event.tokens
        self.session_tokens += max(0, event.tokens - before)
        self.tokens_trained.append((now, self.session_tokens))

    def _downloaded(self, event: Downloading) -> None:
        before = self._download_done.get(event.sha256, 0)
        gained = event.done - before if event.done >= before else event.done  # a restarted download
        self._download_done[event.sha256] = event.done
        self._roll_day()
        self.totals.network_bytes += max(0, gained)
        if event.done >= event.total:
            self._download_done.pop(event.sha256, None)
            self.save()

    def _result(self, event: UnitResult, now: float) -> None:
        totals = self.totals
        if event.status == "accepted":
            totals.units_accepted += 1
            totals.tokens_contributed += self._unit_tokens.get(event.unit_id, 0)
        elif event.status == "rejected":
            totals.units_rejected += 1
        elif event.status == "abandoned":
            totals.units_abandoned += 1
        totals.credit_earned += event.credit
        if self.credit_total is not None:
            self.credit_total += event.credit
            self.credit.append((now, self.credit_total))
        self._unit_tokens.pop(event.unit_id, None)
        self.save()

    def network_bytes_today(self) -> int:
        self._roll_day()
        return self.totals.network_bytes

    def _roll_day(self) -> None:
        today = self._today().isoformat()
        if self.totals.network_day != today:
            self.totals.network_day, self.totals.network_bytes = today, 0

    def _load(self) -> Totals:
        if self.path is None:
            return Totals()
        try:
            return Totals.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return Totals()
        except (OSError, ValueError) as error:
            log.warning("starting statistics afresh: %s is unreadable (%s)", self.path, error)
            return Totals()

    def save(self) -> None:
        """Write the totals atomically; a failure is logged, never raised (statistics are not work)."""
        if self.path is None:
            return
        totals = {**asdict(self.totals), "saved_at": datetime.now().astimezone().isoformat()}
        try:
            write_atomically(self.path, json.dumps(totals))
        except OSError as error:
            log.warning("cannot save statistics to %s: %s", self.path, error)
