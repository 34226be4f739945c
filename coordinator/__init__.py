"""coordinator."""

from __future__ import annotations
