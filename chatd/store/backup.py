"""`chatd backup PATH`: a consistent copy of the live database, taken beside the running
server with SQLite's online backup API.

The copy is made in one backup step, inside one read transaction. In WAL mode a reader
never blocks a writer, so the server keeps committing throughout; the copy is the
database as it was when the step began. A copy made in many small steps would be
restarted by SQLite whenever the server commits in between, and under steady traffic
might never finish.

The copy is written beside PATH and renamed over it only once it is complete and passes
`PRAGMA quick_check`, so PATH is always either the previous backup or a whole new one.
It is a single self-contained file (rollback journal, not WAL), created 0600 like the
database itself: it holds every message.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path


class BackupError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    bytes: int
    messages: int
    last_message_id: int


def backup(source: Path, dest: Path) -> BackupResult:
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    dest = dest.resolve()
    if dest == source.resolve():
        raise BackupError("the backup cannot be the database itself")
    if not dest.parent.is_dir():
        raise BackupError(f"no directory {dest.parent} to write the backup in")
    partial = dest.with_name(f".{dest.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    # Opened read-only: a mistyped path must not create an empty database, and the
    # backup must never write to the live one.
    src = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
    try:
        old_umask = os.umask(0o077)
        try:
            dst = sqlite3.connect(partial)
        finally:
            os.umask(old_umask)
        try:
            src.backup(dst, pages=-1)  # one step: one snapshot (see the module's doc)
            dst.execute("PRAGMA journal_mode=DELETE")
            (check,) = dst.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise BackupError(f"the copy failed its check: {check}")
            messages, last = dst.execute(
                "SELECT count(*), coalesce(max(id), 0) FROM messages"
            ).fetchone()
        finally:
            dst.close()
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {source}: {exc}") from None
    finally:
        src.close()
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return BackupResult(dest, dest.stat().st_size, int(messages), int(last))
