"""StatsBook: what the statistics window shows, from the worker's events."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from volunteer_app.events import Connected, Downloading, TrainingProgress, UnitResult, UnitStarted
from volunteer_app.tray.stats import StatsBook


def test_an_accepted_unit_adds_its_tokens_and_credit_and_survives_a_restart(tmp_path: Path) -> None:
    book = StatsBook(tmp_path / "stats.json", wall=lambda: 100.0)
    book.record(Connected("v1", "0.1.0", 10.0, None, registered=False))
    book.record(UnitStarted("u1", "1", "tiny-lm", 3, 4, resumed=False))
    for step in range(1, 5):
        book.record(TrainingProgress("u1", step, 4, 5.0 - step / 4, 64 * step))
    book.record(UnitResult("u1", "accepted", None, "ok", 2.5))
    book.record(UnitResult("u2", "rejected", "bad_norm", "too large", 0.0))
    assert [loss for _, loss in book.loss] == [4.75, 4.5, 4.25, 4.0]
    assert book.session_tokens == 192  # the first report is the baseline
    assert book.credit_total == 12.5
    totals = StatsBook(tmp_path / "stats.json").totals
    assert (totals.tokens_contributed, totals.units_accepted, totals.units_rejected) == (256, 1, 1)
    assert totals.credit_earned == 2.5


def test_downloads_count_toward_today_only(tmp_path: Path) -> None:
    today = [date(2025, 1, 6)]
    book = StatsBook(None, today=lambda: today[0])
    book.record(Downloading("abc", 400_000, 1_000_000, 0.1))
    book.record(Downloading("abc", 1_000_000, 1_000_000, 0.2))
    assert book.network_bytes_today() == 1_000_000
    today[0] = date(2025, 1, 7)
    assert book.network_bytes_today() == 0


def test_an_unreadable_file_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    path.write_text('{"units_accepted": "many", "tokens_contributed": 12')
    assert StatsBook(path).totals.units_accepted == 0
    path.write_text('{"units_accepted": "many", "tokens_contributed": 12}')
    assert (StatsBook(path).totals.units_accepted, StatsBook(path).totals.tokens_contributed) == (0, 12)
