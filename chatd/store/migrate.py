"""`chatd migrate-store --to DSN`: a single node's SQLite database copied into PostgreSQL,
for a team moving to cluster mode.

Everything is copied with its ids: rooms, members, invites, messages (edits, deletions,
client message ids, times), read marks and revocations. Not copied: `health`, the
readiness probe's scratch row. The identity sequences are then set past the highest id
SQLite ever handed out (`sqlite_sequence`, which remembers the ids of deleted rooms and
messages too), so PostgreSQL never hands out an id a client may already hold.

The source is read in one read transaction: one snapshot, never torn by a node that is
still writing. The node must still be stopped first for the move itself: what it accepts
after the snapshot is not copied, and the result says so when the file changed during
the copy (`PRAGMA data_version`).

The target is written in one transaction: the schema (created or brought up to date by
`chatd.store.postgres.schema.migrate`, whose lock keeps nodes that start meanwhile
waiting), the rows by COPY, the sequences. Either all of it is committed or nothing is.
A target that holds any chatd data already is refused. A dry run does the whole copy
and rolls it back.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from chatd.store import schema as sqlite_schema
from chatd.store.errors import StoreError
from chatd.store.postgres import schema as pg_schema


class MigrateError(Exception):
    """What the operator is told, on one line (never the DSN's password)."""


# Copied in this order (rooms before what references them): each column with its
# PostgreSQL type, for a binary COPY. A column the target has beyond these keeps its
# default.
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "rooms": (("id", "int8"), ("name", "text"), ("public", "bool"), ("created_at", "text")),
    "members": (("room_id", "int8"), ("user_id", "int8"), ("joined_at", "text")),
    "invites": (("room_id", "int8"), ("user_id", "int8")),
    "messages": (
        ("id", "int8"), ("room_id", "int8"), ("user_id", "int8"), ("username", "text"),
        ("profile_image", "text"), ("content", "text"), ("message_type", "text"),
        ("created_at", "text"), ("created_unix", "float8"), ("client_timestamp", "text"),
        ("client_message_id", "text"), ("edited_at", "text"), ("deleted_at", "text"),
    ),
    "reads": (
        ("room_id", "int8"), ("user_id", "int8"), ("message_id", "int8"), ("read_at", "text"),
    ),
    "revocations": (
        ("user_id", "int8"), ("logins_before", "float8"), ("tokens_before", "float8"),
    ),
}  # fmt: skip

# The tables whose ids PostgreSQL hands out (identity columns).
IDENTITIES = ("rooms", "messages")

# Rows read from SQLite per fetch: memory stays flat whatever the size of the file.
BATCH_ROWS = 5000

# PostgreSQL's text cannot hold U+0000, which SQLite's can (a client may send "\u0000").
_NUL = "\x00"
_NUL_STANDIN = "\ufffd"

# (table, rows copied so far, rows in all): called after each batch.
Progress = Callable[[str, int, int], None]


@dataclass
class MigrateResult:
    source: Path
    target: str  # the DSN without its password
    dry_run: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    # The id PostgreSQL hands out next, per identity table.
    next_ids: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # Rooms given their `last_message_id` (a column of later schemas); None when the
    # target has no such column.
    last_message_ids_set: int | None = None
    # message_clock's last_id (cluster mode's newest committed message id, a table of
    # later schemas); None when the target has no such table.
    message_clock: int | None = None
    # Secrets the nodes share (the `secrets` table of later schemas), by name: copied from
    # the node, or kept because the target had its own already. None: no such table.
    secrets_copied: list[str] | None = None
    secrets_kept: list[str] = field(default_factory=list)
    # Rows with U+0000 in a text, written with U+FFFD in its place.
    nul_replaced: int = 0
    # The source file took writes after the snapshot: a node was still running.
    source_changed: bool = False


def describe_dsn(dsn: str) -> str:
    """`user@host:port/dbname` of a libpq DSN or URI, never its password."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        # libpq's complaint quotes the string, password included.
        raise MigrateError("--to is not a libpq connection string or URI") from None
    user = str(params.get("user") or "")
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = f":{params['port']}" if params.get("port") else ""
    dbname = str(params.get("dbname") or user or "(default)")
    return f"{user + '@' if user else ''}{host}{port}/{dbname}"


def _password_of(dsn: str) -> str | None:
    try:
        value = conninfo_to_dict(dsn).get("password")
    except psycopg.Error:
        match = re.search(r"password\s*=\s*'?([^\s']+)|://[^:/@]*:([^@]*)@", dsn)
        value = None if match is None else (match.group(1) or match.group(2))
    return str(value) if value else None


def scrub(text: str, dsn: str) -> str:
    """`text` on one line, with the DSN's password, if any, as ***."""
    password = _password_of(dsn)
    if password:
        text = text.replace(password, "***")
    return " ".join(text.split())


def migrate_store(
    source: Path,
    dsn: str,
    *,
    secrets: Mapping[str, str] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> MigrateResult:
    """`secrets`: the node's keys that a cluster keeps in its database, by name (the
    STOMP login key: logins the node issued stay valid). Never printed."""
    result = MigrateResult(source, describe_dsn(dsn), dry_run=dry_run)
    started = time.monotonic()
    src = _open_source(source)
    try:
        src.execute("BEGIN")
        try:
            # The snapshot is taken by the first read; data_version inside it is the
            # snapshot's, and changes after it only if another connection commits.
            (snapshot,) = src.execute("PRAGMA data_version").fetchone()
            _write(src, dsn, result, dict(secrets or {}), progress)
        finally:
            src.execute("COMMIT")
        (now,) = src.execute("PRAGMA data_version").fetchone()
        result.source_changed = now != snapshot
    except sqlite3.Error as exc:
        raise MigrateError(f"cannot read {source}: {exc}") from None
    finally:
        src.close()
    result.seconds = time.monotonic() - started
    return result


def _open_source(source: Path) -> sqlite3.Connection:
    if not source.is_file():
        raise MigrateError(f"no database at {source}")
    # Read-only: a mistyped path must not create an empty database, and the move must
    # never write to the one it reads.
    conn = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise MigrateError(f"cannot read {source}: {exc}") from None
    if version != sqlite_schema.SCHEMA_VERSION:
        conn.close()
        if version > sqlite_schema.SCHEMA_VERSION:
            raise MigrateError(
                f"{source} is at schema {version}, newer than this chatd's "
                f"({sqlite_schema.SCHEMA_VERSION}): use the chatd that wrote it"
            )
        raise MigrateError(
            f"{source} is at schema {version}, older than this chatd's "
            f"({sqlite_schema.SCHEMA_VERSION}): start `chatd serve` on it once (it "
            "brings the file up to date), stop it, then migrate again"
        )
    return conn


def _write(
    src: sqlite3.Connection,
    dsn: str,
    result: MigrateResult,
    secrets: dict[str, str],
    progress: Progress | None,
) -> None:
    try:
        target = pg_schema.connect(dsn)
    except psycopg.Error as exc:
        raise MigrateError(f"cannot connect to {result.target}: {scrub(str(exc), dsn)}") from None
    committing = False
    try:
        with target, target.transaction() as tx:
            pg_schema.migrate(target)  # a savepoint of this transaction
            _refuse_unless_empty(target, result.target)
            for table, columns in TABLES.items():
                result.counts[table], fixed = _copy_table(src, target, table, columns, progress)
                result.nul_replaced += fixed
            result.next_ids = _set_identities(src, target)
            result.last_message_ids_set = _set_last_message_ids(target)
            result.message_clock = _set_message_clock(target, result.next_ids["messages"] - 1)
            _copy_secrets(target, secrets, result)
            if result.dry_run:
                raise psycopg.Rollback(tx)
            committing = True  # the block's end commits
    except psycopg.Error as exc:
        if committing:
            # The connection may have gone after the server committed: nobody knows.
            raise MigrateError(
                f"the commit to {result.target} got no answer, so whether it took is"
                f" unknown ({scrub(str(exc), dsn)}): run the command again, which refuses"
                " a target that holds the data"
            ) from None
        raise MigrateError(
            f"nothing was written to {result.target}: {scrub(str(exc), dsn)}"
        ) from None
    except StoreError as exc:  # the target's schema is newer than this chatd's
        raise MigrateError(f"nothing was written to {result.target}: {exc}") from None


def _refuse_unless_empty(conn: pg_schema.Connection, target: str) -> None:
    # Held to the commit: no node can write between this check and the copy.
    conn.execute(
        sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
            sql.SQL(", ").join(map(sql.Identifier, TABLES))
        )
    )
    held = []
    for table in TABLES:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()
        if row is not None and row[0]:
            held.append(f"{row[0]} {table}")
    if held:
        raise MigrateError(
            f"{target} already holds chatd data ({', '.join(held)}): migrate into an empty database"
        )


def _copy_table(
    src: sqlite3.Connection,
    dst: pg_schema.Connection,
    table: str,
    columns: tuple[tuple[str, str], ...],
    progress: Progress | None,
) -> tuple[int, int]:
    """Rows copied, and how many of them had a U+0000 replaced."""
    names = [name for name, _type in columns]
    texts = [name for name, type_ in columns if type_ == "text"]
    (total,) = src.execute(f"SELECT count(*) FROM {table}").fetchone()
    with_nul = 0
    if texts:
        (with_nul,) = src.execute(
            f"SELECT count(*) FROM {table} WHERE "
            + " OR ".join(f"instr({c}, char(0)) > 0" for c in texts)
        ).fetchone()
    # No ORDER BY: a plain scan reads the table front to back, in the order of its key
    # (rowid, or the primary key of a WITHOUT ROWID table), so PostgreSQL's indexes on
    # the same keys grow at their right edge; the order matters for nothing else.
    rows = src.execute(f"SELECT {', '.join(names)} FROM {table}")
    # Binary: about a fifth faster than text for messages (BENCHMARKS.md).
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    done = 0
    with dst.cursor() as cur, cur.copy(stmt) as copy:
        copy.set_types([type_ for _name, type_ in columns])
        while batch := rows.fetchmany(BATCH_ROWS):
            if with_nul:
                batch = [_without_nul(row) for row in batch]
            for row in batch:
                copy.write_row(row)
            done += len(batch)
            if progress is not None:
                progress(table, done, total)
    return done, with_nul


def _without_nul(row: tuple[object, ...]) -> tuple[object, ...]:
    return tuple(v.replace(_NUL, _NUL_STANDIN) if isinstance(v, str) else v for v in row)


def _set_identities(src: sqlite3.Connection, dst: pg_schema.Connection) -> dict[str, int]:
    """Each identity sequence moved past the highest id SQLite ever gave (AUTOINCREMENT
    keeps it in sqlite_sequence even when the row is gone), never back; returns the id
    each hands out next."""
    given = dict(src.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
    out = {}
    for table in IDENTITIES:
        (highest,) = src.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
        highest = max(int(highest), int(given.get(table) or 0))
        found = dst.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()
        if found is None or found[0] is None:
            raise MigrateError(f"the target's {table}.id is not an identity column")
        # pg_get_serial_sequence's name comes quoted as needed, from the database itself.
        seq = str(found[0])
        row = dst.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(seq)))
        last_value, is_called = row.fetchone() or (1, False)
        last = int(last_value) if is_called else int(last_value) - 1
        if highest > last:
            dst.execute("SELECT setval(%s::regclass, %s)", (seq, highest))
            last = highest
        out[table] = last + 1
    return out


def _set_last_message_ids(dst: pg_schema.Connection) -> int | None:
    """Rooms' `last_message_id`, when the target's schema has it: the newest message of
    each room. None when it has not."""
    row = dst.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = 'rooms' AND column_name = 'last_message_id'"
    ).fetchone()
    if row is None:
        return None
    cur = dst.execute(
        "UPDATE rooms SET last_message_id = newest.id FROM"
        " (SELECT room_id, max(id) AS id FROM messages GROUP BY room_id) AS newest"
        " WHERE rooms.id = newest.room_id"
    )
    return cur.rowcount


def _set_message_clock(dst: pg_schema.Connection, highest: int) -> int | None:
    """message_clock's newest committed message id, when the target's schema has it: the
    highest id SQLite ever gave, as if the cluster had stored every copied message.
    Created by a migration on an empty table, it would say 0. None when it has not."""
    row = dst.execute("SELECT to_regclass('message_clock') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    got = dst.execute(
        "UPDATE message_clock SET last_id = greatest(last_id, %s) RETURNING last_id", (highest,)
    ).fetchone()
    return None if got is None else int(got[0])


def _copy_secrets(
    dst: pg_schema.Connection, secrets: dict[str, str], result: MigrateResult
) -> None:
    row = dst.execute("SELECT to_regclass('secrets') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return
    result.secrets_copied = []
    for name, value in sorted(secrets.items()):
        # A node started on the target made its own already, and nodes hold it: kept.
        cur = dst.execute(
            "INSERT INTO secrets(name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
            (name, value),
        )
        (result.secrets_copied if cur.rowcount else result.secrets_kept).append(name)
