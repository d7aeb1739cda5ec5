"""`chatd migrate-store` timed: builds a SQLite store of N messages (default 200,000, in 20
rooms, one in ten with a client message id, some edited or deleted), then runs the real
command into PostgreSQL and prints its summary (counts, seconds, messages/s).

    .venv/bin/python bench/migrate_store.py [--messages N] [--to DSN]

Also printed: the command's own CPU time (user + system, Python's start-up included;
PostgreSQL's is not) and the machine's load average, as this machine is shared.

Without --to, a private PostgreSQL is started in a temporary directory on a free port
(tests/pg_instance.py: fsync off, as in the tests) and removed after; with --to, the
target must be an empty database.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chatd.store import schema  # noqa: E402
from tests.pg_instance import PgInstance, _bindir  # noqa: E402

ROOMS = 20


def build_source(path: Path, messages: int) -> None:
    conn = schema.connect(path)
    schema.migrate(conn)
    now = "2026-11-30T12:00:00.000Z"
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO rooms(id, name, public, created_at) VALUES (?, ?, ?, ?)",
        [(r, f"room {r}", r % 2, now) for r in range(1, ROOMS + 1)],
    )
    conn.executemany(
        "INSERT INTO members(room_id, user_id, joined_at) VALUES (?, ?, ?)",
        [(r, u, now) for r in range(1, ROOMS + 1) for u in range(1, 11)],
    )

    def rows() -> object:
        t0 = time.time() - messages
        for i in range(1, messages + 1):
            edited = now if i % 50 == 0 else None
            deleted = now if i % 97 == 0 else None
            content = "" if deleted else f"message number {i}, of a typical short length"
            yield (
                i, i % ROOMS + 1, i % 10 + 1, f"user{i % 10 + 1}", None, content, "text",
                now, t0 + i, now, f"c{i}" if i % 10 == 0 else None, edited, deleted,
            )  # fmt: skip

    conn.executemany(
        "INSERT INTO messages(id, room_id, user_id, username, profile_image, content,"
        " message_type, created_at, created_unix, client_timestamp, client_message_id,"
        " edited_at, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),  # type: ignore[arg-type]
    )
    conn.executemany(
        "INSERT INTO reads(room_id, user_id, message_id, read_at) VALUES (?, ?, ?, ?)",
        [(r, u, messages // 2, now) for r in range(1, ROOMS + 1) for u in range(1, 11)],
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--to", help="an empty PostgreSQL database (default: a private one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatd-migrate-") as tmp:
        source = Path(tmp) / "chatd.db"
        t0 = time.monotonic()
        build_source(source, args.messages)
        print(f"built {source}: {args.messages:,} messages, "
              f"{source.stat().st_size / 1e6:.0f} MB in {time.monotonic() - t0:.1f} s")  # fmt: skip
        instance = None
        dsn = args.to
        if dsn is None:
            bindir = _bindir()
            if bindir is None:
                print("no PostgreSQL binaries here: give --to DSN", file=sys.stderr)
                return 2
            instance = PgInstance(bindir)
            instance.start()
            dsn = instance.create_database()
        try:
            cmd = [sys.executable, "-m", "chatd", "migrate-store", "--from", str(source),
                   "--to", dsn]  # fmt: skip
            env = {k: v for k, v in os.environ.items() if k != "CHATD_CONFIG"}
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            status = subprocess.run(cmd, env=env, cwd=ROOT, check=False).returncode
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            # The command's own CPU, start-up included; PostgreSQL's server is not in it.
            print(f"chatd migrate-store CPU: {cpu:.2f} s; load average {os.getloadavg()[0]:.1f}")
            return status
        finally:
            if instance is not None:
                instance.stop()
                instance.remove()


if __name__ == "__main__":
    sys.exit(main())
