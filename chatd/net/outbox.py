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
    cuts that one connection instead of slowing every other member of the room.

    Bounded twice, whatever the items are: in frames queued (`limit`), and in bytes
    (`max_bytes`), the batch being sent included. A writer may join several frames into
    one item (a corked block): `add` says how many frames and bytes such an item holds,
    as counting items would let a joined block slip past either bound. One frame bigger
    than the byte bound is still taken when nothing else is held, so a consumer that keeps
    up gets it. The counts are kept as what is left (`slots`, `room`): one subtraction and
    one comparison each on the fan-out path."""

    __slots__ = ("items", "slots", "room", "_limit", "_max_bytes", "_reader", "_space", "closed")

    def __init__(self, limit: int, max_bytes: int | None = None) -> None:
        # What is queued, oldest first. Read it freely (a length check on the fan-out path
        # is cheaper than a call to `__len__`); change it only through the methods.
        self.items: list[T] = []
        self._limit = limit
        # No byte bound is one no queue reaches (an int: compared with ints, faster).
        self._max_bytes = max_bytes if max_bytes is not None else 1 << 62
        self.slots = limit  # frames that may still be queued
        # Bytes that may still be held: queued, or taken and not yet reported `sent`.
        self.room = self._max_bytes
        self._reader = _Waiter()
        self._space: _Waiter | None = None  # made on first wait_space
        self.closed = False

    def __len__(self) -> int:
        return len(self.items)

    @property
    def frames(self) -> int:
        """Frames queued."""
        return self._limit - self.slots

    @property
    def weight(self) -> int:
        """Bytes held: queued, or taken and not yet `sent`."""
        return self._max_bytes - self.room

    def fits(self, frames: int, size: int) -> bool:
        """Whether `frames` more frames of `size` bytes in all stay within both bounds."""
        if frames > self.slots:
            return False
        room = self.room
        return size <= room or (room == self._max_bytes and frames == 1)

    def put(self, item: T, size: int = 0) -> bool:
        """Queue one frame of `size` bytes; False when it does not fit. Written out, not
        through `fits` and `add`: this runs for every frame a busy socket is offered."""
        if self.closed:
            return True
        slots = self.slots
        if not slots:
            return False
        room = self.room - size
        if room < 0 and room + size != self._max_bytes:
            return False
        items = self.items
        items.append(item)
        self.slots = slots - 1
        self.room = room
        if len(items) == 1:
            self._reader.wake()
        return True

    def add(self, item: T, size: int, frames: int) -> None:
        """Queue `item` without a check: for what was counted against the bounds already
        (a corked block checked frame by frame), or the rest of a frame already begun."""
        if self.closed:
            return
        items = self.items
        items.append(item)
        self.slots -= frames
        self.room -= size
        if len(items) == 1:
            self._reader.wake()

    def drop_queued(self, keep_first: bool) -> None:
        """Forget what is queued, except perhaps the first item. Only a writer being cut
        drops frames, and it closes the outbox right after: the counts stop counting."""
        del self.items[1 if keep_first else 0 :]
        self.slots = self._limit

    def close(self) -> None:
        self.closed = True
        self._reader.wake()
        if self._space is not None:
            self._space.wake()

    async def get_batch(self) -> list[T]:
        """Everything queued, waiting if nothing is; [] once closed and empty. Its bytes
        still count until the consumer says they are `sent`."""
        while not self.items:
            if self.closed:
                return []
            await self._reader.park()
        items = self.items
        self.items = []
        self.slots = self._limit
        if self._space is not None:
            self._space.wake()
        return items

    def sent(self, size: int) -> None:
        """`size` bytes the consumer took are gone."""
        self.room += size
        if self._space is not None:
            self._space.wake()

    async def wait_space(self, below: int, below_bytes: int | None = None) -> None:
        """Wait until fewer than `below` frames (and, if given, `below_bytes` bytes) are
        waiting, or the outbox is closed: how a producer that can wait, unlike fan-out,
        keeps from overrunning the bounds."""
        while not self.closed and (
            self.frames >= below or (below_bytes is not None and self.weight >= below_bytes)
        ):
            if self._space is None:
                self._space = _Waiter()
            await self._space.park()
