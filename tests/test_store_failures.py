"""The store when the machine fails it: a full disk, a read-only database, checkpoints
that cannot finish. A write that cannot be committed is refused with `StoreUnavailable`
(503 `store_unavailable` on every protocol), logged once an interval, and the store takes
writes again by itself once the cause is gone; the WAL never grows past its bound.

Failures are made for real, without needing root: SQLite's `PRAGMA max_page_count` on
the writer's connection fails every write that needs a new page with SQLITE_FULL, the code
and the automatic rollback of a full disk, and it can be lifted again to test recovery
(filling a real file system would need a mount of its own, or this machine's disk);
`PRAGMA query_only` fails every write with SQLITE_READONLY, as a read-only file does; a
second sqlite3 connection holding a read transaction keeps every checkpoint from finishing,
as an admin's forgotten shell or a long backup does. A file that cannot be written is made
with `chmod 0444` when the tests do not run as root, and with `chattr +i` (immutable) when
they do, since root ignores file modes; where neither works, those tests skip.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing

import chatd.store.engine
from chatd.model import Outgoing, StoredMessage
from chatd.ops.logs import RateLimitedLog
from chatd.store import Store, StoreUnavailable
from chatd.store.errors import unavailable

from ._chat import chat, create_room, history, recv, recv_message, send
from .conftest import Server, StartServer
from .stomp_client import room_dest, stomp_user

FAST = {"rate_per_second": 100000, "rate_burst": 100000}
BIG = "x" * 3000  # most of a 4 KiB page: a few of them need a new page


class StoreClock:
    """The store's clock, apart from trio's (see tests/test_store.py): it stands still
    unless a test moves it, so no log interval or readiness probe expires by itself."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def jump(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store_clock() -> StoreClock:
    return StoreClock()


@pytest.fixture
async def store(tmp_path: Path, store_clock: StoreClock) -> AsyncIterator[Store]:
    s = Store(tmp_path / "unit.db", clock=store_clock)
    try:
        yield s
    finally:
        await s.aclose()


async def append(store: Store, contents: list[str]) -> list[StoredMessage | BaseException]:
    results = await store.append_messages(
        1, "u", None, [Outgoing(1, content) for content in contents], 600
    )
    return [r if isinstance(r, BaseException) else r[0] for r in results]


async def fill_the_disk(store: Store) -> list[str]:
    """No page can be added from now on (SQLITE_FULL, as on a full disk); messages are
    written until one is refused. Returns the contents that were stored."""
    await store.write(lambda c: c.execute("PRAGMA max_page_count = 1"))  # = its page count
    stored: list[str] = []
    for i in range(100):
        (result,) = await append(store, [f"{i} {BIG}"])
        if isinstance(result, StoreUnavailable):
            return stored
        assert isinstance(result, StoredMessage), result
        stored.append(result.content)
    raise AssertionError("the disk never filled")


async def free_the_disk(store: Store) -> None:
    await store.write(lambda c: c.execute("PRAGMA max_page_count = 1000000000"))


def read_only(store: Store, on: bool) -> None:
    """`PRAGMA query_only` on the writer's connection: every write fails as on a read-only
    file. Set from here, not through `store.write`: with it on, even the BEGIN of a write
    fails. The writer thread is idle between the awaited writes of a test, and the event
    loop uses the connection then as well (its own commits)."""
    store._writer.conn.execute(f"PRAGMA query_only = {int(on)}")


@contextmanager
def unwritable(path: Path, *, open_already: bool = False) -> Iterator[None]:
    """This process cannot write `path` inside the block: mode 0444, or as root (who
    ignores modes) the immutable attribute. A mode is checked only when a file is opened,
    so a file the store has open already needs the attribute."""
    if os.geteuid() != 0:
        if open_already:
            pytest.skip("a file already open stays writable whatever its mode")
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o600)
        return
    if shutil.which("chattr") is None:
        pytest.skip("no chattr: cannot make a file unwritable for root")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i does not work here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def store_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "chatd.store" and r.levelno == logging.WARNING and text in r.getMessage()
    ]


# --- which errors are the machine's ---------------------------------------------------------


def sqlite_error(sql: str, setup: str = "") -> sqlite3.Error:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        if setup:
            conn.executescript(setup)
        conn.execute(sql)
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{sql} did not fail")


def with_code(name: str, code: int) -> sqlite3.Error:
    exc = sqlite3.OperationalError(name)
    exc.sqlite_errorcode = code  # type: ignore[misc]
    return exc


@pytest.mark.parametrize(
    ("exc", "is_unavailable"),
    [
        (sqlite_error("INSERT INTO t VALUES (1)", "CREATE TABLE t(x); PRAGMA query_only=1"), True),
        (
            sqlite_error(
                "INSERT INTO t VALUES (zeroblob(100000))",
                "CREATE TABLE t(x); PRAGMA max_page_count=2",
            ),
            True,
        ),
        (with_code("disk I/O error", sqlite3.SQLITE_IOERR), True),
        (with_code("disk I/O error", sqlite3.SQLITE_IOERR | (4 << 8)), True),  # IOERR_FSYNC
        (with_code("unable to open database file", sqlite3.SQLITE_CANTOPEN), True),
        (with_code("database is locked", sqlite3.SQLITE_BUSY), True),
        # Programming errors stay what they are: a fault of ours, a 500 or a 1011.
        (sqlite_error("SELECT * FROM no_such_table"), False),
        (sqlite_error("INSERT INTO t VALUES (NULL)", "CREATE TABLE t(x NOT NULL)"), False),
        (sqlite_error("SELECT 1 +"), False),
        (ValueError("half-done work"), False),
        (OSError("disk on fire"), False),
    ],
)
def test_only_the_machines_failures_are_store_unavailable(
    exc: BaseException, is_unavailable: bool
) -> None:
    error = unavailable(exc)
    if not is_unavailable:
        assert error is None
        return
    assert isinstance(error, StoreUnavailable)
    assert (error.code, error.status) == ("store_unavailable", 503)
    assert error.reason == str(exc) and error.__cause__ is exc


# --- a full disk --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["thread", "loop"])
async def test_a_full_disk_refuses_writes_then_takes_them_again(
    store: Store, store_clock: StoreClock, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """Refused writes store nothing and break nothing: once there is room again the same
    store takes the next write, and every message it acknowledged is there, in order."""
    with trio.fail_after(10):
        stored = await fill_the_disk(store)
        threads: list[str] = []
        store.set_commit_observer(lambda _s, _ops: threads.append(threading.current_thread().name))
        for i in range(20):
            if where == "loop":
                store_clock.jump(chatd.store.engine._INLINE_IDLE)  # idle: the loop commits
            (result,) = await append(store, [f"refused {i} {BIG}"])
            assert isinstance(result, StoreUnavailable)
            assert result.reason == "database or disk is full"
        assert set(threads) == {"MainThread" if where == "loop" else "chatd-store-writer"}
        with pytest.raises(StoreUnavailable):
            await store.create_room("r" * 20000, False, [1])  # any write, not only messages
        # One warning for 22 refusals (the filler's last included), and no traceback.
        assert len(store_warnings(caplog, "writes refused")) == 1
        assert not [r for r in caplog.records if r.exc_info]

        await free_the_disk(store)
        (result,) = await append(store, ["after"])
        assert isinstance(result, StoredMessage)
        assert [r.getMessage() for r in store_warnings(caplog, "succeed again")] == [
            "store: writes succeed again, after 22 refused"
        ]
        kept = [m.content for m in reversed(await store.history(1, None, 200))]
        assert kept == [*stored, "after"]


async def test_a_batch_with_a_write_the_disk_refuses_commits_nothing(store: Store) -> None:
    """SQLite rolls the whole transaction back on SQLITE_FULL: the batch is refused as a
    whole, not retried message by message against a transaction that is gone."""
    with trio.fail_after(10):
        stored = await fill_the_disk(store)
        results = await append(store, ["small", f"big {BIG}", "small too"])
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        kept = [m.content for m in reversed(await store.history(1, None, 200))]
        assert kept == stored


# --- a read-only database -------------------------------------------------------------------


async def test_a_read_only_database_refuses_writes(store: Store) -> None:
    with trio.fail_after(10):
        read_only(store, True)
        (result,) = await append(store, ["refused"])
        assert isinstance(result, StoreUnavailable)
        assert result.reason == "attempt to write a readonly database"
        read_only(store, False)
        (result,) = await append(store, ["taken"])
        assert isinstance(result, StoredMessage)


async def test_opened_on_a_database_it_cannot_write_it_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with trio.fail_after(10):
        first = Store(path)
        await first.create_room("r", False, [1])
        await first.aclose()
        with unwritable(path):
            s = Store(path)  # SQLite opens it read-only
            try:
                (result,) = await append(s, ["refused"])
                assert isinstance(result, StoreUnavailable), result
                assert result.reason == "attempt to write a readonly database"
                assert [r.name for r in s.load_rooms_sync()] == ["r"]  # reads go on
            finally:
                await s.aclose()


async def test_a_wal_that_cannot_be_written_refuses_writes_until_it_can(store: Store) -> None:
    with trio.fail_after(10):
        (first,) = await append(store, ["before"])
        assert isinstance(first, StoredMessage)
        with unwritable(Path(f"{store.path}-wal"), open_already=True):
            for _ in range(3):
                (result,) = await append(store, [f"refused {BIG}"])
                assert isinstance(result, StoreUnavailable), result
                assert result.reason == "disk I/O error"  # SQLITE_IOERR_WRITE: EPERM
        (result,) = await append(store, ["after"])
        assert isinstance(result, StoredMessage)
        kept = [m.content for m in reversed(await store.history(1, None, 200))]
        assert kept == ["before", "after"]


# --- the WAL's bound --------------------------------------------------------------------------


MAX_WAL = 256 * 1024


@pytest.fixture
async def small_wal_store(
    tmp_path: Path, store_clock: StoreClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Store]:
    # A checkpoint every 20 operations, so the test needs few writes to cross the bound.
    monkeypatch.setattr(chatd.store.engine, "_CHECKPOINT_OPS", 20)
    s = Store(tmp_path / "wal.db", clock=store_clock, max_wal_bytes=MAX_WAL)
    try:
        yield s
    finally:
        await s.aclose()


async def write_until_refused(store: Store) -> tuple[list[str], StoreUnavailable]:
    stored: list[str] = []
    for i in range(200):
        for result in await append(store, [f"{i}.{j} {BIG}" for j in range(10)]):
            if isinstance(result, StoreUnavailable):
                return stored, result
            assert isinstance(result, StoredMessage), result
            stored.append(result.content)
    raise AssertionError("writes were never refused: the WAL grows without bound")


def wal_size(store: Store) -> int:
    return os.path.getsize(f"{store.path}-wal")


async def test_a_reader_holding_a_snapshot_bounds_the_wal_not_the_disk(
    small_wal_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store = small_wal_store
    with trio.fail_after(20):
        reader = sqlite3.connect(store.path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM messages").fetchone()  # holds its snapshot
            stored, refused = await write_until_refused(store)
            assert "reader holds an old snapshot" in refused.reason
            assert "max_wal_bytes" in refused.reason
            # Past the bound by at most what the writes between two checkpoints add.
            assert MAX_WAL < wal_size(store) < 2 * MAX_WAL
            for _ in range(50):
                (result,) = await append(store, ["still refused"])
                assert isinstance(result, StoreUnavailable)
            assert wal_size(store) < 2 * MAX_WAL
            assert await store.writable() == refused.reason
            reader.execute("COMMIT")
        finally:
            reader.close()
        # The snapshot is let go: the next write's checkpoint finishes, and it is taken.
        (result,) = await append(store, ["after"])
        assert isinstance(result, StoredMessage)
        assert await store.writable() is None
        kept = [m.content for m in reversed(await store.history(1, None, 10000))]
        assert kept == [*stored, "after"]
    assert len(store_warnings(caplog, "writes refused")) == 1
    assert len(store_warnings(caplog, "store: a checkpoint cannot finish")) == 1


async def test_failing_checkpoints_bound_the_wal_and_log_once_an_interval(
    small_wal_store: Store,
    store_clock: StoreClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A checkpoint that fails (an I/O error) was logged at every attempt, every 40 ms
    under load; and the WAL grew as long as the disk had room."""
    store = small_wal_store
    real = chatd.store.engine._checkpoint
    failures: list[str] = []

    def failing(conn: sqlite3.Connection) -> Any:
        failures.append("x")
        exc = sqlite3.OperationalError("disk I/O error")
        exc.sqlite_errorcode = sqlite3.SQLITE_IOERR  # type: ignore[misc]
        raise exc

    with trio.fail_after(20):
        monkeypatch.setattr(chatd.store.engine, "_checkpoint", failing)
        stored, refused = await write_until_refused(store)
        assert refused.reason.startswith("a checkpoint failed (disk I/O error)")
        assert len(failures) >= 2
        assert len(store_warnings(caplog, "store: a checkpoint failed")) == 1
        # An interval later, one more line, which counts the ones it stands for.
        store_clock.jump(chatd.store.engine._LOG_EVERY)
        (result,) = await append(store, ["refused"])
        assert isinstance(result, StoreUnavailable)
        lines = [r.getMessage() for r in store_warnings(caplog, "store: a checkpoint failed")]
        assert len(lines) == 2 and "more like this since the last such line" in lines[1]
        monkeypatch.setattr(chatd.store.engine, "_checkpoint", real)
        (result,) = await append(store, ["after"])
        assert isinstance(result, StoredMessage)
        kept = [m.content for m in reversed(await store.history(1, None, 10000))]
        assert kept == [*stored, "after"]


# --- the rate-limited log ------------------------------------------------------------------


def test_a_recurring_failure_is_logged_once_an_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = trio.testing.MockClock()
    logger = logging.getLogger("chatd.test.ratelimited")
    limited = RateLimitedLog(logger, 10.0, clock.current_time)
    caplog.set_level(logging.INFO, logger=logger.name)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == logger.name]

    assert limited.warning("disk %s", "full")
    for _ in range(99):
        assert not limited.warning("disk %s", "full")
    clock.jump(9.9)
    assert not limited.warning("disk %s", "full")
    assert lines() == ["disk full"]
    clock.jump(0.1)
    assert limited.warning("disk %s", "full")
    assert lines() == ["disk full", "disk full (100 more like this since the last such line)"]
    assert not limited.warning("disk %s", "full")
    # Over: the count of the unlogged is handed back, and the next occurrence is logged
    # at once, without an old count.
    assert limited.reset() == 1
    assert limited.warning("disk %s", "full again")
    assert lines()[-1] == "disk full again"


# --- every protocol, on a real server --------------------------------------------------------


async def post_http(server: Server, room: int, content: str) -> httpx.Response:
    async with server.client() as http:
        return await http.post(
            "/chat-ws/send-message",
            json={"roomId": room, "message": {"content": content}},
            headers={"Authorization": f"Bearer {server.token(1)}"},
        )


async def fill_server_disk(server: Server, room: int) -> None:
    """As `fill_the_disk`, through the HTTP API of a running server."""
    await server.state.store.write(lambda c: c.execute("PRAGMA max_page_count = 1"))
    for i in range(100):
        resp = await post_http(server, room, f"filler {i} {BIG}")
        if resp.status_code == 503:
            return
        assert resp.status_code == 200, resp.text
    raise AssertionError("the disk never filled")


async def test_a_full_disk_is_store_unavailable_on_every_protocol_and_all_recover(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """`POST /chat-ws/send-message` with the disk full was a 500 `server_error` with a
    traceback; /chat closed with 1011, STOMP sent `Internal error`."""
    with trio.fail_after(20):
        server = await start_server(chat=FAST)
        room = await create_room(server, [1, 2, 3])
        await fill_server_disk(server, room)
        acknowledged = [m["content"] for m in await history(server, 1, room)]
        async with chat(server, 2) as ws, stomp_user(server, 3, rooms=[room]) as watcher:
            # HTTP: a documented 503, not a 500 with a traceback.
            resp = await post_http(server, room, f"refused over http {BIG}")
            assert resp.status_code == 503
            assert resp.json() == {
                "error": "store_unavailable",
                "message": "the message store cannot take writes right now; nothing was"
                " stored, try again shortly",
            }
            # /chat: an error reply; the connection stays open.
            await send(ws, room, f"refused over /chat {BIG}")
            reply = await recv(ws)
            assert (reply["type"], reply["code"]) == ("error", "store_unavailable"), reply
            # STOMP: an ERROR naming the SEND (the end of the session, as every ERROR is).
            async with stomp_user(server, 3) as sender:
                await sender.send_frame(
                    "SEND",
                    {
                        "destination": room_dest(room),
                        "content-type": "application/json",
                        "receipt": "r1",
                    },
                    orjson.dumps({"content": f"refused over stomp {BIG}"}),
                )
                error = await sender.expect_error("store_unavailable", receipt_id="r1")
                assert error.body.decode().startswith("store_unavailable: the message store")
            # Logged once for all the refusals (the filler's last one included), without
            # a traceback or an error line.
            assert len(store_warnings(caplog, "writes refused")) == 1
            assert not [
                r
                for r in caplog.records
                if r.name.startswith("chatd") and (r.exc_info or r.levelno >= logging.ERROR)
            ]

            await free_the_disk(server.state.store)
            resp = await post_http(server, room, "over http again")
            assert resp.status_code == 200, resp.text
            await send(ws, room, "over /chat again")
            # The same /chat connection, open all along, hears both.
            assert (await recv_message(ws))["content"] == "over http again"
            assert (await recv_message(ws))["content"] == "over /chat again"
            async with stomp_user(server, 3) as sender:
                await sender.publish(room_dest(room), {"content": "over stomp again"})
            async with server.client() as http:
                ready = await http.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
            again = ["over http again", "over /chat again", "over stomp again"]
            # The STOMP subscriber connected all along heard exactly those.
            heard: list[str] = []
            while len(heard) < len(again):
                frame = await watcher.next_frame()
                body = orjson.loads(frame.body)
                if body.get("type") == "new_message":
                    heard.append(body["message"]["content"])
            assert heard == again
        # Nothing acknowledged is lost, nothing refused is stored.
        kept = [m["content"] for m in await history(server, 1, room)]
        assert kept == [*acknowledged, *again]
