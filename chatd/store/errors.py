"""What the store raises to its callers."""

from __future__ import annotations

import sqlite3

from chatd.model import ClientError


class StoreError(Exception):
    """The database cannot be used (a newer schema), or a commit failed."""


class StoreClosed(StoreError):
    """A write or read after `Store.aclose`."""


class StoreUnavailable(StoreError, ClientError):
    """The database cannot take a write (or serve a read) for a reason of the machine's,
    not of the request's: the disk is full, the file or its WAL is read-only, an I/O error,
    or the WAL is past `[store] max_wal_bytes` because checkpoints cannot finish. Nothing
    of the operation was stored; the same request may succeed once the cause is gone, so
    every protocol answers it as a documented, retryable refusal (HTTP 503
    `store_unavailable`, a `/chat` error reply, a STOMP ERROR), never as a fault of ours.
    `reason` says what is wrong, for the log and for /readyz."""

    status = 503

    def __init__(self, reason: str) -> None:
        ClientError.__init__(
            self,
            "store_unavailable",
            "the message store cannot take writes right now; nothing was stored, try again shortly",
        )
        self.reason = reason


# The primary result codes that say the machine is the problem, not the statement: the
# request may succeed unchanged later. SQLITE_ERROR (a bad statement), CONSTRAINT,
# MISMATCH and the like are programming errors and stay what they are.
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,  # another process's write lock, past the wait
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,  # a read-only file, WAL or directory; query_only
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,  # disk full, or max_page_count
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOLFS,
        sqlite3.SQLITE_NOTADB,
    }
)


def unavailable(exc: BaseException) -> StoreUnavailable | None:
    """`exc` as a StoreUnavailable when it is an operational failure of the database (the
    original as its cause), else None."""
    if isinstance(exc, StoreUnavailable):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or code is None:
        return None
    if code & 0xFF not in _UNAVAILABLE_CODES:
        return None
    error = StoreUnavailable(str(exc))
    error.__cause__ = exc
    return error
