"""The database's shape: how a connection to it is opened, and the migrations that bring a
file of any older version to `SCHEMA_VERSION`."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from chatd.store.errors import StoreError

SCHEMA_VERSION = 5

# `[store] durability` as SQLite's synchronous setting. In WAL mode NORMAL fsyncs only at
# checkpoints: a commit survives the process (kill -9) but not the machine losing power.
# FULL fsyncs the WAL at every commit.
SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE rooms (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        public INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL
    );
    CREATE TABLE members (
        room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL,
        joined_at TEXT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members(user_id);
    CREATE TABLE invites (
        room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
        user_id INTEGER NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        room_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        username TEXT NOT NULL,
        profile_image TEXT,
        content TEXT NOT NULL,
        message_type TEXT NOT NULL DEFAULT 'text',
        created_at TEXT NOT NULL,
        created_unix REAL NOT NULL,
        client_timestamp TEXT,
        client_message_id TEXT
    );
    CREATE INDEX messages_by_room ON messages(room_id, id);
    CREATE INDEX messages_by_client_id ON messages(user_id, client_message_id)
        WHERE client_message_id IS NOT NULL;
    CREATE TABLE reads (
        room_id INTEGER NOT NULL,
        user_id INTEGER NOT NULL,
        message_id INTEGER NOT NULL,
        read_at TEXT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID;
    """,
    2: """
    CREATE TABLE stomp_revocations (
        user_id INTEGER PRIMARY KEY,
        revoked_at REAL NOT NULL
    );
    """,
    # /readyz commits a write here to prove the store can take one (one row, rewritten).
    3: """
    CREATE TABLE health (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        checked_at REAL NOT NULL
    );
    """,
    # One revocation list per user for every kind of credential: the issued STOMP logins
    # (the user's own logout) and, since an admin may revoke them, all the user's tokens.
    4: """
    ALTER TABLE stomp_revocations RENAME TO revocations;
    ALTER TABLE revocations RENAME COLUMN revoked_at TO logins_before;
    ALTER TABLE revocations ADD COLUMN tokens_before REAL;
    """,
    # Edited and deleted messages. A deleted one keeps its row (its id stays taken, and
    # history shows where it was) with its content emptied.
    5: """
    ALTER TABLE messages ADD COLUMN edited_at TEXT;
    ALTER TABLE messages ADD COLUMN deleted_at TEXT;
    """,
}


def create_private(path: Path) -> bool:
    """Create the database file, empty and mode 0600, unless it exists; True if it was
    created. SQLite would create it 0644 (less the umask), readable by every user of the
    machine, and gives its -wal and -shm files the database file's mode."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def connect(path: Path, durability: str = "normal") -> sqlite3.Connection:
    """A connection in autocommit mode (the store writes its own BEGIN and COMMIT), usable
    from the thread that is handed it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={SYNCHRONOUS[durability]}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the file's user_version; returns the new version."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(f"database schema {version} is newer than this chatd ({SCHEMA_VERSION})")
    for v in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _MIGRATIONS[v].split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {v}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
