"""The history replay checker for crash tests: one implementation, in benchmarks/history.py, which
`bench crash` runs after its SIGKILLs; the tests call it from here like their other harnesses."""

from __future__ import annotations

from benchmarks.history import HistoryError, check_history

__all__ = ["HistoryError", "check_history"]
