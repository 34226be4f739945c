"""volunteer_app."""

from __future__ import annotations
