"""The SQL of each store operation on PostgreSQL, as plain functions of a connection:
the same operations, arguments and results as `chatd.store.queries` (SQLite's), which
the store contract tests hold them to. None begins or commits a transaction; the engine
runs them inside its own."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from chatd.model import Outgoing, RoomRow, StoredMessage
from chatd.store.errors import StoreError
from chatd.store.postgres.schema import Connection
from chatd.store.queries import Change

# StoredMessage's fields, in order: a row is `StoredMessage(*row)`.
_MSG_COLUMNS = (
    "id, room_id, user_id, username, profile_image, content, message_type, created_at,"
    " created_unix, client_message_id, edited_at, deleted_at"
)
_NO_UPPER = 2**63 - 1  # above every BIGINT id

# --- rooms ------------------------------------------------------------------------------


def load_rooms(conn: Connection) -> list[RoomRow]:
    members: dict[int, set[int]] = {}
    for room_id, user_id in conn.execute("SELECT room_id, user_id FROM members"):
        members.setdefault(room_id, set()).add(user_id)
    invited: dict[int, set[int]] = {}
    for room_id, user_id in conn.execute("SELECT room_id, user_id FROM invites"):
        invited.setdefault(room_id, set()).add(user_id)
    return [
        RoomRow(
            rid, name, bool(public), frozenset(members.get(rid, ())),
            frozenset(invited.get(rid, ())),
        )  # fmt: skip
        for rid, name, public in conn.execute("SELECT id, name, public FROM rooms ORDER BY id")
    ]


def create_room(
    conn: Connection, name: str, public: bool, members: Sequence[int], now: str
) -> int:
    row = conn.execute(
        "INSERT INTO rooms(name, public, created_at) VALUES (%s, %s, %s) RETURNING id",
        (name, public, now),
    ).fetchone()
    assert row is not None  # RETURNING of an INSERT that did not fail
    room_id = int(row[0])
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO members(room_id, user_id, joined_at) VALUES (%s, %s, %s)",
            [(room_id, uid, now) for uid in members],
        )
    return room_id


def add_member(conn: Connection, room_id: int, user_id: int, now: str) -> bool:
    """False when the user was a member already."""
    cur = conn.execute(
        "INSERT INTO members(room_id, user_id, joined_at) VALUES (%s, %s, %s)"
        " ON CONFLICT DO NOTHING",
        (room_id, user_id, now),
    )
    return cur.rowcount > 0


def remove_member(conn: Connection, room_id: int, user_id: int) -> bool:
    """False when the user was not a member."""
    cur = conn.execute(
        "DELETE FROM members WHERE room_id = %s AND user_id = %s", (room_id, user_id)
    )
    return cur.rowcount > 0


def add_invite(conn: Connection, room_id: int, user_id: int) -> None:
    conn.execute(
        "INSERT INTO invites(room_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (room_id, user_id),
    )


def update_room(conn: Connection, room_id: int, name: str | None, public: bool | None) -> None:
    conn.execute(
        "UPDATE rooms SET name = coalesce(%s, name), public = coalesce(%s, public)"
        " WHERE id = %s",
        (name, public, room_id),
    )


def delete_room(conn: Connection, room_id: int) -> int:
    """The room and everything of it (members and invites by cascade); the messages
    deleted. Identity values are never handed out twice, so ids are not reused."""
    deleted = conn.execute("DELETE FROM messages WHERE room_id = %s", (room_id,)).rowcount
    conn.execute("DELETE FROM reads WHERE room_id = %s", (room_id,))
    conn.execute("DELETE FROM rooms WHERE id = %s", (room_id,))
    return int(deleted)


# --- revocations ------------------------------------------------------------------------


def load_revocations(conn: Connection) -> dict[int, tuple[float | None, float | None]]:
    return {
        user_id: (logins, tokens)
        for user_id, logins, tokens in conn.execute(
            "SELECT user_id, logins_before, tokens_before FROM revocations"
        )
    }


def revoke_logins(conn: Connection, user_id: int, at: float) -> None:
    conn.execute(
        "INSERT INTO revocations(user_id, logins_before) VALUES (%s, %s)"
        " ON CONFLICT(user_id) DO UPDATE SET"
        " logins_before = greatest(revocations.logins_before, excluded.logins_before)",
        (user_id, at),
    )


def revoke_tokens(conn: Connection, user_id: int, at: float) -> None:
    conn.execute(
        "INSERT INTO revocations(user_id, logins_before, tokens_before) VALUES (%s, %s, %s)"
        " ON CONFLICT(user_id) DO UPDATE SET"
        " logins_before = greatest(revocations.logins_before, excluded.logins_before),"
        " tokens_before = greatest(revocations.tokens_before, excluded.tokens_before)",
        (user_id, at, at),
    )


# --- messages ----------------------------------------------------------------------------


# The engine holds message_clock's row lock (`lock_message_clock`): the id handed out is
# above every committed one, and `old` is the one committed just before. One statement
# (not a SELECT, then an INSERT) so that a batch's statements can all be sent before any
# result is read (the engine's pipeline).
_INSERT = (
    "INSERT INTO messages(room_id, user_id, username, profile_image, content,"
    " message_type, created_at, created_unix, client_timestamp, client_message_id)"
)
_APPEND = (
    f"WITH ins AS ({_INSERT} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id),"
    " old AS (SELECT last_id FROM message_clock WHERE id = 1),"
    " upd AS (UPDATE message_clock SET last_id = (SELECT id FROM ins) WHERE id = 1)"
    " SELECT (SELECT id FROM ins), (SELECT last_id FROM old)"
)
# With a client message id: the newest earlier message of the same id from this user in
# this room within the window, or else the insert. `id + 0`: ordered by the index on the
# client id's few rows, never by walking the room's index backwards from its newest (the
# planner's choice on a table it has not analysed yet, a scan of the whole room).
_APPEND_ONCE = (
    f"WITH prior AS (SELECT {_MSG_COLUMNS} FROM messages WHERE user_id = %s AND"
    " client_message_id = %s AND room_id = %s AND created_unix >= %s"
    " ORDER BY id + 0 DESC LIMIT 1),"
    f" ins AS ({_INSERT} SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s, %s"
    " WHERE NOT EXISTS (SELECT FROM prior) RETURNING id),"
    " old AS (SELECT last_id FROM message_clock WHERE id = 1),"
    " upd AS (UPDATE message_clock SET last_id = ins.id FROM ins WHERE message_clock.id = 1)"
    " SELECT (SELECT id FROM ins), (SELECT last_id FROM old), prior.*"
    " FROM (SELECT) AS one LEFT JOIN prior ON true"
)


def send_message(
    conn: Connection,
    new: Outgoing,
    user_id: int,
    username: str,
    profile_image: str | None,
    now: float,
    created_at: str,
    idempotency_window: float,
) -> Callable[[], tuple[StoredMessage, bool]]:
    """Send the statement storing `new`; returns the function that reads its outcome,
    (message, True) or, with the same client message id from this user in this room
    within the window, (earlier, False) and nothing inserted. In pipeline mode the
    outcome is there once the pipeline is synced."""
    fields = (
        new.room_id, user_id, username, profile_image, new.content, new.message_type,
        created_at, now,
    )  # fmt: skip
    cmid = new.client_message_id
    if cmid is None:
        cur = conn.execute(_APPEND, (*fields, new.client_timestamp, None))
    else:
        window = (user_id, cmid, new.room_id, now - idempotency_window)
        cur = conn.execute(_APPEND_ONCE, (*window, *fields, new.client_timestamp, cmid))

    def outcome() -> tuple[StoredMessage, bool]:
        got = cur.fetchone()
        assert got is not None  # one row, inserted or not
        if got[0] is None:
            return StoredMessage(*got[2:]), False
        msg_id, prev = int(got[0]), int(got[1])
        return StoredMessage(msg_id, *fields, cmid, prev_id=prev), True

    return outcome


# Messages without a client message id, of one batch and in a row: one statement for all
# of them, their columns as arrays. Their ids are drawn first, one each, and the smallest
# goes to the first message (`n`, its place in the arrays), so ids follow their order;
# each one's `prev` is the one before it, the first's the clock's (held locked).
_APPEND_MANY = (
    "WITH v AS (SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[],"
    " %s::text[], %s::text[], %s::text[], %s::float8[], %s::text[]) WITH ORDINALITY AS"
    " v(room_id, user_id, username, profile_image, content, message_type, created_at,"
    " created_unix, client_timestamp, n)),"
    " ids AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM"
    " (SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id FROM v) AS drawn),"
    " ins AS (INSERT INTO messages(id, room_id, user_id, username, profile_image, content,"
    " message_type, created_at, created_unix, client_timestamp)"
    " SELECT ids.id, v.room_id, v.user_id, v.username, v.profile_image, v.content,"
    " v.message_type, v.created_at, v.created_unix, v.client_timestamp"
    " FROM v JOIN ids USING (n) RETURNING id),"
    " old AS (SELECT last_id FROM message_clock WHERE id = 1),"
    " upd AS (UPDATE message_clock SET last_id = (SELECT max(id) FROM ins) WHERE id = 1)"
    " SELECT (SELECT last_id FROM old), array(SELECT id FROM ins ORDER BY id)"
)


def _numbered(sql: str) -> str:
    """`sql` with its `%s` placeholders as libpq's own `$1`, `$2`..."""
    first, *rest = sql.split("%s")
    return first + "".join(f"${i}{part}" for i, part in enumerate(rest, 1))


# The same, for libpq's own calls (chatd.store.postgres.direct).
APPEND_MANY_NUMBERED = _numbered(_APPEND_MANY)


@dataclass(frozen=True, slots=True)
class Append:
    """A message to store, as `send_message` takes it: called with a connection, sends
    its statement. The engine sends those without a client message id that follow one
    another in a batch with `send_messages`, in one statement."""

    new: Outgoing
    user_id: int
    username: str
    profile_image: str | None
    now: float
    created_at: str
    idempotency_window: float

    def __call__(self, conn: Connection) -> Callable[[], tuple[StoredMessage, bool]]:
        return send_message(
            conn, self.new, self.user_id, self.username, self.profile_image, self.now,
            self.created_at, self.idempotency_window,
        )  # fmt: skip

    def fields(self) -> tuple[int, int, str, str | None, str, str, str, float]:
        """StoredMessage's fields from room_id to created_unix."""
        new = self.new
        return (
            new.room_id, self.user_id, self.username, self.profile_image, new.content,
            new.message_type, self.created_at, self.now,
        )  # fmt: skip


def send_messages(
    conn: Connection, appends: Sequence[Append]
) -> Callable[[], list[tuple[StoredMessage, bool]]]:
    """`send_message` for several messages, none with a client message id, in one
    statement; their ids follow their order."""
    rows = [a.fields() for a in appends]
    columns: list[list[object]] = [list(column) for column in zip(*rows, strict=True)]
    columns.append([a.new.client_timestamp for a in appends])
    cur = conn.execute(_APPEND_MANY, columns)

    def outcome() -> list[tuple[StoredMessage, bool]]:
        got = cur.fetchone()
        assert got is not None
        return stored_in_order(rows, int(got[0]), [int(i) for i in got[1]])

    return outcome


def stored_in_order(
    rows: Sequence[tuple[int, int, str, str | None, str, str, str, float]],
    prev: int,
    ids: Sequence[int],
) -> list[tuple[StoredMessage, bool]]:
    """`_APPEND_MANY`'s outcome: the messages of `rows` (`Append.fields`) as stored with
    `ids`, each one's `prev_id` the one before it, the first's `prev`."""
    if len(ids) != len(rows):
        raise StoreError(f"{len(rows)} messages sent, {len(ids)} stored")
    out = []
    for msg_id, fields in zip(ids, rows, strict=True):
        out.append((StoredMessage(msg_id, *fields, None, prev_id=prev), True))
        prev = msg_id
    return out


def append_message(
    conn: Connection,
    new: Outgoing,
    user_id: int,
    username: str,
    profile_image: str | None,
    now: float,
    created_at: str,
    idempotency_window: float,
) -> tuple[StoredMessage, bool]:
    """`send_message`'s outcome, at once."""
    return send_message(
        conn, new, user_id, username, profile_image, now, created_at, idempotency_window
    )()


LOCK_MESSAGE_CLOCK = "SELECT FROM message_clock WHERE id = 1 FOR UPDATE"


def lock_message_clock(conn: Connection) -> None:
    """Taken first by a transaction that stores messages, held to its commit: such
    transactions commit one at a time cluster-wide, in the order of their ids."""
    conn.execute(LOCK_MESSAGE_CLOCK)


def message_clock(conn: Connection) -> int:
    """The newest committed message id (in any room, deleted ones included)."""
    row = conn.execute("SELECT last_id FROM message_clock WHERE id = 1").fetchone()
    return 0 if row is None else int(row[0])


def history(conn: Connection, room_id: int, before: int | None, limit: int) -> list[StoredMessage]:
    upper = _NO_UPPER if before is None else before
    rows = conn.execute(
        f"SELECT {_MSG_COLUMNS} FROM messages WHERE room_id = %s AND id < %s"
        " ORDER BY id DESC LIMIT %s",
        (room_id, upper, limit),
    )
    return [StoredMessage(*r) for r in rows]


def messages_since(
    conn: Connection, room_ids: Sequence[int], since: int, limit: int
) -> list[StoredMessage]:
    rows = conn.execute(
        f"SELECT {_MSG_COLUMNS} FROM messages WHERE id > %s AND room_id = ANY(%s::bigint[])"
        " ORDER BY id LIMIT %s",
        (since, list(room_ids), limit),
    )
    return [StoredMessage(*r) for r in rows]


def last_message_id(conn: Connection) -> int:
    """The newest committed message id: message_clock's, which every commit of messages
    moves in the same transaction. Not max(id): deleting a room deletes its messages, and
    the cluster's sequencer must never take an id that was committed for one to come."""
    return message_clock(conn)


def get_message(conn: Connection, message_id: int) -> StoredMessage | None:
    row = conn.execute(
        f"SELECT {_MSG_COLUMNS} FROM messages WHERE id = %s", (message_id,)
    ).fetchone()
    return None if row is None else StoredMessage(*row)


def change_message(
    conn: Connection,
    room_id: int,
    message_id: int,
    user_id: int | None,
    content: str | None,
    now: str,
) -> tuple[str, StoredMessage | None]:
    """As `chatd.store.queries.change_message`; the row is locked from the check to the
    change, so another node's delete cannot slip between."""
    row = conn.execute(
        "SELECT user_id FROM messages WHERE id = %s AND room_id = %s AND deleted_at IS NULL"
        " FOR UPDATE",
        (message_id, room_id),
    ).fetchone()
    if row is None:
        return Change.NO_MESSAGE, None
    if user_id is not None and row[0] != user_id:
        return Change.NOT_YOURS, None
    if content is None:
        conn.execute(
            "UPDATE messages SET content = '', deleted_at = %s WHERE id = %s", (now, message_id)
        )
    else:
        conn.execute(
            "UPDATE messages SET content = %s, edited_at = %s WHERE id = %s",
            (content, now, message_id),
        )
    return Change.DONE, get_message(conn, message_id)


def room_summaries(
    conn: Connection, user_id: int, room_ids: Sequence[int]
) -> dict[int, tuple[int, StoredMessage | None]]:
    """Per room: messages others wrote after the user's read mark (deleted ones not
    counted), and the newest message; one statement for all the rooms."""
    rows = conn.execute(
        "SELECT r.id, (SELECT count(*) FROM messages m WHERE m.room_id = r.id AND m.id >"
        "  coalesce((SELECT message_id FROM reads WHERE room_id = r.id AND user_id = %s), 0)"
        "  AND m.user_id <> %s AND m.deleted_at IS NULL),"
        f" last.* FROM unnest(%s::bigint[]) AS r(id) LEFT JOIN LATERAL"
        f" (SELECT {_MSG_COLUMNS} FROM messages WHERE room_id = r.id ORDER BY id DESC LIMIT 1)"
        " AS last ON true",
        (user_id, user_id, list(room_ids)),
    )
    out: dict[int, tuple[int, StoredMessage | None]] = {}
    for row in rows:
        newest = None if row[2] is None else StoredMessage(*row[2:])
        out[int(row[0])] = (int(row[1]), newest)
    return out


def mark_read(
    conn: Connection, room_id: int, user_id: int, message_id: int, read_at: str
) -> str:
    conn.execute(
        "INSERT INTO reads(room_id, user_id, message_id, read_at) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT(room_id, user_id) DO UPDATE SET"
        " message_id = greatest(reads.message_id, excluded.message_id),"
        " read_at = excluded.read_at",
        (room_id, user_id, message_id, read_at),
    )
    return read_at


def touch_health(conn: Connection, at: float) -> None:
    """A committed write, proving the database takes one (for /readyz)."""
    conn.execute(
        "INSERT INTO health(id, checked_at) VALUES (1, %s)"
        " ON CONFLICT(id) DO UPDATE SET checked_at = excluded.checked_at",
        (at,),
    )


# --- tickets (cluster mode: chatd.ticketws.tickets.SharedTicketBook) ------------------------


_TICKETS_LOCK = 0x7469636B  # "tick"
_INT4_KEYS = 2**31 - 1


def issue_ticket(
    conn: Connection, digest: bytes, user_id: int, identity: str, expires_at: float,
    max_unused: int, now: float,
) -> bool:  # fmt: skip
    # Nodes issuing to one user at once take turns, to the commit (an advisory lock of the
    # user's, in a key space of its own): the count then includes the other's ticket. The
    # engine has taken it already (`lock_ticket_users`); taken again, it is held once.
    lock_ticket_users(conn, [ticket_lock_key(user_id)])
    row = conn.execute(
        "SELECT count(*) FROM tickets WHERE user_id = %s AND NOT used AND expires_at > %s",
        (user_id, now),
    ).fetchone()
    if row is not None and int(row[0]) >= max_unused:
        return False
    conn.execute(
        "INSERT INTO tickets(digest, user_id, identity, expires_at) VALUES (%s, %s, %s, %s)",
        (digest, user_id, identity, expires_at),
    )
    return True


def ticket_lock_key(user_id: int) -> int:
    return user_id % _INT4_KEYS


def lock_ticket_users(conn: Connection, keys: Iterable[int]) -> None:
    """The ticket locks of these users (`ticket_lock_key`), in key order: one order for
    every transaction, or two batches issuing tickets to the same two users in opposite
    orders would each hold the lock the other waits for (PostgreSQL ends one of them after
    deadlock_timeout, as unavailable)."""
    for key in sorted(set(keys)):
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_TICKETS_LOCK, key))


@dataclass(frozen=True, slots=True)
class IssueTicket:
    """A ticket to issue, as `issue_ticket` takes it: the engine sees the user whose lock
    it needs and takes the locks of a whole batch first, in order."""

    digest: bytes
    user_id: int
    identity: str
    expires_at: float
    max_unused: int
    now: float

    def __call__(self, conn: Connection) -> bool:
        return issue_ticket(
            conn, self.digest, self.user_id, self.identity, self.expires_at, self.max_unused,
            self.now,
        )  # fmt: skip


def claim_ticket(conn: Connection, digest: bytes, now: float) -> tuple[str, str | None]:
    # One UPDATE decides: of two nodes redeeming the same ticket at once, the second
    # waits for the first's row lock and then finds it used.
    row = conn.execute(
        "UPDATE tickets SET used = true WHERE digest = %s AND NOT used AND expires_at > %s"
        " RETURNING identity",
        (digest, now),
    ).fetchone()
    if row is not None:
        return "ok", str(row[0])
    row = conn.execute("SELECT used FROM tickets WHERE digest = %s", (digest,)).fetchone()
    if row is None:
        return "unknown", None
    return ("used" if row[0] else "expired"), None


def sweep_tickets(conn: Connection, before: float) -> int:
    return conn.execute("DELETE FROM tickets WHERE expires_at < %s", (before,)).rowcount


# The secrets table's names. The STOMP login key signs issued logins (chatd.stomp.logins);
# `chatd migrate-store` carries a node's key file into it.
STOMP_LOGIN_KEY = "stomp-login-key"
# Not a secret: the mark a cluster's nodes put on their frames on the bus (chatd.cluster).
CLUSTER_MARK = "cluster-mark"
CLUSTER_BUS_KEY = "cluster-bus-key"  # signs the bus's frames (chatd.cluster.wire)


def shared_secret(conn: Connection, name: str, candidate: str) -> str:
    """The secret called `name` every node shares: `candidate` if none was kept yet."""
    conn.execute(
        "INSERT INTO secrets(name, value) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
        (name, candidate),
    )
    row = conn.execute("SELECT value FROM secrets WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return str(row[0])
