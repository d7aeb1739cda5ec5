"""One order of chat messages on every node.

PostgreSQL commits messages one transaction at a time cluster-wide, in id order, and each
message carries the id committed just before it (`prev_id`, from `message_clock`). The
bus does not keep that order: two nodes publish independently, and a node's own commit
can be ready before the bus brings the one before it. So every chat message, local or
from the bus, passes here: it is delivered once the one before it has been, and never
twice. A message whose predecessor has not come is held; if the gap is still open after
`gap_wait` seconds (the predecessor's node died between its commit and its publish, or
the bus lost it), the missing messages are read from the store, delivered, and the held
ones follow. After the bus was away, `catch_up` reads whatever was committed meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

log = logging.getLogger("chatd.cluster")

T = TypeVar("T")

# Held messages up to this many; at the bound, fill from the store at once rather than
# wait longer, and a message that finds it full is not kept but read from the store later
# (it is committed), so a gap the store cannot close yet (the store away) holds no more.
MAX_HELD = 10_000


class Sequencer(Generic[T]):
    """`deliver(item)` in id order. `fill(after, upto)` returns the committed messages
    with `after < id <= upto` that this node must deliver, oldest first, as
    (id, item) pairs; it may raise (the store away), and is retried."""

    def __init__(
        self,
        deliver: Callable[[T], None],
        fill: Callable[[int, int], Awaitable[list[tuple[int, T]]]],
        gap_wait: float = 0.05,
        retry_wait: float = 1.0,
    ) -> None:
        self._deliver = deliver
        self._fill = fill
        self.gap_wait = gap_wait
        self.retry_wait = retry_wait
        self.last = 0  # the newest message id delivered (or known to need no delivery)
        self._held: dict[int, tuple[int, T]] = {}  # by prev_id: (id, item)
        self._gap_since: float | None = None
        self._wakeup = trio.Event()
        self._wanted = 0  # catch up to at least this id
        self.filled = 0  # messages read from the store (for metrics and tests)
        self.gaps = 0
        # Room events outside the chain (edits, deletions, typing, read marks) that came
        # while messages were held: delivered after them, in the order they came, so an
        # edit never reaches a client before the message it edits.
        self._after: list[T] = []

    def start_at(self, last: int) -> None:
        """Nothing up to `last` needs delivering (the store's newest at start)."""
        self.last = max(self.last, last)

    def offer(self, message_id: int, prev_id: int | None, item: T) -> None:
        if message_id <= self.last:
            return  # delivered already (from the store, or a bus duplicate)
        if prev_id is None or prev_id <= self.last:
            self._pass(message_id, item)
            self._drain()
            return
        if len(self._held) >= MAX_HELD:
            self._wanted = max(self._wanted, message_id)
            self._wakeup.set()
            return
        self._held[prev_id] = (message_id, item)
        if len(self._held) == 1:
            self.gaps += 1
            self._wakeup.set()
        elif len(self._held) >= MAX_HELD:
            self._wakeup.set()

    def after(self, item: T) -> None:
        """Deliver `item` (no place in the chain) once what is held now has been; at
        once when nothing is held (or too much waits already: order yields to memory)."""
        if not self._held or len(self._after) >= MAX_HELD:
            self._deliver_safely(item)
        else:
            self._after.append(item)

    def catch_up(self, upto: int) -> None:
        """Everything committed up to `upto` is to be delivered: read what did not come."""
        if upto > self.last:
            self._wanted = max(self._wanted, upto)
            self._wakeup.set()

    @property
    def held(self) -> int:
        return len(self._held)

    def _pass(self, message_id: int, item: T) -> None:
        self.last = message_id
        self._deliver_safely(item)

    def _deliver_safely(self, item: T) -> None:
        try:
            self._deliver(item)
        except Exception:
            log.exception("cluster: delivering a publication failed")

    def _drain(self) -> None:
        moved = False
        while self._held:
            nxt = self._held.pop(self.last, None)
            if nxt is None:
                # Held ones the store already delivered, and those past a gap still open.
                for prev in [p for p, (mid, _) in self._held.items() if mid <= self.last]:
                    del self._held[prev]
                break
            self._pass(*nxt)
            moved = True
        if moved and self._held:
            self._gap_since = trio.current_time()  # a later gap: its own wait
        if not self._held and self._after:
            waiting, self._after = self._after, []
            for item in waiting:
                self._deliver_safely(item)

    async def run(self) -> None:
        """For the node's life: closes gaps and catches up from the store."""
        while True:
            if not self._held and self._wanted <= self.last:
                self._gap_since = None
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            if self._gap_since is None:
                self._gap_since = trio.current_time()
            # The bus usually brings the missing ones within a millisecond or two.
            deadline = self._gap_since + self.gap_wait
            if len(self._held) < MAX_HELD and trio.current_time() < deadline:
                self._wakeup = trio.Event()
                with trio.move_on_at(deadline):
                    await self._wakeup.wait()
                continue
            await self._read_store()
            self._gap_since = None

    async def _read_store(self) -> None:
        upto = self._wanted
        if self._held:
            upto = max(upto, min(self._held))
        try:
            got = await self._fill(self.last, upto)
        except Exception as exc:
            log.warning("cluster: cannot read missed messages from the store yet: %s", exc)
            await trio.sleep(self.retry_wait)
            return
        for message_id, item in got:
            if self.last < message_id <= upto:
                self.filled += 1
                self._pass(message_id, item)
        self.last = max(self.last, upto)
        self._drain()
