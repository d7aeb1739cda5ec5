"""Counters kept as plain integers on the hot path; exported in Prometheus format."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# Upper bounds in seconds for the store commit latency histogram.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(slots=True)
class Metrics:
    messages_received: int = 0
    messages_stored: int = 0
    duplicates_suppressed: int = 0
    slow_consumer_disconnects: int = 0
    tickets_issued: int = 0
    tickets_rejected: Counter[str] = field(default_factory=Counter)
    auth_failures: Counter[str] = field(default_factory=Counter)
    rate_limited: Counter[str] = field(default_factory=Counter)
    commit_buckets: list[int] = field(default_factory=lambda: [0] * len(COMMIT_BUCKETS))
    commit_count: int = 0
    commit_sum: float = 0.0
    commit_ops: int = 0

    def observe_commit(self, seconds: float, ops: int) -> None:
        # Called from the store's writer thread; int/float updates are atomic under the GIL
        # and a reader seeing a half-updated set of buckets only skews one scrape.
        for i, bound in enumerate(COMMIT_BUCKETS):
            if seconds <= bound:
                self.commit_buckets[i] += 1
                break
        self.commit_count += 1
        self.commit_sum += seconds
        self.commit_ops += ops
