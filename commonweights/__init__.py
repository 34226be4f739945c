"""The `commonweights` command: one CLI over the training core, the coordinator and the volunteer."""

from __future__ import annotations
