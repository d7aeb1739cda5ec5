"""The store's engine: one writer thread with group commit, one reader thread, and `Store`,
the async face that queues each operation of `chatd.store.queries` on them (the schema
and its migrations are `chatd.store.schema`).

Writes started during one turn of the event loop go to the writer thread together;
the thread takes everything waiting (up to `batch_max` operations), runs it in one
transaction, commits, and only then wakes the waiting tasks. So a message is durable
before anyone is told about it, and under load many messages share one commit. When an
operation fails, the batch is run again with each operation in its own SAVEPOINT, so
the failure does not undo its neighbours.

When the store is idle (nothing queued, the thread idle for a few milliseconds), the
event loop commits a few new messages itself: a commit without fsync (WAL,
synchronous=NORMAL) takes tens of microseconds, less than handing it to the thread and
back. Whatever can wait on the disk stays on the thread: checkpoints (the only fsyncs)
always run there, a write lock held by another process is waited for there, and a commit
in the loop that takes longer than `_INLINE_SLOW` sends every write to the thread for
`_INLINE_BACKOFF` seconds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from chatd.model import Outgoing, RoomRow, StoredMessage, utc_iso
from chatd.store import queries, schema
from chatd.store.errors import StoreClosed, StoreError

T = TypeVar("T")

log = logging.getLogger("chatd.store")

# A commit in the event loop slower than this by the store's clock (a disk that blocks)
# sends every write to the thread for the back-off; a checkpoint is handed to the thread
# after this many commits or operations, whichever comes first (SQLite's own, at 1,000
# WAL pages, would fsync in whichever thread commits).
_INLINE_SLOW = 0.010
_INLINE_BACKOFF = 10.0
_CHECKPOINT_COMMITS = 100
_CHECKPOINT_OPS = 1000
_QUICK_OPS = 16  # message appends in one call the loop may commit itself
# The thread must have been idle this long: under load the thread's group commit is
# cheaper per message, and a commit in the loop between its batches halved their size.
_INLINE_IDLE = 0.005
_BUSY_WAIT = 5.0  # how long the thread waits for another process's write lock


# A job's work on the connection, and its hook run in the trio thread after the commit.
_Op = tuple[Callable[[sqlite3.Connection], Any], Callable[[Any], None] | None]


class _Busy(Exception):
    """Another connection (an admin's sqlite3 shell, say) holds the write lock."""


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


class _Job:
    __slots__ = ("fn", "after", "result", "error", "done", "last")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        after: Callable[[Any], None] | None,
        done: trio.Event | None,
    ) -> None:
        self.fn = fn
        self.after = after
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = done
        self.last = True  # the last job of its caller's: its batch sets `done`


class _Worker:
    """A thread that owns one sqlite3 connection and runs jobs from a queue."""

    def __init__(
        self,
        name: str,
        path: Path,
        batch_max: int,
        transactional: bool,
        clock: Callable[[], float],
    ) -> None:
        self.conn = schema.connect(path)
        if transactional:
            self.conn.execute("PRAGMA wal_autocheckpoint=0")  # ours run on the thread
            # The loop must never wait for a lock: `_begin` waits, on the thread only.
            self.conn.execute("PRAGMA busy_timeout=0")
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._pending: list[_Job] = []
        self._batch_max = batch_max
        self._transactional = transactional
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # Read in the trio thread only: whether the store is idle, and how long a commit
        # in the loop took.
        self._clock = clock
        self.on_commit: Callable[[float, int], None] | None = None
        self.hooks_scope: Callable[[], contextlib.AbstractContextManager[None]] = (
            contextlib.nullcontext
        )
        self._closed = False
        self._with_thread = 0  # jobs handed to the thread and not yet back
        self._thread_busy = -math.inf  # when (`clock`) jobs last went to or came back
        # From when (`clock`) an idle store may commit in the event loop.
        self._inline_from = -math.inf if transactional else math.inf
        self._commits_unchecked = 0  # commits and operations since the last checkpoint
        self._ops_unchecked = 0
        self.inline_commits = 0
        # One commit per turn of the loop at most: the writers that come after it in the
        # same turn go to the thread together, so a burst still shares one commit.
        self._inlined = False

    def start(self) -> None:
        self._thread.start()

    async def call(
        self,
        fn: Callable[[sqlite3.Connection], T],
        after: Callable[[T], None] | None = None,
    ) -> T:
        (job,) = await self.call_many([(fn, after)])
        if job.error is not None:
            raise job.error
        return job.result

    async def call_many(
        self,
        ops: list[_Op],
        quick: bool = False,
    ) -> list[_Job]:
        """Queue `ops` in order and wait until all of them ran; each job carries its
        result or error. They share one wake-up: the thread ends them in one batch, or
        in consecutive ones, and sets the event once the last is done. `quick` ops (a
        few small inserts) may instead be committed here when the store is idle."""
        if self._closed:
            raise StoreClosed("store is closed")
        if (
            quick
            and not self._inlined
            and not self._pending
            and not self._with_thread
            and self._clock() >= max(self._inline_from, self._thread_busy + _INLINE_IDLE)
        ):
            return await self._commit_inline(ops)
        return await self._via_thread(ops)

    async def _via_thread(self, ops: list[_Op]) -> list[_Job]:
        done = trio.Event()
        jobs = [_Job(fn, after, done) for fn, after in ops]
        for job in jobs[:-1]:
            job.last = False
        # Held until the event loop is about to wait for I/O (`_HandOver`), then handed
        # to the thread with every other job of this turn as one batch. Handing them
        # over one by one let the thread wake, take the GIL at the loop's next system
        # call and commit batches of about two: half the store's CPU went to per-commit
        # cost.
        self._pending.extend(jobs)
        await done.wait()
        return jobs

    async def _commit_inline(self, ops: list[_Op]) -> list[_Job]:
        """Run and commit `ops` here, then their hooks; the thread is idle, so the
        connection is ours. Like any call, a trio checkpoint, which can cancel it only
        before the commit. Another process holding the write lock sends them to the
        thread, which waits for it."""
        await trio.lowlevel.checkpoint_if_cancelled()
        jobs = [_Job(fn, after, None) for fn, after in ops]
        started = self._clock()
        try:
            self._run_batch(jobs, wait=False)
        except _Busy:
            return await self._via_thread(ops)
        now = self._clock()
        took = now - started
        self.inline_commits += 1
        self._inlined = True
        if took > _INLINE_SLOW:
            self._inline_from = now + _INLINE_BACKOFF
            log.warning(
                "store: a commit took %.1f ms; committing on the writer thread for %g s",
                took * 1000,
                _INLINE_BACKOFF,
            )
        self._committed(len(jobs))
        self._run_hooks(jobs)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return jobs

    def _committed(self, ops: int) -> None:
        self._commits_unchecked += 1
        self._ops_unchecked += ops
        if self._commits_unchecked >= _CHECKPOINT_COMMITS or self._ops_unchecked >= _CHECKPOINT_OPS:
            self._commits_unchecked = self._ops_unchecked = 0
            job = _Job(_checkpoint, None, None)
            job.last = False
            self._pending.append(job)

    def _flush(self) -> None:
        self._inlined = False
        if self._pending:
            self._thread_busy = self._clock()
            self._with_thread += len(self._pending)
            self._queue.put(self._pending)
            self._pending = []

    def stop(self) -> None:
        self._closed = True
        self._flush()
        self._queue.put(None)

    def join(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = first
            while len(batch) < self._batch_max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch = batch + nxt
            work = [job for job in batch if job.fn is not _checkpoint]
            if not self._transactional:
                for job in work:
                    self._run_one(job)
            elif work:
                self._run_batch(work)
            if len(work) < len(batch):
                # Outside any transaction; a failure leaves the WAL for the next one.
                try:
                    _checkpoint(self.conn)
                except sqlite3.Error as exc:
                    log.warning("store: checkpoint failed: %s", exc)
            self._wake(batch)
        self.conn.close()

    def _run_one(self, job: _Job) -> None:
        try:
            job.result = job.fn(self.conn)
        except Exception as exc:  # handed back to the awaiting task
            job.error = exc

    def _run_batch(self, batch: list[_Job], wait: bool = True) -> None:
        started = time.perf_counter()
        # The fast path runs the whole batch in one transaction without savepoints (two
        # extra statements a job). Only when a job fails is the batch rolled back and run
        # again, each job in its own savepoint, so the failure undoes that job alone.
        if not self._transaction(batch, savepoints=False, wait=wait):
            for job in batch:
                job.result, job.error = None, None
            self._transaction(batch, savepoints=True, wait=wait)
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started, len(batch))

    def _begin(self, wait: bool) -> None:
        deadline = time.monotonic() + _BUSY_WAIT
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                if not wait:
                    raise _Busy() from None
            time.sleep(0.002)

    def _transaction(self, batch: list[_Job], savepoints: bool, wait: bool) -> bool:
        """Run and commit `batch`; False (rolled back) when a job failed and savepoints
        were off. Raises `_Busy` (nothing run) when the lock is taken and not `wait`."""
        conn = self.conn
        try:
            self._begin(wait)
            for job in batch:
                if savepoints:
                    conn.execute("SAVEPOINT job")
                self._run_one(job)
                if job.error is not None:
                    if not savepoints:
                        conn.execute("ROLLBACK")
                        return False
                    conn.execute("ROLLBACK TO job")
                if savepoints:
                    conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except _Busy:
            raise
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            for job in batch:
                job.result, job.error = None, StoreError(f"commit failed: {exc}")
        return True

    def _run_hooks(self, batch: list[_Job]) -> None:
        # In the trio thread in commit order, before any waiting task resumes, so
        # whatever the hooks publish goes out in commit order (trio resumes the woken
        # tasks themselves in no promised order).
        with self.hooks_scope():
            for job in batch:
                if job.after is not None and job.error is None:
                    try:
                        job.after(job.result)
                    except Exception:
                        log.exception("store: commit hook failed")

    def _wake(self, batch: list[_Job]) -> None:
        def wake() -> None:
            self._with_thread -= len(batch)
            self._thread_busy = self._clock()
            ops = sum(job.fn is not _checkpoint for job in batch)
            if self._transactional and ops:
                self._committed(ops)
            self._run_hooks(batch)
            # A caller's jobs may span this batch and the next: only the batch holding
            # the last of them wakes it (the thread works in order, so the rest are done).
            for job in batch:
                if job.last and job.done is not None:
                    job.done.set()

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(wake)


def _append_op(
    new: Outgoing,
    user_id: int,
    username: str,
    profile_image: str | None,
    now: float,
    created_at: str,
    idempotency_window: float,
) -> Callable[[sqlite3.Connection], tuple[StoredMessage, bool]]:
    def op(conn: sqlite3.Connection) -> tuple[StoredMessage, bool]:
        return queries.append_message(
            conn, new, user_id, username, profile_image, now, created_at, idempotency_window
        )

    return op


class _HandOver(trio.abc.Instrument):
    """Hands each worker the jobs queued during a turn of the event loop, once the turn
    is over: just before the loop waits for I/O. Waiting for the turn's end in the first
    caller's task instead cost every write one more scheduling pass of the loop."""

    def __init__(self, workers: Sequence[_Worker]) -> None:
        self._workers = workers

    def before_io_wait(self, timeout: float) -> None:
        for worker in self._workers:
            worker._flush()


class Store:
    """The async face of the database. Open it with `Store.open(path)` inside trio."""

    def __init__(
        self, path: Path, batch_max: int = 512, clock: Callable[[], float] = trio.current_time
    ) -> None:
        """`clock` times the event loop's own commits and the thread's idleness; tests
        give it a fake one, so that a busy machine cannot make a commit slow."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not schema.create_private(path):
            mode = os.stat(path).st_mode & 0o777
            if mode & 0o077:
                log.warning(
                    "store: %s is readable by other users (mode %04o); chmod 600 it (its"
                    " -wal and -shm files take its mode)",
                    path,
                    mode,
                )
        boot = schema.connect(path)
        try:
            schema.migrate(boot)
        finally:
            boot.close()
        self._writer = _Worker("chatd-store-writer", path, batch_max, True, clock)
        self._reader = _Worker("chatd-store-reader", path, 64, False, clock)
        self._writer.start()
        self._reader.start()
        self._hand_over = _HandOver((self._writer, self._reader))
        trio.lowlevel.add_instrument(self._hand_over)

    def set_commit_observer(self, fn: Callable[[float, int], None]) -> None:
        self._writer.on_commit = fn

    def set_hooks_scope(self, scope: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        """A context the commit hooks of one batch run in together (the server corks the
        connections there, so a batch's fan-out is one write per connection)."""
        self._writer.hooks_scope = scope

    async def aclose(self) -> None:
        """Finish every queued write, then close both connections."""
        self._writer.stop()
        self._reader.stop()
        trio.lowlevel.remove_instrument(self._hand_over)
        await trio.to_thread.run_sync(self._writer.join)
        await trio.to_thread.run_sync(self._reader.join)

    @property
    def inline_commits(self) -> int:
        """Commits the event loop ran itself (the store was idle), not the thread."""
        return self._writer.inline_commits

    async def write(
        self, fn: Callable[[sqlite3.Connection], T], after: Callable[[T], None] | None = None
    ) -> T:
        """Run `fn` in the writer thread; `after(result)` runs in the trio thread right
        after the commit, in commit order."""
        return await self._writer.call(fn, after)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._reader.call(fn)

    # --- rooms -----------------------------------------------------------------

    def load_rooms_sync(self) -> list[RoomRow]:
        conn = schema.connect(self.path)
        try:
            return queries.load_rooms(conn)
        finally:
            conn.close()

    async def create_room(self, name: str, public: bool, members: Iterable[int]) -> int:
        now = utc_iso(time.time())
        member_list = sorted(set(members))
        return await self.write(
            lambda conn: queries.create_room(conn, name, public, member_list, now)
        )

    async def add_member(self, room_id: int, user_id: int) -> bool:
        now = utc_iso(time.time())
        return await self.write(lambda conn: queries.add_member(conn, room_id, user_id, now))

    async def remove_member(self, room_id: int, user_id: int) -> bool:
        return await self.write(lambda conn: queries.remove_member(conn, room_id, user_id))

    def load_revocations_sync(self) -> dict[int, float]:
        conn = schema.connect(self.path)
        try:
            return queries.load_revocations(conn)
        finally:
            conn.close()

    async def revoke_logins(self, user_id: int, at: float) -> None:
        await self.write(lambda conn: queries.revoke_logins(conn, user_id, at))

    async def add_invite(self, room_id: int, user_id: int) -> None:
        await self.write(lambda conn: queries.add_invite(conn, room_id, user_id))

    # --- messages --------------------------------------------------------------

    async def append_message(
        self,
        *,
        room_id: int,
        user_id: int,
        username: str,
        profile_image: str | None,
        content: str,
        message_type: str,
        client_timestamp: str | None,
        client_message_id: str | None,
        idempotency_window: float,
        on_commit: Callable[[tuple[StoredMessage, bool]], None] | None = None,
    ) -> tuple[StoredMessage, bool]:
        """Store a message; returns (message, created). With a client message id seen
        from this user within the window, returns the earlier message and False."""
        new = Outgoing(room_id, content, message_type, client_timestamp, client_message_id)
        (result,) = await self.append_messages(
            user_id, username, profile_image, [new], idempotency_window,
            None if on_commit is None else (lambda _new, result: on_commit(result)),
        )  # fmt: skip
        if isinstance(result, BaseException):
            raise result
        return result

    async def append_messages(
        self,
        user_id: int,
        username: str,
        profile_image: str | None,
        messages: Sequence[Outgoing],
        idempotency_window: float,
        on_commit: Callable[[Outgoing, tuple[StoredMessage, bool]], None] | None = None,
    ) -> list[tuple[StoredMessage, bool] | BaseException]:
        """Store one sender's messages in order, each as its own operation (one failing
        leaves the others stored), waiting once for all of them. Returns, per message,
        (message, created) or the error that stopped it."""
        now = time.time()
        created_at = utc_iso(now)
        ops: list[_Op] = []
        for new in messages:
            op = _append_op(
                new, user_id, username, profile_image, now, created_at, idempotency_window
            )
            after = None if on_commit is None else functools.partial(on_commit, new)
            ops.append((op, after))
        jobs = await self._writer.call_many(ops, quick=len(ops) <= _QUICK_OPS)
        return [job.result if job.error is None else job.error for job in jobs]

    async def history(self, room_id: int, before: int | None, limit: int) -> list[StoredMessage]:
        """Newest first."""
        return await self.read(lambda conn: queries.history(conn, room_id, before, limit))

    async def messages_since(
        self, room_ids: Iterable[int], since: int, limit: int
    ) -> list[StoredMessage]:
        """Oldest first, across the given rooms."""
        ids = sorted(set(room_ids))
        if not ids:
            return []
        return await self.read(lambda conn: queries.messages_since(conn, ids, since, limit))

    async def last_message_id(self) -> int:
        """The newest message id, 0 when there is none."""
        return await self.read(queries.last_message_id)

    async def get_message(self, message_id: int) -> StoredMessage | None:
        return await self.read(lambda conn: queries.get_message(conn, message_id))

    async def mark_read(self, room_id: int, user_id: int, message_id: int) -> str:
        read_at = utc_iso(time.time())
        return await self.write(
            lambda conn: queries.mark_read(conn, room_id, user_id, message_id, read_at)
        )
