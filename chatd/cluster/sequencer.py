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

The bus is trusted but not believed blindly: a frame with the cluster's mark may still
lie (a bug, or anyone on the vhost who read the mark), and one claimed id far ahead, taken
as delivered, would make every real message look delivered already. So `last` moves past
what the store confirms only for a message that chains exactly (`prev_id == last`, the
one fast path: a comparison); anything else is held or read from the store, and a read
never goes past the store's newest id (>= every committed id: a node publishes after its
commit): a claim beyond it is not committed, and is dropped with a warning. The exact
chain itself is checked when the node is idle (every `check_wait`, and soon after a
message the store never confirmed is dropped as delivered already): `last` above the
store's newest is brought back to it.

The same check finds a message committed but never published: its node died between the
commit and its hooks, or the commit was answered as failed (the connection cut during
COMMIT) though it was applied. No message chains behind it until the room's next one, so
no gap shows; but the store's newest at one check, not delivered by the next with
nothing delivered in between, is read from the store, within two `check_wait`. (Not at
the first: most such ids are on the bus at that moment; nor while `last` moves: a bus
running behind is bringing them.)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

from chatd.ops.logs import RateLimitedLog

log = logging.getLogger("chatd.cluster")

T = TypeVar("T")

# Ids read from the store in one turn, at most: after a long time off the bus a node reads
# what it missed a slice at a time, never all of it into memory at once and to its
# clients in one go, with the event loop free between slices.
FILL_IDS = 1000
# Held messages up to this many; at the bound, fill from the store at once rather than
# wait longer, and a message that finds it full is not kept but read from the store later
# (it is committed), so a gap the store cannot close yet (the store away) holds no more.
MAX_HELD = 10_000


class Sequencer(Generic[T]):
    """`deliver(item)` in id order. `fill(after, upto)` returns the committed messages
    with `after < id <= upto` that this node must deliver, oldest first, as
    (id, item) pairs; `newest()` the store's newest committed id (or above: never below
    a committed one); both may raise (the store away), and are retried. `source(item)`
    names who sent an item, for the warning about a claim the store does not back."""

    def __init__(
        self,
        deliver: Callable[[T], None],
        fill: Callable[[int, int], Awaitable[list[tuple[int, T]]]],
        newest: Callable[[], Awaitable[int]],
        gap_wait: float = 0.05,
        retry_wait: float = 1.0,
        check_wait: float = 2.0,
        source: Callable[[T], str] = lambda item: "",
    ) -> None:
        self._deliver = deliver
        self._fill = fill
        self._newest = newest
        self._source = source
        self.gap_wait = gap_wait
        self.retry_wait = retry_wait
        self.check_wait = check_wait
        self.last = 0  # the newest message id delivered (or known to need no delivery)
        # Up to here the store confirmed `last`: a message at or below it that comes again
        # is a duplicate; one above it that looks delivered may be a real one that a
        # forged id made `last` jump over.
        self._confirmed = 0
        self._checked_at = 0.0
        self._check_soon = False
        self._behind = 0  # the store's newest at the last check, when past `last`
        self._last_at_check = 0  # and `last` then
        self._held: dict[int, tuple[int, T]] = {}  # by prev_id: (id, item)
        self._gap_since: float | None = None
        self._wakeup = trio.Event()
        self._wanted = 0  # catch up to at least this id
        self._wanted_by = ""  # who claimed it was committed
        self.filled = 0  # messages read from the store (for metrics and tests)
        self.gaps = 0
        self.refuted = 0  # claims the store did not back (for tests)
        self._refuted_log = RateLimitedLog(log, 60.0, trio.current_time)
        # Room events outside the chain (edits, deletions, typing, read marks) that came
        # while messages were held: delivered after them, in the order they came, so an
        # edit never reaches a client before the message it edits.
        self._after: list[T] = []

    def start_at(self, last: int) -> None:
        """Nothing up to `last` needs delivering (the store's newest at start)."""
        self.last = max(self.last, last)
        self._confirmed = max(self._confirmed, last)

    def offer(self, message_id: int, prev_id: int, item: T) -> None:
        if message_id <= self.last:
            # Delivered already (from the store, or a bus duplicate); duplicates come only
            # of what the store gave, so one past `_confirmed` says `last` may be a lie.
            if message_id > self._confirmed and not self._check_soon:
                self._check_soon = True
                self._wakeup.set()
            return
        if prev_id == self.last:
            self._pass(message_id, item)
            self._drain()
            return
        if prev_id < self.last or len(self._held) >= MAX_HELD:
            # Before `last`: no committed message chains so (`last` is a committed id, and
            # the one committed after it names it), so this one is read from the store,
            # which has it if it was committed. At the bound: read later, in order.
            self._want(message_id, item)
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

    def catch_up(self, upto: int, source: str = "") -> None:
        """Everything committed up to `upto` is to be delivered: read what did not come.
        `source` says who claims `upto` is committed (a node's heartbeat)."""
        if upto > self.last and upto > self._wanted:
            self._wanted, self._wanted_by = upto, source
            self._wakeup.set()

    @property
    def held(self) -> int:
        return len(self._held)

    def _want(self, message_id: int, item: T) -> None:
        self.catch_up(message_id, self._source(item))

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
                # Held ones the store already delivered, and those past a gap still open;
                # one whose predecessor is behind `last` but which is not can only be read
                # from the store (see `offer`).
                for prev in [p for p in self._held if p < self.last]:
                    message_id, item = self._held.pop(prev)
                    if message_id > self.last:
                        self._want(message_id, item)
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
        self._checked_at = trio.current_time()
        more = False  # the last read stopped at FILL_IDS: the next follows at once
        while True:
            if not self._held and self._wanted <= self.last:
                more = False
                self._gap_since = None
                # Spaced by gap_wait at least, however many messages a liar sends.
                wait = self.gap_wait if self._check_soon else self.check_wait
                if trio.current_time() < self._checked_at + wait:
                    self._wakeup = trio.Event()
                    with trio.move_on_at(self._checked_at + wait):
                        await self._wakeup.wait()
                    continue
                await self._check()
                continue
            if self._gap_since is None:
                self._gap_since = trio.current_time()
            # The bus usually brings the missing ones within a millisecond or two.
            deadline = self._gap_since + self.gap_wait
            if not more and len(self._held) < MAX_HELD and trio.current_time() < deadline:
                self._wakeup = trio.Event()
                with trio.move_on_at(deadline):
                    await self._wakeup.wait()
                continue
            more = await self._read_store()
            self._gap_since = None

    async def _read_store(self) -> bool:
        """Reads what is missing, FILL_IDS ids at most; True when there is more to read."""
        # What the bus claimed before the store is asked: the store's newest then covers
        # every one of them that was committed (a node publishes after its commit).
        claims = list(self._held.items())
        wanted, wanted_by = self._wanted, self._wanted_by
        upto = max(wanted, min(self._held)) if self._held else wanted
        try:
            newest = await self._newest()
            upto = min(upto, newest)
            more = upto > self.last + FILL_IDS
            if more:
                upto = self.last + FILL_IDS
            got = await self._fill(self.last, upto) if upto > self.last else []
        except Exception as exc:
            log.warning("cluster: cannot read missed messages from the store yet: %s", exc)
            await trio.sleep(self.retry_wait)
            return False
        for message_id, item in got:
            if self.last < message_id <= upto:
                self.filled += 1
                self._pass(message_id, item)
        self.last = max(self.last, upto)
        self._confirmed = max(self._confirmed, upto)
        # Claims beyond the store's newest are not committed: dropped, not waited for
        # (they never would be, and each wait would read the store again).
        if self._wanted == wanted and not more:
            self._wanted = 0  # reached, or beyond the store
        if wanted > newest and not more:
            self._refuted(wanted, wanted_by, newest)
        for prev, entry in claims:
            if entry[0] > newest and self._held.get(prev) is entry:
                del self._held[prev]
                self._refuted(entry[0], self._source(entry[1]), newest)
        self._drain()
        return more

    async def _check(self) -> None:
        """`last` against the store, when idle: a message that chained exactly but was
        never committed passed at once (the fast path reads nothing); here `last` comes
        back to the store's newest, and real messages pass again. (Those dropped in the
        meantime as delivered already are not read again: which of them were delivered
        before the lie is not known, and the sequencer delivers nothing twice.)"""
        seen = self.last
        self._checked_at, self._check_soon = trio.current_time(), False
        try:
            newest = await self._newest()
        except Exception:
            return  # the store away: the next check
        if seen <= newest:
            self._confirmed = max(self._confirmed, seen)
            if self.last < self._behind and self.last == self._last_at_check:
                # Nothing delivered since: no message came after it either (the next
                # one, in any room, would chain to it and show the gap). While `last`
                # moves, a bus running behind is bringing them, and the store is not read.
                self.catch_up(self._behind, "the store")
            self._behind = newest if newest > self.last else 0
            self._last_at_check = self.last
        elif seen == self.last and not self._held:
            self._refuted_log.warning(
                "cluster: the last message delivered here, %d, is past the store's newest"
                " %d (a message on the bus that was never committed?); going back to it",
                seen,
                newest,
            )
            self.refuted += 1
            self.last = self._confirmed = newest

    def _refuted(self, message_id: int, source: str, newest: int) -> None:
        self.refuted += 1
        self._refuted_log.warning(
            "cluster: %s claims message %d is committed, but the store's newest is %d;"
            " ignored (a node of another version, or with a bug: frames are signed)",
            source or "a node on the bus",
            message_id,
            newest,
        )
