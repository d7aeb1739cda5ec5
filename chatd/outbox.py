"""A bounded per-connection queue of encoded frames, drained by one writer task."""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class Outbox(Generic[T]):
    """`put` never blocks: a full outbox means the consumer is too slow, and the caller
    cuts that one connection instead of slowing every other member of the room."""

    __slots__ = ("_items", "_limit", "_lot", "closed")

    def __init__(self, limit: int) -> None:
        self._items: deque[T] = deque()
        self._limit = limit
        self._lot = trio.lowlevel.ParkingLot()
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

    def close(self) -> None:
        self.closed = True
        self._lot.unpark_all()

    async def get_batch(self) -> list[T]:
        """Everything queued, waiting if nothing is; [] once closed and empty."""
        while not self._items:
            if self.closed:
                return []
            await self._lot.park()
        items = list(self._items)
        self._items.clear()
        return items
