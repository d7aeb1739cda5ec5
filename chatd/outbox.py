"""A bounded per-connection queue of encoded frames, drained by one writer task."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Outbox(Generic[T]):
    """`put` never blocks: a full outbox means the consumer is too slow, and the caller
    cuts that one connection instead of slowing every other member of the room."""

    __slots__ = ("_items", "_limit", "_lot", "_space", "closed")

    def __init__(self, limit: int) -> None:
        self._items: deque[T] = deque()
        self._limit = limit
        self._lot = trio.lowlevel.ParkingLot()
        self._space: trio.lowlevel.ParkingLot | None = None  # made on first wait_space
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        if self.closed:
            return True
        if len(self._items) >= self._limit:
            return False
        self._items.append(item)
        if len(self._items) == 1:
            self._lot.unpark()
        return True

    def drop_queued(self, keep_first: bool) -> None:
        """Forget what is queued, except perhaps the first item."""
        first = self._items[0] if keep_first and self._items else None
        self._items.clear()
        if first is not None:
            self._items.append(first)

    def close(self) -> None:
        self.closed = True
        self._lot.unpark_all()
        if self._space is not None:
            self._space.unpark_all()

    async def get_batch(self) -> list[T]:
        """Everything queued, waiting if nothing is; [] once closed and empty."""
        while not self._items:
            if self.closed:
                return []
            await self._lot.park()
        items = list(self._items)
        self._items.clear()
        if self._space is not None:
            self._space.unpark_all()
        return items

    async def wait_space(self, below: int) -> None:
        """Wait until fewer than `below` items are queued (or the outbox is closed): how a
        producer that can wait, unlike fan-out, keeps from overrunning the limit."""
        while len(self._items) >= below and not self.closed:
            if self._space is None:
                self._space = trio.lowlevel.ParkingLot()
            await self._space.park()
