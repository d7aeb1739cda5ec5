"""The writer's hot path: a batch of plain messages (no client message id) stored through
libpq itself, by psycopg's own binding of it (`psycopg.pq`), not through psycopg's
cursors.

psycopg spends 450-650 µs of Python on the writer's usual batch, a pipeline of the clock's
lock and one multi-row INSERT (its cursors, the dumpers of nine arrays, the generators
that drive each wait): more than PostgreSQL takes to run it, and in a cluster the
biggest share of a sending node's CPU per message. Here the same two statements are
prepared once per connection and sent with their parameters as text, then one sync:
60-110 µs (`bench/pg_store_micro.py`), and still one round trip.

Only what this path is sure of goes through it. Text psycopg would refuse (a NUL, a lone
surrogate), a connection in another encoding or not idle, a statement the server
refuses: `store` answers None and the engine runs the batch again on its general path,
which says which message failed and why. Nothing is committed by then: the statements up
to a sync are one transaction, rolled back whole when one fails. Once committed, nothing
is run again: an outcome it cannot read is an error. A lost connection
raises psycopg.OperationalError, as psycopg would, and the batch fails as unavailable.
"""

from __future__ import annotations

import select
from collections.abc import Iterable, Sequence

import psycopg
from psycopg import pq

from chatd.model import StoredMessage
from chatd.store.errors import StoreError
from chatd.store.postgres import queries
from chatd.store.postgres.schema import Connection

_OK = (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK)
# invalid_sql_statement_name (no such prepared statement), feature_not_supported (its
# cached plan no longer fits the table)
_STATEMENT_GONE = {b"26000", b"0A000"}


def _text(value: str | None) -> str:
    """One element of a PostgreSQL array literal."""
    if value is None:
        return "NULL"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _array(values: Iterable[object]) -> bytes:
    """A text[], bigint[] or float8[] literal; ValueError for text PostgreSQL cannot hold."""
    items = []
    for v in values:
        if isinstance(v, str) or v is None:
            items.append(_text(v))
        elif isinstance(v, float):
            items.append(repr(v))  # the shortest text that reads back as the same double
        else:
            items.append(str(int(v)))  # type: ignore[call-overload]
    literal = "{" + ",".join(items) + "}"
    if "\x00" in literal:
        raise ValueError("NUL in text")
    return literal.encode()  # UnicodeEncodeError (a ValueError) on a lone surrogate


def _ids(text: bytes) -> list[int]:
    inner = text.strip(b"{}")
    return [int(i) for i in inner.split(b",")] if inner else []


class DirectAppends:
    """The writer connection's prepared statements, and batches of plain messages stored
    with them. Writer thread only."""

    def __init__(self) -> None:
        self._ready: pq.abc.PGconn | None = None  # the connection they are prepared on
        self._generation = 0  # their names' suffix: new ones after a failure

    def store(
        self, conn: Connection, appends: Sequence[queries.Append]
    ) -> list[tuple[StoredMessage, bool]] | None:
        """Store `appends` (none with a client message id) in one transaction, in their
        order, after taking the clock's lock; None when the general path must."""
        pgconn = conn.pgconn
        if (
            pgconn.transaction_status != pq.TransactionStatus.IDLE
            or pgconn.pipeline_status != pq.PipelineStatus.OFF
            or pgconn.parameter_status(b"client_encoding") != b"UTF8"
        ):
            return None
        rows = [a.fields() for a in appends]
        try:
            params = [_array(column) for column in zip(*rows, strict=True)]
            params.append(_array(a.new.client_timestamp for a in appends))
        except ValueError:
            return None
        lock, many = self._names()
        try:
            pgconn.enter_pipeline_mode()
            if self._ready is not pgconn:
                pgconn.send_prepare(lock, queries.LOCK_MESSAGE_CLOCK.encode())
                pgconn.send_prepare(many, queries.APPEND_MANY_NUMBERED.encode())
            pgconn.send_query_prepared(lock, None)
            pgconn.send_query_prepared(many, params)
            pgconn.pipeline_sync()
            results = _until_sync(pgconn)
            pgconn.exit_pipeline_mode()
        except BaseException:
            # Cut short anywhere: what is left on the connection cannot be trusted.
            self._ready = None
            conn.close()
            raise
        failed = [r for r in results if r.status not in _OK]
        if failed:
            states = {r.error_field(pq.DiagnosticField.SQLSTATE) for r in failed}
            if self._ready is not pgconn or states & _STATEMENT_GONE:
                # Prepared in this pipeline (perhaps only one of the two was), or gone
                # since (DEALLOCATE ALL, a changed table): prepared anew, new names.
                self._ready = None
                self._generation += 1
            return None
        self._ready = pgconn
        # Committed from here on: whatever is wrong is raised, never run again (which
        # would store the messages twice).
        got = results[-1] if results else None
        if got is None or got.ntuples != 1:
            raise StoreError("messages stored, but their ids could not be read")
        prev, ids = got.get_value(0, 0), got.get_value(0, 1)
        if prev is None or ids is None:
            raise StoreError("messages stored, but their ids could not be read")
        return queries.stored_in_order(rows, int(prev), _ids(ids))

    def _names(self) -> tuple[bytes, bytes]:
        g = self._generation
        return f"chatd_lock_{g}".encode(), f"chatd_append_many_{g}".encode()


def _until_sync(pgconn: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    """Send what is queued and read every result up to the pipeline's sync; waits as
    psycopg's own generators do (the socket, no timeout: libpq's keepalives apply)."""
    fd = pgconn.socket
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while pgconn.flush() != 0:
        # Full socket: the server may be waiting for us to read before it reads more.
        poller.modify(fd, select.POLLIN | select.POLLOUT)
        if any(ev & select.POLLIN for _, ev in poller.poll()):
            pgconn.consume_input()
    poller.modify(fd, select.POLLIN)
    results: list[pq.abc.PGresult] = []
    ended = False  # the last result read was a statement's end (None)
    while True:
        while not pgconn.is_busy():
            got = pgconn.get_result()
            if got is None:
                if ended:
                    break  # nothing more for now: wait for the server
                ended = True
                continue
            ended = False
            if got.status == pq.ExecStatus.PIPELINE_SYNC:
                return results
            results.append(got)
        if pgconn.status == pq.ConnStatus.BAD:
            raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace"))
        poller.poll()
        pgconn.consume_input()
