"""Per-user token buckets: reaction and button spam costs nothing but the ignored clicks.

A bucket of ``per_minute`` tokens refills continuously; each action takes one. ``clock`` is injectable so
tests (and SimCord's time control) decide what "a minute later" means.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_minute: int, clock: Callable[[], float] | None = None) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        # Looked up at each call (not bound at import), so a patched clock (SimCord's virtual time) applies.
        self.clock = clock or (lambda: time.monotonic())
        self._buckets: dict[int, tuple[float, float]] = {}  # user → (tokens, at)

    def allow(self, user_id: int) -> bool:
        """Take a token for ``user_id``; False when the user's bucket is empty."""
        now = self.clock()
        tokens, at = self._buckets.get(user_id, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[user_id] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > 10_000:  # forget full buckets now and then: they equal a new one
            self._buckets = {u: (t, a) for u, (t, a) in self._buckets.items()
                             if t + (now - a) * self.rate < self.capacity}
        return allowed

    def retry_after(self, user_id: int) -> float:
        """Seconds until ``user_id`` has a token again (0 when they have one)."""
        tokens, at = self._buckets.get(user_id, (self.capacity, self.clock()))
        tokens = min(self.capacity, tokens + (self.clock() - at) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
