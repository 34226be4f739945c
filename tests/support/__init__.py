"""Harnesses shared by tests: a coordinator process, an in-process volunteer, the history checker."""

from __future__ import annotations
