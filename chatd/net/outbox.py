"""A bounded per-connection queue, drained by one writer task.

Kept small on purpose: with ten thousand connections, every object here is multiplied by
ten thousand, and so is everything a parked writer keeps alive. So the queue is a plain
list, and the waiting writer is parked with trio's lowest-level primitives instead of a
ParkingLot (whose OrderedDict alone costs more than the rest of this object): the parked
task is kept in a slot, and the object itself is the abort callback, so a parked writer
holds no closure and no coroutine frame of ours (measured with bench/conn_heap.py).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

from trio.lowlevel import Abort, Task, current_task, reschedule, wait_task_rescheduled

T = TypeVar("T")


class _Waiter:
    """At most one parked task, woken by `wake`; itself the abort callback."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: Task | None = None

    def __call__(self, _: object) -> Abort:
        self.task = None  # cancelled: nobody to wake any more
        return Abort.SUCCEEDED

    async def park(self) -> None:
        self.task = current_task()
        await wait_task_rescheduled(self)

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
    one comparison each on the fan-out path.

    The consumer parked in `wait_items` is kept as its task, with the outbox itself as the
    abort callback (`__call__`): nothing is allocated for an idle connection's writer."""

    __slots__ = ("items", "slots", "room", "limit", "max_bytes", "_reader", "_space", "closed")

    def __init__(self, limit: int, max_bytes: int | None = None) -> None:
        # What is queued, oldest first. Read it freely (a length check on the fan-out path
        # is cheaper than a call to `__len__`); change it only through the methods.
        self.items: list[T] = []
        self.limit = limit  # read only, as `max_bytes`
        # No byte bound is one no queue reaches (an int: compared with ints, faster).
        self.max_bytes = max_bytes if max_bytes is not None else 1 << 62
        self.slots = limit  # frames that may still be queued
        # Bytes that may still be held: queued, or taken and not yet reported `sent`.
        self.room = self.max_bytes
        self._reader: Task | None = None  # the consumer parked in `wait_items`
        self._space: _Waiter | None = None  # made on first wait_space
        self.closed = False

    def __len__(self) -> int:
        return len(self.items)

    @property
    def frames(self) -> int:
        """Frames queued."""
        return self.limit - self.slots

    @property
    def weight(self) -> int:
        """Bytes held: queued, or taken and not yet `sent`."""
        return self.max_bytes - self.room

    def fits(self, frames: int, size: int) -> bool:
        """Whether `frames` more frames of `size` bytes in all stay within both bounds."""
        if frames > self.slots:
            return False
        room = self.room
        return size <= room or (room == self.max_bytes and frames == 1)

    def put(self, item: T, size: int = 0) -> bool:
        """Queue one frame of `size` bytes; False when it does not fit. Written out, not
        through `fits` and `add`: this runs for every frame a busy socket is offered."""
        if self.closed:
            return True
        slots = self.slots
        if not slots:
            return False
        room = self.room - size
        if room < 0 and room + size != self.max_bytes:
            return False
        items = self.items
        items.append(item)
        self.slots = slots - 1
        self.room = room
        if len(items) == 1:
            self._wake_reader()
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
            self._wake_reader()

    def drop_queued(self, keep_first: bool) -> None:
        """Forget what is queued, except perhaps the first item. Only a writer being cut
        drops frames, and it closes the outbox right after: the counts stop counting."""
        del self.items[1 if keep_first else 0 :]
        self.slots = self.limit

    def close(self) -> None:
        self.closed = True
        self._wake_reader()
        if self._space is not None:
            self._space.wake()

    def _wake_reader(self) -> None:
        task = self._reader
        if task is not None:
            self._reader = None
            reschedule(task)

    def __call__(self, _: object) -> Abort:
        """The parked consumer was cancelled (trio's abort callback)."""
        self._reader = None
        return Abort.SUCCEEDED

    def wait_items(self) -> Coroutine[Any, Any, object]:
        """Park the calling task until something is queued or the outbox is closed: await
        it at once, and look again. Not a coroutine itself, so a parked consumer's stack is
        one frame shorter."""
        self._reader = current_task()
        return wait_task_rescheduled(self)

    def take(self) -> list[T]:
        """Everything queued, at once. Its bytes still count until the consumer says they
        are `sent`."""
        items = self.items
        self.items = []
        self.slots = self.limit
        if self._space is not None:
            self._space.wake()
        return items

    async def get_batch(self) -> list[T]:
        """Everything queued, waiting if nothing is; [] once closed and empty. Its bytes
        still count until the consumer says they are `sent`."""
        while not self.items:
            if self.closed:
                return []
            await self.wait_items()
        return self.take()

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
