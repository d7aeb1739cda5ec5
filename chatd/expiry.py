"""When sessions must end: one timer task for every session that has a deadline.

A session opened with a token ends when that token would be refused (a JWT's `exp` plus
the leeway; an issued STOMP login at its expiry). A timer task per session would cost
each of ten thousand connections a task and a cancel scope; here one heap of deadlines
and one task that sleeps until the nearest, as the STOMP heart-beats do for theirs.

Deadlines are on the wall clock (Unix seconds), because tokens state them so; the task
sleeps on trio's clock for the difference, and at most `MAX_SLEEP` at a time, so a wall
clock that jumps is followed within that.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

MAX_SLEEP = 60.0
# Entries of sessions that ended before their deadline stay in the heap until popped;
# past this many beyond twice the live ones, the heap is rebuilt from the live ones, so
# connections that come and go cannot grow it. An entry is a deadline and a number, never
# the session: an ended session (and the buffers it held: a transaction's frames, megabytes)
# must not wait in the heap until its token would have expired.
_SLACK = 1024

T = TypeVar("T")

log = logging.getLogger("chatd.expiry")


class Expiry(Generic[T]):
    def __init__(
        self, on_expire: Callable[[T], None], clock: Callable[[], float] = time.time
    ) -> None:
        self._on_expire = on_expire
        # The wall clock. Public so a test can put a fake one in (then `wake` after
        # moving it: the task sleeps on trio's clock).
        self.clock = clock
        self._live: dict[T, int] = {}  # item -> the number of its heap entry
        self._items: dict[int, T] = {}  # number -> live item
        self._heap: list[tuple[float, int]] = []
        self._seq = itertools.count()
        self._changed = trio.Event()

    def __len__(self) -> int:
        return len(self._live)

    def add(self, item: T, at: float) -> None:
        """End `item` at `at` (wall clock); a second call moves its deadline."""
        if math.isnan(at) or at == math.inf:
            self.discard(item)
            return
        earliest = self._heap[0][0] if self._heap else math.inf
        self.discard(item)
        seq = next(self._seq)
        self._live[item] = seq
        self._items[seq] = item
        heapq.heappush(self._heap, (at, seq))
        if len(self._heap) > 2 * len(self._live) + _SLACK:
            self._rebuild()
        if at < earliest:
            self._changed.set()

    def discard(self, item: T) -> None:
        seq = self._live.pop(item, None)
        if seq is not None:
            del self._items[seq]

    def wake(self) -> None:
        """Look at the clock again now (a fake clock moved, or the wall clock jumped)."""
        self._changed.set()

    def expire_due(self) -> int:
        """End every item whose deadline has come; returns how many."""
        now = self.clock()
        heap = self._heap
        n = 0
        while heap and heap[0][0] <= now:
            _, seq = heapq.heappop(heap)
            item = self._items.pop(seq, None)
            if item is not None:  # else ended before its deadline, or moved
                del self._live[item]
                n += 1
                try:
                    self._on_expire(item)
                except Exception:  # one session's fault must not stop the others' ends
                    log.exception("could not end an expired session")
        return n

    async def run(self) -> None:
        """Runs for the server's life."""
        while True:
            self.expire_due()
            self._changed = trio.Event()
            if self._heap:
                delay = self._heap[0][0] - self.clock()
                with trio.move_on_after(min(max(delay, 0.0), MAX_SLEEP)):
                    await self._changed.wait()
            else:
                await self._changed.wait()

    def _rebuild(self) -> None:
        live = self._items
        self._heap = [(at, seq) for at, seq in self._heap if seq in live]
        heapq.heapify(self._heap)
