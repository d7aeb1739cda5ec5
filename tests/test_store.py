"""The SQLite store: restart keeps everything, group commit, schema, the generated secret."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import chatd.store.engine
from chatd.store import Store, StoreClosed, StoreError
from chatd.store.schema import SCHEMA_VERSION

from ._chat import (
    Gate,
    chat,
    chat_url,
    close_code_for,
    create_room,
    history,
    new_ticket,
    recv_message,
    roundtrip,
    send,
)
from .conftest import SECRET, StartServer

FAST = {"rate_per_second": 100000, "rate_burst": 100000}


def db_rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the database file with a connection of our own, as another process would."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


# --- restart ------------------------------------------------------------------------------


async def test_restart_with_the_same_database_keeps_rooms_members_history(
    start_server: StartServer, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        first = await start_server()
        room = await create_room(first, [1, 2], name="kept")
        other = await create_room(first, [2], name="other", public=True)
        async with first.client() as http:
            await http.post(
                f"/admin/rooms/{room}/members",
                json={"userId": 3},
                headers={"Authorization": f"Bearer {first.admin_token()}"},
            )
            await http.delete(
                f"/admin/rooms/{room}/members/2",
                headers={"Authorization": f"Bearer {first.admin_token()}"},
            )
        async with chat(first, 1, username="john") as ws:
            before = [await roundtrip(ws, room, f"m{i}") for i in range(3)]
        leftover = await new_ticket(first, 1)
        await first.stop()

        second = await start_server()
        assert (tmp_path / "chatd.db").exists()
        async with second.client() as http:
            rooms = await http.get("/chat/rooms", headers={"accessToken": second.token(3)})
            (kept,) = rooms.json()["rooms"]
            assert kept["lastMessage"] == before[-1]
            assert {k: kept[k] for k in ("id", "name", "public", "members")} == (
                {"id": room, "name": "kept", "public": False, "members": [1, 3]}
            )
            rooms = await http.get("/chat/rooms", headers={"accessToken": second.token(2)})
            assert rooms.json()["rooms"] == [
                {"id": other, "name": "other", "public": True, "members": [2], "unread": 0,
                 "lastMessage": None}
            ]
        assert await history(second, 3, room) == before
        # Membership works as before on the live side, and ids carry on increasing.
        async with chat(second, 1) as ws, chat(second, 3) as member:
            after = await roundtrip(ws, room, "after restart")
            assert after["id"] > before[-1]["id"]
            assert await recv_message(member) == after
        # Tickets live in memory only: one from before the restart is unknown.
        reason = await close_code_for(second, chat_url(second, leftover))
        assert reason.code == 1003


async def test_a_received_message_is_already_committed(
    start_server: StartServer, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=FAST)
        room = await create_room(server, [1, 2])
        db = tmp_path / "chatd.db"
        async with chat(server, 1) as ws, chat(server, 2) as peer:
            for i in range(20):
                await send(ws, room, f"m{i}")
                got = await recv_message(peer)
                rows = await trio.to_thread.run_sync(
                    db_rows, db, "SELECT content FROM messages WHERE id = ?", got["id"]
                )
                assert rows == [(f"m{i}",)]
                await recv_message(ws)


# --- group commit ----------------------------------------------------------------------------


async def test_many_concurrent_posts_are_all_stored_in_order(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=FAST)
        users = list(range(1, 9))
        room = await create_room(server, users)
        per_user = 25
        received: dict[int, list[dict[str, Any]]] = {}

        async def member(user: int) -> None:
            async with chat(server, user) as ws:
                ready.append(user)
                if len(ready) == len(users):
                    all_ready.set()
                await all_ready.wait()
                for i in range(per_user):
                    await send(ws, room, f"u{user}-{i}")
                received[user] = [await recv_message(ws) for _ in range(per_user * len(users))]

        ready: list[int] = []
        all_ready = trio.Event()
        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(member, user)
        total = per_user * len(users)
        stored = await history(server, 1, room, limit=200)
        assert len(stored) == total
        ids = [m["id"] for m in stored]
        assert ids == sorted(set(ids))
        assert sorted(m["content"] for m in stored) == sorted(
            f"u{u}-{i}" for u in users for i in range(per_user)
        )
        for user in users:
            # Everyone saw every message, and each sender's own in the order sent.
            got = received[user]
            assert sorted(m["id"] for m in got) == ids
            for u in users:
                mine = [m["content"] for m in got if m["user"]["id"] == u]
                assert mine == [f"u{u}-{i}" for i in range(per_user)]
            assert got == received[users[0]]
        metrics = server.state.metrics
        assert metrics.messages_stored == total
        assert metrics.commit_ops >= total


class StoreClock:
    """The store's own clock, apart from trio's, which stays real so that every
    `fail_after` still holds (pytest-trio would run the whole test on a MockClock that a
    fixture returned). It stands still unless a test moves it: no commit is slow, and the
    writer thread is never idle for long, because the machine happens to be busy."""

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
    s = Store(tmp_path / "unit.db", batch_max=512, clock=store_clock)
    try:
        yield s
    finally:
        await s.aclose()


async def post(store: Store, content: str, results: list[Any], cmid: str | None = None) -> None:
    msg, created = await store.append_message(
        room_id=1,
        user_id=1,
        username="u",
        profile_image=None,
        content=content,
        message_type="text",
        client_timestamp=None,
        client_message_id=cmid,
        idempotency_window=600,
    )
    results.append((msg, created))


async def test_writes_waiting_together_share_one_commit(store: Store) -> None:
    with trio.fail_after(10):
        commits: list[int] = []
        store.set_commit_observer(lambda _seconds, ops: commits.append(ops))
        gate = Gate()
        results: list[Any] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.write, gate.job)
                await gate.wait_entered()
                for i in range(100):
                    nursery.start_soon(post, store, f"m{i}", results)
                await trio.testing.wait_all_tasks_blocked()
                gate.release.set()
        finally:
            gate.release.set()
        assert commits == [1, 100]
        ids = sorted(msg.id for msg, _ in results)
        assert ids == list(range(1, 101))
        assert len(await store.history(1, None, 200)) == 100


async def test_writes_started_in_one_loop_turn_reach_the_thread_as_one_batch(
    store: Store,
) -> None:
    """The first message of the first turn finds the store idle and is committed by the
    loop; the 49 after it go to the thread as one batch, and so do the later turns' 50
    (the thread was busy a moment ago: the store's clock stands still)."""
    with trio.fail_after(10):
        commits: list[int] = []
        store.set_commit_observer(lambda _seconds, ops: commits.append(ops))
        results: list[Any] = []

        async def post_after_a_system_call(i: int) -> None:
            # A system call releases the GIL, as a socket write does in the server: a
            # writer thread handed jobs one by one would start a commit right here.
            os.stat(store.path)
            await post(store, f"m{i}", results)

        for turn in range(5):
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(post_after_a_system_call, i)
            assert commits == [1, 49] + [50] * turn
        assert store.inline_commits == 1
        assert sorted(msg.id for msg, _ in results) == list(range(1, 251))


async def test_an_idle_store_commits_a_message_in_the_event_loop(store: Store) -> None:
    with trio.fail_after(10):
        threads: list[str] = []
        store.set_commit_observer(lambda _s, _ops: threads.append(threading.current_thread().name))
        results: list[Any] = []
        for i in range(3):
            await post(store, f"m{i}", results)
        assert threads == ["MainThread"] * 3
        assert store.inline_commits == 3
        assert [m.id for m, _ in results] == [1, 2, 3]
        # Durable before anyone is told: another connection reads them.
        assert db_rows(store.path, "SELECT content FROM messages ORDER BY id") == [
            ("m0",),
            ("m1",),
            ("m2",),
        ]
        # Any other write (rooms, members, reads) still goes to the thread.
        await store.write(lambda c: threads.append(threading.current_thread().name))
        assert threads[-1] == "chatd-store-writer"


async def test_a_message_waits_behind_writes_the_thread_has(store: Store) -> None:
    """Commit order is kept: with the thread busy, a message queues behind its work."""
    with trio.fail_after(10):
        gate = Gate()
        results: list[Any] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.write, gate.job)
                await gate.wait_entered()
                nursery.start_soon(post, store, "queued", results)
                await trio.testing.wait_all_tasks_blocked()
                assert results == []
                gate.release.set()
        finally:
            gate.release.set()
        assert store.inline_commits == 0
        assert [m.content for m, _ in results] == ["queued"]


async def test_a_store_busy_a_moment_ago_sends_messages_to_the_thread(
    store: Store, store_clock: StoreClock
) -> None:
    """Under load the thread's group commit is cheaper per message: the loop commits only
    once the thread has been idle for `_INLINE_IDLE`."""
    with trio.fail_after(10):
        results: list[Any] = []
        await store.write(lambda _conn: None)  # the thread was busy just now
        await post(store, "under load", results)
        assert store.inline_commits == 0
        store_clock.jump(chatd.store.engine._INLINE_IDLE * 0.9)
        await post(store, "still too soon", results)  # and the thread was busy again
        assert store.inline_commits == 0
        store_clock.jump(chatd.store.engine._INLINE_IDLE)
        await post(store, "idle again", results)
        assert store.inline_commits == 1
        assert [m.content for m, _ in results] == ["under load", "still too soon", "idle again"]


async def test_a_slow_commit_in_the_loop_sends_messages_to_the_thread(
    store: Store, store_clock: StoreClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit in the loop slower than `_INLINE_SLOW` (a disk that blocks) sends every
    write to the thread for `_INLINE_BACKOFF`; after that the loop commits again."""
    caplog.set_level(logging.DEBUG, "chatd.store")
    with trio.fail_after(10):
        threads: list[str] = []
        # The first commit in the loop takes a little over the limit by the store's clock:
        # the observer runs while the commit is being timed, in the loop's thread.
        slow = [chatd.store.engine._INLINE_SLOW * 1.5]

        def observe(_seconds: float, _ops: int) -> None:
            threads.append(threading.current_thread().name)
            if threading.current_thread() is threading.main_thread() and slow:
                store_clock.jump(slow.pop())

        store.set_commit_observer(observe)
        results: list[Any] = []
        for i in range(3):
            await post(store, f"m{i}", results)
        assert threads == ["MainThread", "chatd-store-writer", "chatd-store-writer"]
        assert store.inline_commits == 1
        # An internal tuning decision, not something for the operator to act on: debug.
        (line,) = [r for r in caplog.records if "writer thread for 10 s" in r.getMessage()]
        assert line.levelno == logging.DEBUG
        store_clock.jump(chatd.store.engine._INLINE_BACKOFF * 0.9)
        await post(store, "m3", results)
        assert threads[-1] == "chatd-store-writer"
        store_clock.jump(chatd.store.engine._INLINE_BACKOFF * 0.2)
        await post(store, "m4", results)
        assert threads[-1] == "MainThread"
        assert store.inline_commits == 2
        assert [m.content for m, _ in results] == ["m0", "m1", "m2", "m3", "m4"]


async def test_a_write_lock_held_elsewhere_never_stops_the_event_loop(
    store: Store, store_clock: StoreClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin's sqlite3 shell in a write transaction: the message waits on the thread,
    and the event loop keeps running meanwhile."""
    # The thread waits for the lock as long as this test holds it, however slowly the
    # loop turns on a busy machine (the lock is let go in `finally` whatever happens).
    monkeypatch.setattr(chatd.store.engine, "_BUSY_WAIT", 3600.0)
    with trio.fail_after(10):
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        results: list[Any] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(post, store, "waited", results)
                for _ in range(5):
                    await trio.sleep(0.01)  # the loop turns while the message waits
                assert results == []
                other.execute("ROLLBACK")
        finally:
            other.close()
        assert store.inline_commits == 0
        assert [m.content for m, _ in results] == ["waited"]
        results.clear()
        store_clock.jump(chatd.store.engine._INLINE_IDLE)
        await post(store, "later", results)  # the lock is free: the loop commits again
        assert store.inline_commits == 1


async def test_checkpoints_run_on_the_thread_never_in_the_loop(
    store: Store, store_clock: StoreClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint is the store's fsync: it must not hold up the event loop."""
    with trio.fail_after(10):
        ran_in: list[str] = []
        checkpoint = chatd.store.engine._checkpoint

        def recorded(conn: sqlite3.Connection) -> Any:
            ran_in.append(threading.current_thread().name)
            return checkpoint(conn)

        monkeypatch.setattr(chatd.store.engine, "_checkpoint", recorded)
        monkeypatch.setattr(chatd.store.engine, "_CHECKPOINT_COMMITS", 10)
        results: list[Any] = []
        for i in range(50):
            store_clock.jump(chatd.store.engine._INLINE_IDLE)  # each finds the store idle
            await post(store, f"m{i}", results)
            await trio.sleep(0)  # a turn of the loop: the checkpoint reaches the thread
        # At most the message after each of the five checkpoints queued behind it.
        assert store.inline_commits >= 45
        assert len(ran_in) >= 4 and set(ran_in) == {"chatd-store-writer"}
        # SQLite's own checkpoint (which would fsync in the loop) is off for the writer.
        wal_pages = os.path.getsize(str(store.path) + "-wal") // 4096
        assert wal_pages < 60, "the WAL was checkpointed and reused"
        assert len(await store.history(1, None, 100)) == 50


async def test_a_failing_write_does_not_undo_its_batch_neighbours(store: Store) -> None:
    with trio.fail_after(10):
        gate = Gate()
        results: list[Any] = []
        failures: list[BaseException] = []

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO rooms(name, public, created_at) VALUES ('x', 0, 'now')")
            raise ValueError("half-done work")

        async def run_broken() -> None:
            try:
                await store.write(broken)
            except ValueError as exc:
                failures.append(exc)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.write, gate.job)
                await gate.wait_entered()
                nursery.start_soon(post, store, "before", results)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(run_broken)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(post, store, "after", results)
                await trio.testing.wait_all_tasks_blocked()
                gate.release.set()
        finally:
            gate.release.set()
        assert [str(e) for e in failures] == ["half-done work"]
        assert sorted(m.content for m, _ in results) == ["after", "before"]
        # The broken job's own insert was rolled back to its savepoint.
        assert await store.read(lambda c: c.execute("SELECT count(*) FROM rooms").fetchone()) == (
            0,
        )


async def test_idempotency_window(store: Store) -> None:
    with trio.fail_after(10):
        results: list[Any] = []
        await post(store, "a", results, cmid="x")
        await post(store, "b", results, cmid="x")
        await post(store, "c", results, cmid="y")
        (a, a_new), (b, b_new), (c, c_new) = results
        assert (a_new, b_new, c_new) == (True, False, True)
        assert b == a and b.content == "a"
        assert c.id > a.id


async def test_close_finishes_queued_writes_then_refuses(tmp_path: Path) -> None:
    with trio.fail_after(10):
        s = Store(tmp_path / "c.db")
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(post, s, f"m{i}", results)
            await trio.testing.wait_all_tasks_blocked()
            await s.aclose()
        assert len(results) == 10
        with pytest.raises(StoreClosed):
            await post(s, "late", results)
        assert db_rows(tmp_path / "c.db", "SELECT count(*) FROM messages") == [(10,)]


# --- schema -----------------------------------------------------------------------------------


async def test_fresh_file_gets_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "fresh.db"
    s = Store(path)
    await s.aclose()
    assert db_rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert db_rows(path, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in db_rows(path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"rooms", "members", "messages"} <= tables
    # Opening again migrates nothing and keeps the data.
    s = Store(path)
    room_id = await s.create_room("r", False, [1])
    await s.aclose()
    s = Store(path)
    assert [r.id for r in s.load_rooms_sync()] == [room_id]
    await s.aclose()
    assert db_rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


@pytest.mark.parametrize(
    ("durability", "synchronous", "committed_in"),
    [("normal", 1, "MainThread"), ("full", 2, "chatd-store-writer")],
)
async def test_durability_full_fsyncs_every_commit_and_never_in_the_loop(
    tmp_path: Path, durability: str, synchronous: int, committed_in: str
) -> None:
    """`[store] durability = "full"`: synchronous=FULL fsyncs the WAL at each commit, so
    an acknowledged message survives a power loss; that fsync must not block the event
    loop, so even an idle store commits on the writer thread."""
    with trio.fail_after(10):
        s = Store(tmp_path / "d.db", clock=StoreClock(), durability=durability)
        try:
            threads: list[str] = []
            s.set_commit_observer(lambda _s, _ops: threads.append(threading.current_thread().name))
            results: list[Any] = []
            await post(s, "idle", results)  # a fresh store is idle
            assert threads == [committed_in]
            got = await s.write(lambda c: c.execute("PRAGMA synchronous").fetchone())
            assert got == (synchronous,)
        finally:
            await s.aclose()


# --- file modes ---------------------------------------------------------------------------------


async def test_the_database_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    """SQLite created them 0644 (less the umask): every user of the machine could read the
    messages. The -wal and -shm files take the database file's mode."""
    with trio.fail_after(10):
        old = os.umask(0o022)  # the usual umask outside systemd
        try:
            s = Store(tmp_path / "private.db")
        finally:
            os.umask(old)
        try:
            await s.create_room("r", False, [1])
            for suffix in ("", "-wal", "-shm"):
                mode = stat.S_IMODE(os.stat(f"{s.path}{suffix}").st_mode)
                assert mode == 0o600, (suffix, oct(mode))
        finally:
            await s.aclose()


async def test_a_database_readable_by_others_is_named_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One made by an older chatd keeps its mode (an operator may have chosen it), but the
    log says so at every start."""
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    s = Store(path)
    await s.aclose()
    assert f"store: {path} is readable by other users (mode 0644)" in caplog.text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


# --- the generated secret ---------------------------------------------------------------------


async def test_generated_secret_is_private_and_survives_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    with trio.fail_after(10):
        first = await start_server(auth={"jwt_secret": ""})
        secret_file = tmp_path / "chatd.db.jwt-secret"
        assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) >= 32 and secret != SECRET
        room = await create_room(first, [1])
        token = first.token(1)
        await first.stop()

        second = await start_server(auth={"jwt_secret": ""})
        assert secret_file.read_text().strip() == secret
        async with second.client() as http:
            resp = await http.post("/chat/ticket", headers={"accessToken": token})
            assert resp.status_code == 200
        async with chat(second, 1) as ws:
            await roundtrip(ws, room, "same secret")
