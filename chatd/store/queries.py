"""The SQL of each store operation, as plain functions of a sqlite3 connection.

None of them begins or commits a transaction: the engine runs them inside its own (one
per batch, a savepoint per operation when a batch is run again), so they know nothing
of threads or trio either. Times come in as arguments, taken by the caller before the
operation is queued.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from chatd.model import Outgoing, RoomRow, StoredMessage

# StoredMessage's fields, in order: a row is `StoredMessage(*row)`.
_MSG_COLUMNS = (
    "id, room_id, user_id, username, profile_image, content, message_type, created_at,"
    " created_unix, client_message_id, edited_at, deleted_at"
)

# SQLite's largest integer: no row id reaches it, so `id < _NO_UPPER` keeps them all.
_NO_UPPER = 2**63 - 1


# --- rooms ------------------------------------------------------------------------------


def load_rooms(conn: sqlite3.Connection) -> list[RoomRow]:
    members: dict[int, set[int]] = {}
    for room_id, user_id in conn.execute("SELECT room_id, user_id FROM members"):
        members.setdefault(room_id, set()).add(user_id)
    invited: dict[int, set[int]] = {}
    for room_id, user_id in conn.execute("SELECT room_id, user_id FROM invites"):
        invited.setdefault(room_id, set()).add(user_id)
    return [
        RoomRow(
            rid,
            name,
            bool(public),
            frozenset(members.get(rid, ())),
            frozenset(invited.get(rid, ())),
        )
        for rid, name, public in conn.execute("SELECT id, name, public FROM rooms")
    ]


def create_room(
    conn: sqlite3.Connection, name: str, public: bool, members: Sequence[int], now: str
) -> int:
    cur = conn.execute(
        "INSERT INTO rooms(name, public, created_at) VALUES (?, ?, ?)",
        (name, int(public), now),
    )
    room_id = int(cur.lastrowid or 0)
    conn.executemany(
        "INSERT INTO members(room_id, user_id, joined_at) VALUES (?, ?, ?)",
        [(room_id, uid, now) for uid in members],
    )
    return room_id


def add_member(conn: sqlite3.Connection, room_id: int, user_id: int, now: str) -> bool:
    """False when the user was a member already."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO members(room_id, user_id, joined_at) VALUES (?, ?, ?)",
        (room_id, user_id, now),
    )
    return cur.rowcount > 0


def remove_member(conn: sqlite3.Connection, room_id: int, user_id: int) -> bool:
    """False when the user was not a member."""
    cur = conn.execute("DELETE FROM members WHERE room_id = ? AND user_id = ?", (room_id, user_id))
    return cur.rowcount > 0


def add_invite(conn: sqlite3.Connection, room_id: int, user_id: int) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO invites(room_id, user_id) VALUES (?, ?)", (room_id, user_id)
    )


def update_room(
    conn: sqlite3.Connection, room_id: int, name: str | None, public: bool | None
) -> None:
    if name is not None:
        conn.execute("UPDATE rooms SET name = ? WHERE id = ?", (name, room_id))
    if public is not None:
        conn.execute("UPDATE rooms SET public = ? WHERE id = ?", (int(public), room_id))


def delete_room(conn: sqlite3.Connection, room_id: int) -> int:
    """The room and everything of it: members and invites (by cascade), read marks and
    messages. Message ids are never reused (AUTOINCREMENT), so a client resuming with
    `since` cannot confuse a later message with a deleted one. Returns the messages
    deleted."""
    deleted = conn.execute("DELETE FROM messages WHERE room_id = ?", (room_id,)).rowcount
    conn.execute("DELETE FROM reads WHERE room_id = ?", (room_id,))
    conn.execute("DELETE FROM rooms WHERE id = ?", (room_id,))
    return int(deleted)


# --- revocations ------------------------------------------------------------------------


def load_revocations(conn: sqlite3.Connection) -> dict[int, tuple[float | None, float | None]]:
    """By user: (issued STOMP logins revoked before, every token revoked before)."""
    return {
        user_id: (logins, tokens)
        for user_id, logins, tokens in conn.execute(
            "SELECT user_id, logins_before, tokens_before FROM revocations"
        )
    }


def revoke_logins(conn: sqlite3.Connection, user_id: int, at: float) -> None:
    conn.execute(
        "INSERT INTO revocations(user_id, logins_before) VALUES (?, ?)"
        " ON CONFLICT(user_id) DO UPDATE SET"
        " logins_before = MAX(logins_before, excluded.logins_before)",
        (user_id, at),
    )


def revoke_tokens(conn: sqlite3.Connection, user_id: int, at: float) -> None:
    """Every credential of the user from before `at`: the tokens, and the logins with them."""
    conn.execute(
        "INSERT INTO revocations(user_id, logins_before, tokens_before) VALUES (?, ?, ?)"
        " ON CONFLICT(user_id) DO UPDATE SET"
        " logins_before = MAX(logins_before, excluded.logins_before),"
        " tokens_before = MAX(COALESCE(tokens_before, 0), excluded.tokens_before)",
        (user_id, at, at),
    )


# --- messages ----------------------------------------------------------------------------


def append_message(
    conn: sqlite3.Connection,
    new: Outgoing,
    user_id: int,
    username: str,
    profile_image: str | None,
    now: float,
    created_at: str,
    idempotency_window: float,
) -> tuple[StoredMessage, bool]:
    """Insert `new`; returns (message, True). With the same client message id from this
    user in this room within the window, inserts nothing and returns (earlier, False)."""
    if new.client_message_id is not None:
        row = conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages WHERE user_id = ? AND"
            " client_message_id = ? AND room_id = ? AND created_unix >= ?"
            " ORDER BY id DESC LIMIT 1",
            (user_id, new.client_message_id, new.room_id, now - idempotency_window),
        ).fetchone()
        if row is not None:
            return StoredMessage(*row), False
    # StoredMessage's fields from room_id to created_unix, in order.
    fields = (
        new.room_id, user_id, username, profile_image, new.content, new.message_type,
        created_at, now,
    )  # fmt: skip
    cur = conn.execute(
        "INSERT INTO messages(room_id, user_id, username, profile_image, content,"
        " message_type, created_at, created_unix, client_timestamp, client_message_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*fields, new.client_timestamp, new.client_message_id),
    )
    return StoredMessage(int(cur.lastrowid or 0), *fields, new.client_message_id), True


def history(
    conn: sqlite3.Connection, room_id: int, before: int | None, limit: int
) -> list[StoredMessage]:
    """A room's messages older than `before` (all when None), newest first."""
    upper = _NO_UPPER if before is None else before
    rows = conn.execute(
        f"SELECT {_MSG_COLUMNS} FROM messages WHERE room_id = ? AND id < ?"
        " ORDER BY id DESC LIMIT ?",
        (room_id, upper, limit),
    )
    return [StoredMessage(*r) for r in rows]


def messages_since(
    conn: sqlite3.Connection, room_ids: Sequence[int], since: int, limit: int
) -> list[StoredMessage]:
    """Messages after id `since` in any of `room_ids` (not empty), oldest first."""
    marks = ",".join("?" * len(room_ids))
    rows = conn.execute(
        f"SELECT {_MSG_COLUMNS} FROM messages WHERE id > ? AND room_id IN ({marks})"
        " ORDER BY id LIMIT ?",
        (since, *room_ids, limit),
    )
    return [StoredMessage(*r) for r in rows]


def last_message_id(conn: sqlite3.Connection) -> int:
    """The newest message id, 0 when there is none."""
    (last,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()
    return int(last)


def get_message(conn: sqlite3.Connection, message_id: int) -> StoredMessage | None:
    row = conn.execute(
        f"SELECT {_MSG_COLUMNS} FROM messages WHERE id = ?", (message_id,)
    ).fetchone()
    return None if row is None else StoredMessage(*row)


class Change:
    """What became of an edit or a delete: done (with the message as it is now), or why
    not."""

    DONE = "done"
    NO_MESSAGE = "no_message"  # not in that room, or deleted already
    NOT_YOURS = "not_yours"


def change_message(
    conn: sqlite3.Connection,
    room_id: int,
    message_id: int,
    user_id: int | None,
    content: str | None,
    now: str,
) -> tuple[str, StoredMessage | None]:
    """Edit (`content`) or delete (None) a message of the room that is not deleted, when
    `user_id` wrote it (None: anyone's, an admin's change). Checked and changed in one
    transaction, so a concurrent delete cannot slip between."""
    row = conn.execute(
        "SELECT user_id FROM messages WHERE id = ? AND room_id = ? AND deleted_at IS NULL",
        (message_id, room_id),
    ).fetchone()
    if row is None:
        return Change.NO_MESSAGE, None
    if user_id is not None and row[0] != user_id:
        return Change.NOT_YOURS, None
    if content is None:
        conn.execute(
            "UPDATE messages SET content = '', deleted_at = ? WHERE id = ?", (now, message_id)
        )
    else:
        conn.execute(
            "UPDATE messages SET content = ?, edited_at = ? WHERE id = ?",
            (content, now, message_id),
        )
    return Change.DONE, get_message(conn, message_id)


def room_summaries(
    conn: sqlite3.Connection, user_id: int, room_ids: Sequence[int]
) -> dict[int, tuple[int, StoredMessage | None]]:
    """Per room: how many messages others wrote after the user's read mark (deleted ones
    not counted), and the newest message. Each is an index range on messages_by_room."""
    out: dict[int, tuple[int, StoredMessage | None]] = {}
    for room_id in room_ids:
        (unread,) = conn.execute(
            "SELECT count(*) FROM messages WHERE room_id = ? AND id > coalesce("
            " (SELECT message_id FROM reads WHERE room_id = ? AND user_id = ?), 0)"
            " AND user_id != ? AND deleted_at IS NULL",
            (room_id, room_id, user_id, user_id),
        ).fetchone()
        row = conn.execute(
            f"SELECT {_MSG_COLUMNS} FROM messages WHERE room_id = ? ORDER BY id DESC LIMIT 1",
            (room_id,),
        ).fetchone()
        out[room_id] = (int(unread), None if row is None else StoredMessage(*row))
    return out


def mark_read(
    conn: sqlite3.Connection, room_id: int, user_id: int, message_id: int, read_at: str
) -> str:
    """Move the user's read mark in the room forward to `message_id` (never back)."""
    conn.execute(
        "INSERT INTO reads(room_id, user_id, message_id, read_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(room_id, user_id) DO UPDATE SET"
        " message_id = max(message_id, excluded.message_id), read_at = excluded.read_at",
        (room_id, user_id, message_id, read_at),
    )
    return read_at


# --- health ------------------------------------------------------------------------------


def touch_health(conn: sqlite3.Connection, at: float) -> None:
    """A write that changes a page, so its commit proves the file, its WAL and the disk
    take one (a `SELECT 1` proved only that the writer thread answers)."""
    conn.execute(
        "INSERT INTO health(id, checked_at) VALUES (1, ?)"
        " ON CONFLICT(id) DO UPDATE SET checked_at = excluded.checked_at",
        (at,),
    )
