"""Who may come in: how many new volunteer identities one source may create, and how many of its
identities may be connected at once.

    >>> limiter = RegistrationLimiter(burst=2, per_minute=6, clock=clock)
    >>> limiter.take("203.0.113.0/24"), limiter.take("203.0.113.0/24")
    (0.0, 0.0)
    >>> limiter.take("203.0.113.0/24")       # the burst is spent: one more every 10 s
    10.0

A source is a network prefix (coordinator.sources). Identities are free to make and each one gets
work, so a stranger who could register hundreds a second could lease a campaign's units faster than
honest volunteers; a token bucket per source lets a household or a lab register its machines at once
(the burst) and an attacker only `per_minute` more after that. Buckets live in memory: a restart
forgives everyone, which costs an attacker a restart's worth of identities at most.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AdmissionConfig", "RegistrationLimiter"]

# Buckets kept at most; past it the least recently used ones go (they come back full, which only
# forgives sources that had been quiet the longest).
MAX_TRACKED_SOURCES = 100_000


@dataclass(frozen=True)
class AdmissionConfig:
    """Limits per source (network prefix); sources that `SourcePolicy.exempt` are never limited."""

    registration_burst: int = 20  # new identities a source may create at once
    registrations_per_minute: float = 6.0  # and then this many per minute
    max_connected_per_source: int = 64  # identities from one source connected at once; 0: no cap

    def __post_init__(self) -> None:
        if self.registration_burst < 1:
            raise ValueError(f"the registration burst must be at least 1, got {self.registration_burst}")
        if not 0 < self.registrations_per_minute <= 1e6:
            raise ValueError(
                f"registrations per minute must be above 0 and at most 1e6, got {self.registrations_per_minute}"
            )
        if self.max_connected_per_source < 0:
            raise ValueError(
                f"the cap on connections per source must not be negative, got {self.max_connected_per_source}"
            )


class RegistrationLimiter:
    """A token bucket per source: `burst` tokens, refilled at `per_minute`; one token per new identity.
    Thread-safe."""

    def __init__(self, *, burst: int, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0  # tokens per second
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source → (tokens, at)
        self._lock = threading.Lock()

    def take(self, source: str) -> float:
        """0.0 when `source` may register one more identity now (its token is spent); otherwise the
        seconds until it may, with nothing spent."""
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.pop(source, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[source] = (tokens, now)
            while len(self._buckets) > MAX_TRACKED_SOURCES:
                self._buckets.popitem(last=False)
            return wait

    def __len__(self) -> int:
        return len(self._buckets)
