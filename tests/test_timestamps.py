"""The ISO 8601 stamps both protocols carry (`chatd.model.utc_iso`), formatted once a second
and reused: the cache must never give one second's text to another."""

from __future__ import annotations

import random
import time

from chatd.model import utc_iso


def _slow(ts: float) -> str:
    millis = int(ts * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + (
        f".{millis % 1000:03d}Z"
    )


def test_the_stamp_is_iso_8601_utc_with_milliseconds() -> None:
    assert utc_iso(0) == "1970-01-01T00:00:00.000Z"
    assert utc_iso(1764547200.25) == "2025-12-01T00:00:00.250Z"


def test_seconds_in_any_order_each_get_their_own_text() -> None:
    rng = random.Random(16)
    base = 1764547200.0
    stamps = [base + rng.uniform(-3, 3) for _ in range(2000)]
    stamps += [rng.uniform(0, 4e9) for _ in range(2000)]
    stamps += [base - 0.0005, base, base + 0.9995, base + 0.999]
    for ts in stamps:
        assert utc_iso(ts) == _slow(ts)
