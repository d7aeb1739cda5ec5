"""The PostgreSQL store's engine: `PgStore`, the async face of `chatd.store.api.StoreAPI`
over a writer and a reader thread, each with its own psycopg connection (psycopg's async
API needs asyncio; chatd runs on trio, whose event loop must never wait on the network).

Group commit, as SQLite's engine does: the writer thread takes every write queued while
it was busy (up to `batch_max` operations) and runs them in one transaction, so under
load many messages share one commit. The batch goes out in psycopg's pipeline mode: the
lock on message_clock and the messages' statements are sent together and their results
read after one sync, which commits them, so a batch of messages costs one round trip
(each round trip waits for a PostgreSQL backend to be scheduled: on a busy machine longer
than the statement takes). Messages without a client message id that follow one another
in the batch are one multi-row statement (a statement costs psycopg and PostgreSQL far
more than a row); one with a client message id is a statement of its own. A batch of
only plain messages, the usual one, skips psycopg's cursors (`direct`). Other
operations read their results as they go, so each runs outside the pipeline, in round
trips of its own. A failing operation rolls the batch back and it runs again, one
statement at a time, with each operation in its own savepoint. After the commit, in the
trio thread and in commit order, the operations' hooks run, then the waiting tasks
resume: a message is published only once it is committed.

A lost connection, a server that refuses connections or is shutting down, or a database
that cannot take writes (a full disk, a read-only standby) fails the whole batch with
`StoreUnavailable` (503 `store_unavailable`, retryable), logged once an interval. The
next batch connects again, so the store recovers by itself once PostgreSQL is back. A
commit cut off by a lost connection may or may not have been applied: it is answered
`store_unavailable` all the same, and a client retrying with its clientMessageId gets
the stored message if it was.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
import trio

from chatd.model import Outgoing, StoredMessage, utc_iso
from chatd.store.errors import StoreClosed, StoreError, StoreUnavailable
from chatd.store.operations import Availability, Operations, next_batch
from chatd.store.postgres import queries, schema
from chatd.store.postgres.direct import DirectAppends
from chatd.store.postgres.schema import Connection

T = TypeVar("T")

log = logging.getLogger("chatd.store")

# As SQLite's engine: /readyz proves a write at most this often, and gives up on a writer
# that has not answered in time; a recurring failure is logged once this often.


# libpq before 14 has no pipeline mode: every batch then runs one statement at a time.
_PIPELINE = psycopg.Pipeline.is_supported()

_UNAVAILABLE = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    psycopg.errors.ReadOnlySqlTransaction,
)


def unavailable(exc: BaseException) -> StoreUnavailable | None:
    """`exc` as a StoreUnavailable when the database, not the statement, is the problem:
    no connection (OperationalError covers a lost or refused one, a server shutting down,
    a full disk, a deadlock or serialization failure) or a read-only database."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if not isinstance(exc, _UNAVAILABLE):
        return None
    # The first line: libpq's messages go on with hints that only repeat it.
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    error = StoreUnavailable(f"PostgreSQL: {reason}")
    error.__cause__ = exc
    return error


class _Job:
    __slots__ = ("fn", "after", "result", "error", "done", "last", "ordered", "pipelined")

    def __init__(
        self, fn: Callable[[Connection], Any], after: Callable[[Any], None] | None
    ) -> None:
        self.fn = fn
        self.after = after
        self.result: Any = None
        self.error: BaseException | None = None
        self.done: trio.Event | None = None
        self.last = True  # the last job of its caller's: its batch sets `done`
        self.ordered = False  # stores a message: its transaction takes message_clock's lock
        # `fn` only sends its statements and returns the function that reads their
        # outcome, which in pipeline mode is there once the pipeline is synced.
        self.pipelined = False


_Op = tuple[Callable[[Connection], Any], Callable[[Any], None] | None]


class _Worker:
    """A thread that owns one connection and runs batches of jobs from a queue: in one
    transaction each (the writer), or one by one in autocommit (the reader)."""

    def __init__(
        self,
        name: str,
        dsn: str,
        batch_max: int,
        transactional: bool,
        clock: Callable[[], float],
    ) -> None:
        self.kind = "writes" if transactional else "reads"
        self._dsn = dsn
        self._conn: Connection | None = None  # the thread's; None until (re)connected
        self._batch_max = batch_max
        self._transactional = transactional
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._clock = clock
        self._closed = False
        # Batches of plain messages, the writer's usual ones, bypass psycopg's cursors.
        self._direct = DirectAppends() if transactional and _PIPELINE else None
        self.on_commit: Callable[[float, int], None] | None = None
        self.hooks_scope: Callable[[], contextlib.AbstractContextManager[None]] = (
            contextlib.nullcontext
        )
        # In the trio thread: whether the last batch could be done, and since when.
        self.availability = Availability(self.kind, clock)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._closed = True
        self._queue.put(None)

    def join(self) -> None:
        self._thread.join()

    async def call(
        self, fn: Callable[[Connection], T], after: Callable[[T], None] | None = None
    ) -> T:
        (job,) = await self.call_many([(fn, after)])
        if job.error is not None:
            raise job.error
        return job.result

    async def call_many(
        self, ops: list[_Op], ordered: bool = False, pipelined: bool = False
    ) -> list[_Job]:
        """Queue `ops` in order and wait until all of them ran; each job carries its
        result or error. The thread may end them in one batch or in consecutive ones;
        the batch holding the last one wakes the caller. `ordered`: they store messages.
        `pipelined`: each op sends its statements and returns the function that reads
        its result (`_Job.pipelined`)."""
        if self._closed:
            raise StoreClosed("store is closed")
        done = trio.Event()
        jobs = [_Job(fn, after) for fn, after in ops]
        for job in jobs:
            job.done = done
            job.last = False
            job.ordered = ordered
            job.pipelined = pipelined
        jobs[-1].last = True
        self._queue.put(jobs)
        await done.wait()
        return jobs

    # --- in the thread ---------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            got, stopping = next_batch(self._queue, self._batch_max)
            if got is None:
                break
            batch: list[_Job] = got
            self._run_batch(batch)
            self._wake(batch)
        if self._conn is not None:
            self._conn.close()

    def _connection(self) -> Connection:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
        if self._conn is None:
            self._conn = schema.connect(self._dsn)
        return self._conn

    def _run_batch(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            conn = self._connection()
            if not self._transactional:
                for job in batch:
                    self._run_one(conn, job)
                return
            if self._direct is not None and len(_plain_appends(batch, 0)) == len(batch):
                appends = [job.fn for job in batch if isinstance(job.fn, queries.Append)]
                stored = self._direct.store(conn, appends)
                if stored is not None:
                    for job, result in zip(batch, stored, strict=True):
                        job.result, job.error = result, None
                    self._committed(started, batch)
                    return
            if not (_PIPELINE and self._pipelined(conn, batch)):
                for job in batch:
                    job.result, job.error = None, None
                self._one_by_one(conn, batch)
        except Exception as exc:
            failure = unavailable(exc)
            for job in batch:
                job.result = None
                if failure is not None:
                    job.error = StoreUnavailable(failure.reason)
                    job.error.__cause__ = failure.__cause__
                elif isinstance(exc, StoreError):
                    job.error = exc  # says itself what happened (perhaps: committed)
                else:
                    job.error = StoreError(f"commit failed: {exc}")
            return
        if self._transactional:
            self._committed(started, batch)

    def _committed(self, started: float, batch: list[_Job]) -> None:
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - started, len(batch))

    def _run_one(self, conn: Connection, job: _Job) -> None:
        """Run one job; an error of the database itself is raised (the batch fails), an
        error of the job's own is kept for its caller."""
        try:
            job.result = job.fn(conn)
            if job.pipelined:
                job.result = job.result()
        except Exception as exc:
            if unavailable(exc) is not None:
                raise
            job.error = exc

    def _pipelined(self, conn: Connection, batch: list[_Job]) -> bool:
        """Run and commit `batch` in as few round trips as it allows; False (rolled
        back) when a job failed, and the savepoint pass that follows finds which.

        When every job is pipelined (stores a message: `queries.Append`), the batch is
        one pipeline and one round trip, with no BEGIN nor COMMIT: the statements a
        pipeline sends up to its sync are one transaction (PostgreSQL's extended
        protocol), committed at the sync, or rolled back whole when one fails (the
        server then skips the rest up to the sync). A job that fails before its
        statement is sent rolls back what was, with ROLLBACK. Other jobs read their
        results as they go, so each runs between two pipelines, and the transaction
        spanning them is an explicit one."""
        outcomes: list[tuple[list[_Job], Callable[[], list[Any]]]] = []
        explicit = not all(job.pipelined for job in batch)
        try:
            with contextlib.ExitStack() as pipeline:
                pipeline.enter_context(conn.pipeline())
                if explicit:
                    conn.execute("BEGIN")
                # Before any message id is handed out: transactions that store messages
                # then commit one at a time cluster-wide, in id order, so a message's
                # `prev_id` is the one committed before it and a /chat `since` misses
                # nothing (the same order a single SQLite writer gives).
                _lock_first(conn, batch)
                try:
                    failed = self._send(conn, batch, pipeline, outcomes)
                except BaseException:
                    # Whatever cut the batch short: the sync that ends the pipeline must
                    # not commit what was sent.
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                    raise
                if failed:
                    conn.execute("ROLLBACK")
                elif explicit:
                    conn.execute("COMMIT")
            if failed:
                return False
        except Exception as exc:
            if _down(conn, exc):
                raise
            return False
        finally:
            # Failed or cut short: nothing of it may stay open on the connection.
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
        for jobs, outcome in outcomes:
            # Committed: these only read rows that are there.
            try:
                for job, result in zip(jobs, outcome(), strict=True):
                    job.result = result
            except Exception as exc:
                for job in jobs:
                    job.error = exc
        return True

    def _send(
        self,
        conn: Connection,
        batch: list[_Job],
        pipeline: contextlib.ExitStack,
        outcomes: list[tuple[list[_Job], Callable[[], list[Any]]]],
    ) -> bool:
        """`_pipelined`'s jobs, in the pipeline `pipeline` holds; True when one failed.
        Each message sent adds the function that reads its outcome to `outcomes`."""
        piped = True
        i = 0
        while i < len(batch):
            job = batch[i]
            if not job.pipelined:
                pipeline.close()  # synced: the results it reads are its own
                piped = False
                self._run_one(conn, job)
                if job.error is not None:
                    return True
                i += 1
                continue
            if not piped:
                pipeline.enter_context(conn.pipeline())
                piped = True
            jobs = _plain_appends(batch, i) or [job]
            try:
                if len(jobs) > 1:
                    appends = [j.fn for j in jobs if isinstance(j.fn, queries.Append)]
                    outcomes.append((jobs, queries.send_messages(conn, appends)))
                else:
                    outcomes.append((jobs, _listed(job.fn(conn))))
            except Exception as exc:
                if _down(conn, exc):
                    raise
                return True
            i += len(jobs)
        return False

    def _one_by_one(self, conn: Connection, batch: list[_Job]) -> None:
        """Run and commit `batch`, one statement at a time, each job in its own
        savepoint: a failing one is rolled back alone, its error kept for its caller."""
        with conn.transaction():
            _lock_first(conn, batch)  # as in `_pipelined`
            for job in batch:
                try:
                    with conn.transaction():
                        self._run_one(conn, job)
                        if job.error is not None:
                            raise psycopg.Rollback()
                except psycopg.Rollback:
                    pass

    def _wake(self, batch: list[_Job]) -> None:
        def wake() -> None:
            self.availability.record(job.error for job in batch)
            # Hooks in commit order, before any waiting task resumes, so whatever they
            # publish goes out in commit order.
            with self.hooks_scope():
                for job in batch:
                    if job.after is not None and job.error is None:
                        try:
                            job.after(job.result)
                        except Exception:
                            log.exception("store: commit hook failed")
            for job in batch:
                if job.last and job.done is not None:
                    job.done.set()

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(wake)


def _lock_first(conn: Connection, batch: list[_Job]) -> None:
    """The locks a batch's transaction takes before any of its jobs runs, always in this
    order, so that two batches never wait for each other's: message_clock's when it stores
    messages, then the users' whose tickets it issues, in key order."""
    if any(job.ordered for job in batch):
        queries.lock_message_clock(conn)
    tickets = [job.fn for job in batch if isinstance(job.fn, queries.IssueTicket)]
    if tickets:
        queries.lock_ticket_users(conn, [queries.ticket_lock_key(t.user_id) for t in tickets])


def _down(conn: Connection, exc: BaseException) -> bool:
    """Whether `exc`, raised in a pipeline, is the database's failure rather than a
    statement's. psycopg reports the statements the server skipped after a failing one
    as PipelineAborted, an OperationalError: the savepoint pass finds what failed."""
    if isinstance(exc, psycopg.errors.PipelineAborted) and not conn.broken:
        return False
    return unavailable(exc) is not None


def _plain_appends(batch: list[_Job], start: int) -> list[_Job]:
    """The messages without a client message id from `start` on, in a row: one statement
    stores them all (`queries.send_messages`)."""
    end = start
    while end < len(batch):
        fn = batch[end].fn
        if not (isinstance(fn, queries.Append) and fn.new.client_message_id is None):
            break
        end += 1
    return batch[start:end]


def _listed(outcome: Callable[[], T]) -> Callable[[], list[T]]:
    return lambda: [outcome()]


def _load(dsn: str, fn: Callable[[Connection], T]) -> T:
    try:
        conn = schema.connect(dsn)
    except psycopg.Error as exc:
        raise unavailable(exc) or StoreError(str(exc)) from exc
    try:
        return fn(conn)
    finally:
        conn.close()


class PgStore(Operations):
    """The store on PostgreSQL. Create it inside trio: it migrates the database first
    (raising StoreError when it cannot be reached or is newer than this chatd)."""

    _queries = queries

    def __init__(
        self,
        dsn: str,
        batch_max: int = 512,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._dsn = dsn
        self._clock = clock
        _load(dsn, schema.migrate)
        self._writer = _Worker("chatd-pg-writer", dsn, batch_max, True, clock)
        self._reader = _Worker("chatd-pg-reader", dsn, 64, False, clock)
        self._writer.start()
        self._reader.start()

    def set_commit_observer(self, fn: Callable[[float, int], None]) -> None:
        self._writer.on_commit = fn

    def set_hooks_scope(self, scope: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        self._writer.hooks_scope = scope

    async def aclose(self) -> None:
        """Finish every queued operation, then close both connections."""
        self._writer.stop()
        self._reader.stop()
        await trio.to_thread.run_sync(self._writer.join)
        await trio.to_thread.run_sync(self._reader.join)

    async def write(
        self, fn: Callable[[Connection], T], after: Callable[[T], None] | None = None
    ) -> T:
        return await self._writer.call(fn, after)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        return await self._reader.call(fn)

    def _load_sync(self, fn: Callable[[Connection], T]) -> T:
        return _load(self._dsn, fn)

    # --- messages --------------------------------------------------------------------

    async def append_messages(
        self,
        user_id: int,
        username: str,
        profile_image: str | None,
        messages: Sequence[Outgoing],
        idempotency_window: float,
        on_commit: Callable[[Outgoing, tuple[StoredMessage, bool]], None] | None = None,
    ) -> list[tuple[StoredMessage, bool] | BaseException]:
        now = time.time()
        created_at = utc_iso(now)
        ops: list[_Op] = []
        for new in messages:
            op = queries.Append(
                new, user_id, username, profile_image, now, created_at, idempotency_window
            )
            after = None if on_commit is None else functools.partial(on_commit, new)
            ops.append((op, after))
        if not ops:
            return []
        jobs = await self._writer.call_many(ops, ordered=True, pipelined=True)
        return [job.result if job.error is None else job.error for job in jobs]


    # --- what the nodes of a cluster share ---------------------------------------------

    async def issue_ticket(
        self, digest: bytes, user_id: int, identity: str, expires_at: float, max_unused: int
    ) -> bool:
        now = time.time()
        return await self.write(
            queries.IssueTicket(digest, user_id, identity, expires_at, max_unused, now)
        )

    async def claim_ticket(self, digest: bytes, now: float) -> tuple[str, str | None]:
        return await self.write(lambda conn: queries.claim_ticket(conn, digest, now))

    async def sweep_tickets(self, before: float) -> int:
        return await self.write(lambda conn: queries.sweep_tickets(conn, before))

    def shared_secret_sync(self, name: str, candidate: str) -> str:
        """The secret every node uses (the STOMP login key): the first node's."""
        def keep(conn: Connection) -> str:
            with conn.transaction():
                return queries.shared_secret(conn, name, candidate)

        return _load(self._dsn, keep)
