"""Typed keys for the aiohttp application's state."""

from __future__ import annotations

import asyncio

from aiohttp import web

from coordinator.metrics import Metrics
from coordinator.service import Coordinator

__all__ = ["EVENTS", "METRICS", "SERVICE", "SOCKETS"]

SERVICE = web.AppKey("service", Coordinator)
METRICS = web.AppKey("metrics", Metrics)
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])
EVENTS = web.AppKey("events", list[asyncio.Queue[dict[str, object]]])  # live-update subscribers (SSE)
