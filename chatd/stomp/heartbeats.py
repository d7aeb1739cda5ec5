"""STOMP heart-beats for every connection from one task.

A timer task per connection would cost each of ten thousand idle clients a few
kilobytes; one task walking the connections that agreed heart-beats costs a few
microseconds per connection per tick.
"""

from __future__ import annotations

from typing import Protocol

import trio

TICK = 0.25  # seconds; heart-beat intervals are at least [stomp] heartbeat_min_ms (1 s)


class Beating(Protocol):
    def beat(self, now: float) -> None: ...


class Heartbeats:
    def __init__(self) -> None:
        self._members: set[Beating] = set()
        # Set when a member arrives while `run` waits for one. One per server, so a plain
        # trio.Event: the outbox's smaller waiter is private to chatd.net, and saves
        # memory only where there is one per connection.
        self._arrived = trio.Event()

    def add(self, member: Beating) -> None:
        self._members.add(member)
        self._arrived.set()

    def discard(self, member: Beating) -> None:
        self._members.discard(member)

    async def run(self) -> None:
        while True:
            if not self._members:
                self._arrived = trio.Event()
                await self._arrived.wait()
                continue
            await trio.sleep(TICK)
            now = trio.current_time()
            for member in list(self._members):
                member.beat(now)
