"""/readyz proves that the store can commit a write. It ran `SELECT 1` through the writer
thread, which answered 200 with the disk full, the database read-only or the WAL past
any bound. Now it commits a row of the `health` table, at most once a second (the
outcome of the last write anyone made answers in between), and says 503 with the reason
when nothing can be committed."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import chatd.store.engine
import chatd.store.operations
from chatd.model import Outgoing
from chatd.store import Store, StoreUnavailable

from ._chat import Gate, create_room
from .conftest import Server, StartServer
from .test_store_failures import StoreClock, fill_the_disk, post_http, read_only, unwritable

READ_ONLY = "attempt to write a readonly database"


def health_rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT id, checked_at FROM health"))
    finally:
        conn.close()


async def readyz(server: Server) -> tuple[int, Any]:
    async with server.client() as http:
        resp = await http.get("/readyz")
    return resp.status_code, resp.json()


# --- on a running server ---------------------------------------------------------------------


async def test_readiness_commits_a_write(server: Server, tmp_path: Path) -> None:
    with trio.fail_after(10):
        before = time.time()
        assert await readyz(server) == (200, {"status": "ready"})
        rows = await trio.to_thread.run_sync(health_rows, tmp_path / "chatd.db")
        assert len(rows) == 1 and rows[0][1] >= before - 1


async def test_readiness_says_why_when_no_write_can_be_committed(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        server = await start_server()
        room = await create_room(server, [1])
        store: Store = server.state.store
        read_only(store, True)  # as a read-only file
        assert (await post_http(server, room, "refused")).status_code == 503
        assert await readyz(server) == (503, {"status": "not_ready", "reason": READ_ONLY})
        read_only(store, False)
        assert (await post_http(server, room, "taken")).status_code == 200
        assert await readyz(server) == (200, {"status": "ready"})


async def test_started_on_a_database_it_cannot_write_it_is_not_ready(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Read-only (or immutable) before the start: SQLite opens it read-only, chatd starts
    and serves what it can read, and says it is not ready."""
    with trio.fail_after(10):
        first = await start_server()
        await create_room(first, [1])
        await first.stop()
        with unwritable(tmp_path / "chatd.db"):
            server = await start_server()
            assert await readyz(server) == (503, {"status": "not_ready", "reason": READ_ONLY})


# --- the probe, on the store's own clock -------------------------------------------------------


@pytest.fixture
async def clocked(tmp_path: Path) -> AsyncIterator[tuple[Store, StoreClock, list[int]]]:
    clock = StoreClock()
    store = Store(tmp_path / "probe.db", clock=clock)
    commits: list[int] = []
    store.set_commit_observer(lambda _s, ops: commits.append(ops))
    try:
        yield store, clock, commits
    finally:
        await store.aclose()


async def test_a_probe_commits_at_most_once_an_interval(
    clocked: tuple[Store, StoreClock, list[int]],
) -> None:
    store, clock, commits = clocked
    with trio.fail_after(10):
        assert await store.writable() is None
        assert len(commits) == 1
        for _ in range(100):  # a probe every few ms: no commit more
            assert await store.writable() is None
        assert len(commits) == 1
        clock.jump(chatd.store.operations.PROBE_EVERY)
        assert await store.writable() is None
        assert len(commits) == 2
        # Any write's outcome answers within the interval: under load, no probe commits.
        clock.jump(chatd.store.operations.PROBE_EVERY)
        await store.append_messages(1, "u", None, [Outgoing(1, "m")], 600)
        assert await store.writable() is None
        assert len(commits) == 3


async def test_the_probe_itself_finds_a_store_that_cannot_commit(
    clocked: tuple[Store, StoreClock, list[int]],
) -> None:
    store, clock, _commits = clocked
    with trio.fail_after(10):
        read_only(store, True)
        clock.jump(chatd.store.operations.PROBE_EVERY)
        assert await store.writable() == READ_ONLY
        read_only(store, False)
        clock.jump(chatd.store.operations.PROBE_EVERY)
        assert await store.writable() is None


async def test_a_refused_write_makes_the_store_not_ready_at_once(
    clocked: tuple[Store, StoreClock, list[int]],
) -> None:
    """A full disk can still take the probe's one small row (SQLite rewrites it in place)
    while messages are refused; the refusal a moment ago is the answer."""
    store, _clock, _commits = clocked
    with trio.fail_after(10):
        assert await store.writable() is None
        await fill_the_disk(store)
        assert await store.writable() == "database or disk is full"


async def test_a_writer_that_does_not_answer_is_not_ready(
    clocked: tuple[Store, StoreClock, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, clock, _commits = clocked
    monkeypatch.setattr(chatd.store.operations, "PROBE_TIMEOUT", 0.05)
    gate = Gate()
    with trio.fail_after(10):
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.write, gate.job)
                await gate.wait_entered()
                clock.jump(chatd.store.operations.PROBE_EVERY)
                assert await store.writable() == "no write was committed within 0.05 s"
                gate.release.set()
        finally:
            gate.release.set()
        clock.jump(chatd.store.operations.PROBE_EVERY)
        assert await store.writable() is None


def test_store_unavailable_is_a_client_error_with_a_503() -> None:
    exc = StoreUnavailable("database or disk is full")
    assert (exc.status, exc.code, exc.reason) == (503, "store_unavailable", exc.reason)
