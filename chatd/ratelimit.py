"""Per-user token buckets: `rate` tokens a second, up to `burst` saved."""

from __future__ import annotations

from collections.abc import Callable

# Buckets kept before the full ones are swept away.
_SWEEP_FROM = 10_000


class RateLimiter:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        """`clock` is the time in seconds (trio.current_time in the server; tests pass a
        fake one)."""
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[int, tuple[float, float]] = {}
        self._sweep_at = _SWEEP_FROM

    def allow(self, key: int, cost: float = 1.0) -> bool:
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - cost, now)
        if len(self._buckets) > self._sweep_at:
            self._forget_full(now)
            # The next sweep waits until the map has doubled: with more than _SWEEP_FROM
            # users sending at once, few buckets are full, and sweeping on every call
            # scanned them all for each message (3 ms a message at 12,000 users).
            self._sweep_at = max(_SWEEP_FROM, 2 * len(self._buckets))
        return True

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket; dropping those bounds memory.
        full = [
            k
            for k, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
