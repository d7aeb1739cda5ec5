"""A bounded per-connection queue, drained by one writer task.

Kept small on purpose: with ten thousand connections, every object here is multiplied by
ten thousand, so the queue is a plain list and the waiting writer is parked with trio's
lowest-level primitives instead of a ParkingLot (whose OrderedDict alone costs more
than the rest of this object).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

T = TypeVar("T")


class _Waiter:
    """At most one parked task, woken by `wake`."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: Task | None = None

    async def park(self) -> None:
        self.task = current_task()

        def abort(_: object) -> Abort:
            self.task = None
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    def wake(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            reschedule(task)


class Outbox(Generic[T]):
    """`put` never blocks: a full outbox means the consumer is too slow, and the caller
    cuts that one connection instead of slowing every other member of the room."""

    __slots__ = ("items", "_limit", "_reader", "_space", "closed")

    def __init__(self, limit: int) -> None:
        # What is queued, oldest first. Read it freely (a length check on the fan-out path
        # is cheaper than a call to `__len__`); change it only through the methods.
        self.items: list[T] = []
        self._limit = limit
        self._reader = _Waiter()
        self._space: _Waiter | None = None  # made on first wait_space
        self.closed = False

    def __len__(self) -> int:
        return len(self.items)

    def put(self, item: T) -> bool:
        if self.closed:
            return True
        items = self.items
        if len(items) >= self._limit:
            return False
        items.append(item)
        if len(items) == 1:
            self._reader.wake()
        return True

    def drop_queued(self, keep_first: bool) -> None:
        """Forget what is queued, except perhaps the first item."""
        del self.items[1 if keep_first else 0 :]

    def close(self) -> None:
        self.closed = True
        self._reader.wake()
        if self._space is not None:
            self._space.wake()

    async def get_batch(self) -> list[T]:
        """Everything queued, waiting if nothing is; [] once closed and empty."""
        while not self.items:
            if self.closed:
                return []
            await self._reader.park()
        items = self.items
        self.items = []
        if self._space is not None:
            self._space.wake()
        return items

    async def wait_space(self, below: int) -> None:
        """Wait until fewer than `below` items are queued (or the outbox is closed): how a
        producer that can wait, unlike fan-out, keeps from overrunning the limit."""
        while len(self.items) >= below and not self.closed:
            if self._space is None:
                self._space = _Waiter()
            await self._space.park()
