"""The store's operations, once for both engines.

Each operation is a function of a `queries` module (SQLite's `chatd.store.queries`,
PostgreSQL's `chatd.store.postgres.queries`: the same names and arguments, each in its
own SQL) run by the engine's `read` or `write`. The engines differ in how they run a
function (threads, group commit, reconnecting) and in how they load what the server reads
once at start; what an operation is, and the arguments it takes, is said here.
"""

from __future__ import annotations

import functools
import logging
import math
import queue
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import trio

from chatd.model import RoomRow, StoredMessage, utc_iso
from chatd.ops.logs import RateLimitedLog
from chatd.store.errors import StoreError, StoreUnavailable

T = TypeVar("T")

# /readyz: within this many seconds of the last write, its outcome answers; a probe write
# that does not commit within the timeout says so.
PROBE_EVERY = 1.0
PROBE_TIMEOUT = 2.0


log = logging.getLogger("chatd.store")

# While operations are refused, one warning this often says why.
LOG_EVERY = 60.0


def next_batch(jobs: queue.SimpleQueue[Any], batch_max: int) -> tuple[list[Any] | None, bool]:
    """In a worker thread: the next batch of queued jobs (each queue item a list of them),
    up to `batch_max`, waiting for the first; and whether the stop (a None item) came.
    (None, True) when the stop came first."""
    first = jobs.get()
    if first is None:
        return None, True
    batch: list[Any] = first
    while len(batch) < batch_max:
        try:
            more = jobs.get_nowait()
        except queue.Empty:
            break
        if more is None:
            return batch, True
        batch = batch + more
    return batch, False


class Availability:
    """In the trio thread: whether a worker's last batch could be done, for /readyz and
    the log. While operations fail for the machine's reasons (StoreUnavailable), one
    warning an interval says why; the first success after them says how many failed."""

    def __init__(self, kind: str, clock: Callable[[], float]) -> None:
        self.kind = kind  # "writes" or "reads"
        self._clock = clock
        self.unavailable: str | None = None  # why the last batch could not be done
        self.outcome_at = -math.inf  # when (`clock`) that was learnt
        self._failed_ops = 0
        self._failure_log = RateLimitedLog(log, LOG_EVERY, clock)

    def record(self, errors: Iterable[BaseException | None]) -> None:
        failed = [e for e in errors if isinstance(e, StoreUnavailable)]
        self.outcome_at = self._clock()
        if not failed:
            if self.unavailable is not None:
                self._failure_log.reset()
                log.warning(
                    "store: %s succeed again, after %d refused", self.kind, self._failed_ops
                )
                self.unavailable = None
                self._failed_ops = 0
            return
        self.unavailable = failed[0].reason
        self._failed_ops += len(failed)
        self._failure_log.warning(
            "store: %s refused (answered store_unavailable): %s", self.kind, self.unavailable
        )


class Operations:
    """What the service asks of a store. A subclass sets `_queries`, `_writer` (a worker
    with an `availability`), `_clock`, and implements `read`, `write` and `_load_sync`."""

    _queries: Any
    _writer: Any
    _clock: Callable[[], float]

    async def write(self, fn: Callable[[Any], T], after: Callable[[T], None] | None = None) -> T:
        raise NotImplementedError

    async def read(self, fn: Callable[[Any], T]) -> T:
        raise NotImplementedError

    def _load_sync(self, fn: Callable[[Any], T]) -> T:
        """`fn` on a connection of its own, before the event loop needs the store."""
        raise NotImplementedError

    async def writable(self) -> str | None:
        """None when the store can commit a write now, else why not (for /readyz). Proven
        by committing the health row, at most once per `PROBE_EVERY` seconds: within
        that, the outcome of the last write anyone made answers, so a probe every second
        under load costs no commit at all."""
        known: Availability = self._writer.availability
        if self._clock() - known.outcome_at < PROBE_EVERY:
            return known.unavailable
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await self.write(functools.partial(self._queries.touch_health, at=time.time()))
            except StoreUnavailable as exc:
                return exc.reason
            except StoreError as exc:  # closed, or a commit that failed otherwise
                return str(exc)
            return None
        return f"no write was committed within {PROBE_TIMEOUT:g} s"

    # --- rooms -----------------------------------------------------------------------

    def load_rooms_sync(self) -> list[RoomRow]:
        return self._load_sync(self._queries.load_rooms)

    async def rooms(self) -> list[RoomRow]:
        return await self.read(self._queries.load_rooms)

    async def create_room(self, name: str, public: bool, members: Iterable[int]) -> int:
        now = utc_iso(time.time())
        member_list = sorted(set(members))
        q = self._queries
        return await self.write(lambda conn: q.create_room(conn, name, public, member_list, now))

    async def add_member(self, room_id: int, user_id: int) -> bool:
        now = utc_iso(time.time())
        q = self._queries
        return await self.write(lambda conn: q.add_member(conn, room_id, user_id, now))

    async def remove_member(self, room_id: int, user_id: int) -> bool:
        q = self._queries
        return await self.write(lambda conn: q.remove_member(conn, room_id, user_id))

    async def update_room(self, room_id: int, name: str | None, public: bool | None) -> None:
        q = self._queries
        await self.write(lambda conn: q.update_room(conn, room_id, name, public))

    async def delete_room(self, room_id: int) -> int:
        q = self._queries
        return await self.write(lambda conn: q.delete_room(conn, room_id))

    async def add_invite(self, room_id: int, user_id: int) -> None:
        q = self._queries
        await self.write(lambda conn: q.add_invite(conn, room_id, user_id))

    def load_revocations_sync(self) -> dict[int, tuple[float | None, float | None]]:
        return self._load_sync(self._queries.load_revocations)

    async def revoke_logins(self, user_id: int, at: float) -> None:
        q = self._queries
        await self.write(lambda conn: q.revoke_logins(conn, user_id, at))

    async def revoke_tokens(self, user_id: int, at: float) -> None:
        q = self._queries
        await self.write(lambda conn: q.revoke_tokens(conn, user_id, at))

    # --- messages --------------------------------------------------------------------

    async def history(self, room_id: int, before: int | None, limit: int) -> list[StoredMessage]:
        """Newest first."""
        q = self._queries
        return await self.read(lambda conn: q.history(conn, room_id, before, limit))

    async def messages_since(
        self, room_ids: Iterable[int], since: int, limit: int
    ) -> list[StoredMessage]:
        """Oldest first, across the given rooms."""
        ids = sorted(set(room_ids))
        if not ids:
            return []
        q = self._queries
        return await self.read(lambda conn: q.messages_since(conn, ids, since, limit))

    async def last_message_id(self) -> int:
        """The newest message id, 0 when there is none."""
        return await self.read(self._queries.last_message_id)

    async def get_message(self, message_id: int) -> StoredMessage | None:
        q = self._queries
        return await self.read(lambda conn: q.get_message(conn, message_id))

    async def change_message(
        self, room_id: int, message_id: int, user_id: int | None, content: str | None
    ) -> tuple[str, StoredMessage | None]:
        """Edit (`content`) or delete (None); see the queries' change_message."""
        now = utc_iso(time.time())
        q = self._queries
        return await self.write(
            lambda conn: q.change_message(conn, room_id, message_id, user_id, content, now)
        )

    async def room_summaries(
        self, user_id: int, room_ids: Sequence[int]
    ) -> dict[int, tuple[int, StoredMessage | None]]:
        ids = list(room_ids)
        if not ids:
            return {}
        q = self._queries
        return await self.read(lambda conn: q.room_summaries(conn, user_id, ids))

    async def mark_read(self, room_id: int, user_id: int, message_id: int) -> str:
        read_at = utc_iso(time.time())
        q = self._queries
        return await self.write(
            lambda conn: q.mark_read(conn, room_id, user_id, message_id, read_at)
        )
