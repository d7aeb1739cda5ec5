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
`_INLINE_BACKOFF` seconds. With `[store] durability = "full"` every commit fsyncs the WAL
(synchronous=FULL), so none is ever made in the loop.

An operational failure of the database (disk full, a read-only file, an I/O error) fails
the whole batch with `StoreUnavailable`, which every protocol answers as a documented
refusal; it is logged once an interval, not once a request. When checkpoints cannot finish
(a reader holding an old snapshot, an I/O error) the WAL grows with every commit: past
`max_wal_bytes` writes are refused until a checkpoint succeeds, before the disk fills.
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import trio

from chatd.model import Outgoing, StoredMessage, utc_iso
from chatd.ops.logs import RateLimitedLog
from chatd.store import queries, schema
from chatd.store.errors import StoreClosed, StoreError, StoreUnavailable, unavailable
from chatd.store.operations import LOG_EVERY, Availability, Operations, next_batch

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
# /readyz proves a write at most this often (store clock); in between, the outcome of the
# last write anyone made answers. It gives up on a writer that has not answered in time.
# A failure that recurs (refused writes, failing checkpoints) is logged once this often.
_LOG_EVERY = LOG_EVERY
_MiB = 1024 * 1024


# A job's work on the connection, and its hook run in the trio thread after the commit.
_Op = tuple[Callable[[sqlite3.Connection], Any], Callable[[Any], None] | None]


class _Busy(Exception):
    """Another connection (an admin's sqlite3 shell, say) holds the write lock."""


def _checkpoint(conn: sqlite3.Connection) -> tuple[int, int, int] | None:
    """(busy, frames in the WAL, frames of it now in the database)."""
    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


class _Job:
    __slots__ = ("fn", "after", "result", "error", "done", "last", "checkpoint")

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
        self.checkpoint = False  # a request for a checkpoint after the batch, not work


class _Worker:
    """A thread that owns one sqlite3 connection and runs jobs from a queue."""

    def __init__(
        self,
        name: str,
        path: Path,
        batch_max: int,
        transactional: bool,
        clock: Callable[[], float],
        durability: str = "normal",
        max_wal_bytes: int = 0,
    ) -> None:
        self.conn = schema.connect(path, durability)
        self.kind = "writes" if transactional else "reads"
        self._wal_path = f"{path}-wal"
        self._max_wal_bytes = max_wal_bytes  # 0: no bound
        (page_size,) = self.conn.execute("PRAGMA page_size").fetchone()
        self._frame_bytes = int(page_size) + 24  # a WAL frame: its header and one page
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
        # From when (`clock`) an idle store may commit in the event loop: never when each
        # commit fsyncs, which must not block the loop.
        self._inline_from = -math.inf if transactional and durability == "normal" else math.inf
        self._commits_unchecked = 0  # commits and operations since the last checkpoint
        self._ops_unchecked = 0
        self.inline_commits = 0
        # One commit per turn of the loop at most: the writers that come after it in the
        # same turn go to the thread together, so a burst still shares one commit.
        self._inlined = False
        # Set by the thread only: why writes are refused (the WAL is past its bound and
        # cannot be checkpointed), None when they are not.
        self.refusing: str | None = None
        # In the trio thread: whether the last batch could be done, and since when.
        self.availability = Availability(self.kind, clock)
        self._checkpoint_log = RateLimitedLog(log, _LOG_EVERY, clock)

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
            and self.refusing is None
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
        self.availability.record(job.error for job in jobs)
        self.inline_commits += 1
        self._inlined = True
        if took > _INLINE_SLOW:
            self._inline_from = now + _INLINE_BACKOFF
            # Debug: the store tuning itself, nothing for an operator to do.
            log.debug(
                "store: a commit took %.1f ms; committing on the writer thread for %g s",
                took * 1000,
                _INLINE_BACKOFF,
            )
        self._committed(jobs)
        self._run_hooks(jobs)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return jobs

    def _committed(self, jobs: Sequence[_Job]) -> None:
        ops = sum(not isinstance(job.error, StoreUnavailable) for job in jobs)
        if not ops:  # refused: nothing reached the WAL
            return
        self._commits_unchecked += 1
        self._ops_unchecked += ops
        if self._commits_unchecked >= _CHECKPOINT_COMMITS or self._ops_unchecked >= _CHECKPOINT_OPS:
            self._commits_unchecked = self._ops_unchecked = 0
            job = _Job(_checkpoint, None, None)
            job.last = False
            job.checkpoint = True
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
            got, stopping = next_batch(self._queue, self._batch_max)
            if got is None:
                break
            batch: list[_Job] = got
            work = [job for job in batch if not job.checkpoint]
            checkpoint = len(work) < len(batch)
            problem = None
            if self.refusing is not None:
                # Only a checkpoint that finishes lifts the refusal: one is tried before
                # each batch (cheap when there is nothing it may copy yet).
                problem = self._try_checkpoint()
                checkpoint = False
            if not self._transactional:
                for job in work:
                    self._run_one(job)
            elif work and self.refusing is not None:
                for job in work:
                    job.error = StoreUnavailable(self.refusing)
            elif work:
                self._run_batch(work)
            if checkpoint:
                problem = self._try_checkpoint()
            self._wake(batch, problem)
        self.conn.close()

    def _try_checkpoint(self) -> str | None:
        """Checkpoint, outside any transaction; returns what went wrong, for the log. Past
        `max_wal_bytes`, writes are refused until a checkpoint gets every frame of the WAL
        into the database (the next commit then starts the WAL over): a reader holding an
        old snapshot, or a failing disk, would otherwise grow it until the disk is full."""
        try:
            row = _checkpoint(self.conn)
        except sqlite3.Error as exc:
            wal = _file_size(self._wal_path)  # at least what is in use
            problem = f"a checkpoint failed ({exc}); the WAL file is {wal / _MiB:.1f} MiB"
        else:
            if row is None or row[1] <= row[2]:
                self.refusing = None
                return None
            wal = row[1] * self._frame_bytes
            if wal <= self._max_wal_bytes // 2 or not self._max_wal_bytes:
                # A reader in the middle of a query holds a checkpoint back for a moment;
                # worth a line only once the WAL has grown.
                self.refusing = None
                return None
            problem = (
                f"a checkpoint cannot finish (a reader holds an old snapshot); the WAL holds"
                f" {wal / _MiB:.1f} MiB"
            )
        if self._max_wal_bytes and wal > self._max_wal_bytes:
            self.refusing = f"{problem}, over [store] max_wal_bytes ({self._max_wal_bytes} bytes)"
            return self.refusing
        self.refusing = None
        return problem

    def _run_one(self, job: _Job) -> None:
        try:
            job.result = job.fn(self.conn)
        except Exception as exc:  # handed back to the awaiting task
            job.error = unavailable(exc) or exc

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
                if isinstance(job.error, StoreUnavailable):
                    # The disk, not the job: nothing of the batch can be committed (and
                    # SQLite may have rolled the transaction back already).
                    raise job.error
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
            failure = unavailable(exc)
            for job in batch:
                job.result = None
                if failure is not None:
                    job.error = StoreUnavailable(failure.reason)
                    job.error.__cause__ = failure.__cause__
                else:
                    job.error = StoreError(f"commit failed: {exc}")
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

    def _wake(self, batch: list[_Job], checkpoint_problem: str | None = None) -> None:
        def wake() -> None:
            self._with_thread -= len(batch)
            self._thread_busy = self._clock()
            if checkpoint_problem is not None:
                self._checkpoint_log.warning("store: %s", checkpoint_problem)
            work = [job for job in batch if not job.checkpoint]
            if self._transactional and work:
                self._committed(work)
            if work:
                self.availability.record(job.error for job in work)
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


class Store(Operations):
    """The async face of the database. Open it with `Store.open(path)` inside trio. Its
    operations are chatd.store.operations' over this module's SQL (`queries`)."""

    _queries = queries

    def __init__(
        self,
        path: Path,
        batch_max: int = 512,
        clock: Callable[[], float] = trio.current_time,
        *,
        durability: str = "normal",
        max_wal_bytes: int = 1 << 30,
    ) -> None:
        """`clock` times the event loop's own commits and the thread's idleness, and
        spaces readiness probes and repeated log lines; tests give it a fake one, so that
        a busy machine cannot make a commit slow. `durability` and `max_wal_bytes` are
        the `[store]` keys of the same names."""
        self.path = path
        self._clock = clock
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
        boot = schema.connect(path, durability)
        try:
            schema.migrate(boot)
        finally:
            boot.close()
        self._writer = _Worker(
            "chatd-store-writer", path, batch_max, True, clock, durability, max_wal_bytes
        )
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

    def _load_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = schema.connect(self.path)
        try:
            return fn(conn)
        finally:
            conn.close()

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

