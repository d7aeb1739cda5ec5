"""The store contract: every operation of `chatd.store.api.StoreAPI`, run against the
SQLite store and the PostgreSQL one alike, must behave the same. The PostgreSQL
parameter runs on a private server (tests/pg_instance.py), a new database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from chatd.model import Outgoing, StoredMessage
from chatd.store import Store, StoreAPI, StoreClosed, StoreUnavailable
from chatd.store.queries import Change

from .pg_instance import PgInstance, pg_dsn, pg_instance  # noqa: F401 (fixtures)

WINDOW = 600.0
ENDED = -1.0  # an idempotency window that ended before any message was stored


def open_pg(dsn: str) -> StoreAPI:
    from chatd.store.postgres import PgStore

    return PgStore(dsn)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], StoreAPI]:
    """Opens a store of the parameter's kind on a new, empty database."""
    if request.param == "sqlite":
        return lambda: Store(tmp_path / "chatd.db")
    dsn = request.getfixturevalue("pg_dsn")
    return lambda: open_pg(dsn)


@pytest.fixture
async def store(open_store: Callable[[], StoreAPI]) -> AsyncIterator[StoreAPI]:
    opened = open_store()
    try:
        yield opened
    finally:
        await opened.aclose()


async def send(
    store: StoreAPI, room: int, *contents: str, user: int = 1, cmid: str | None = None,
    window: float = WINDOW,
) -> list[tuple[StoredMessage, bool]]:  # fmt: skip
    out = [Outgoing(room, c, client_message_id=cmid) for c in contents]
    with trio.fail_after(10):
        results = await store.append_messages(user, f"user{user}", None, out, window)
    for r in results:
        assert not isinstance(r, BaseException), r
    return [r for r in results if not isinstance(r, BaseException)]


# --- messages -----------------------------------------------------------------------------


async def test_append_returns_increasing_ids_and_runs_hooks_after_commit_in_order(
    store: StoreAPI,
) -> None:
    room = await store.create_room("r", False, [1, 2])
    seen: list[tuple[str, int, bool]] = []

    def hook(new: Outgoing, result: tuple[StoredMessage, bool]) -> None:
        seen.append((new.content, result[0].id, result[1]))

    with trio.fail_after(10):
        results = await store.append_messages(
            1, "alice", "a.png", [Outgoing(room, "one"), Outgoing(room, "two", "text", "t")],
            WINDOW, hook,
        )  # fmt: skip
    (m1, c1), (m2, c2) = [r for r in results if not isinstance(r, BaseException)]
    assert c1 and c2 and 0 < m1.id < m2.id
    assert seen == [("one", m1.id, True), ("two", m2.id, True)]
    assert (m1.user_id, m1.username, m1.profile_image, m1.content) == (1, "alice", "a.png", "one")
    assert await store.get_message(m1.id) == m1
    assert await store.last_message_id() == m2.id


async def test_concurrent_senders_get_distinct_ids_and_hooks_run_in_id_order(
    store: StoreAPI,
) -> None:
    room = await store.create_room("r", True, [])
    published: list[int] = []

    def hook(new: Outgoing, result: tuple[StoredMessage, bool]) -> None:
        published.append(result[0].id)

    async def sender(user: int) -> None:
        for i in range(5):
            out = [Outgoing(room, f"{user}-{i}-{j}") for j in range(3)]
            await store.append_messages(user, f"u{user}", None, out, WINDOW, hook)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for user in range(1, 21):
                nursery.start_soon(sender, user)
    assert len(published) == 20 * 5 * 3
    assert published == sorted(published)  # published in commit order
    assert len(set(published)) == len(published)
    stored = await store.messages_since([room], 0, 1000)
    assert [m.id for m in stored] == published


async def test_client_message_id_is_idempotent_within_the_window_per_user_and_room(
    store: StoreAPI,
) -> None:
    room = await store.create_room("r", False, [1, 2])
    other = await store.create_room("o", False, [1])
    [(first, created)] = await send(store, room, "hi", cmid="c1")
    assert created
    hooks: list[bool] = []
    with trio.fail_after(10):
        [again] = await store.append_messages(
            1, "user1", None, [Outgoing(room, "hi (retry)", client_message_id="c1")], WINDOW,
            lambda new, result: hooks.append(result[1]),
        )  # fmt: skip
    assert again == (first, False)
    assert hooks == [False]  # the hook still runs: the sender's reply waits on it
    [(by_other_user, c2)] = await send(store, room, "hi", user=2, cmid="c1")
    [(in_other_room, c3)] = await send(store, other, "hi", cmid="c1")
    [(after_window, c4)] = await send(store, room, "hi", cmid="c1", window=ENDED)
    assert c2 and c3 and c4
    assert len({first.id, by_other_user.id, in_other_room.id, after_window.id}) == 4
    assert first.client_message_id == "c1"


async def test_history_is_newest_first_and_pages_with_before(store: StoreAPI) -> None:
    room = await store.create_room("r", False, [1])
    other = await store.create_room("o", False, [1])
    ids = [m.id for m, _ in await send(store, room, *[f"m{i}" for i in range(7)])]
    await send(store, other, "elsewhere")
    assert [m.id for m in await store.history(room, None, 100)] == ids[::-1]
    page1 = await store.history(room, None, 3)
    assert [m.id for m in page1] == ids[:-4:-1]
    page2 = await store.history(room, page1[-1].id, 3)
    assert [m.id for m in page2] == ids[-4:-7:-1]
    page3 = await store.history(room, page2[-1].id, 3)
    assert [m.id for m in page3] == ids[:1]
    assert await store.history(room, ids[0], 3) == []
    assert await store.history(9999, None, 10) == []


async def test_messages_since_is_oldest_first_across_rooms_with_a_limit(store: StoreAPI) -> None:
    a = await store.create_room("a", False, [1])
    b = await store.create_room("b", False, [1])
    c = await store.create_room("c", False, [1])
    ids = []
    for room in (a, b, c, a, b):
        [(m, _)] = await send(store, room, f"in {room}")
        ids.append(m.id)
    got = await store.messages_since([b, a, a], 0, 100)
    assert [m.id for m in got] == [ids[0], ids[1], ids[3], ids[4]]
    assert [m.id for m in await store.messages_since([a, b], ids[1], 100)] == ids[3:]
    assert [m.id for m in await store.messages_since([a, b, c], 0, 2)] == ids[:2]
    assert await store.messages_since([], 0, 100) == []
    assert await store.messages_since([a, b, c], ids[-1], 100) == []


async def test_last_and_get_message_when_empty(store: StoreAPI) -> None:
    assert await store.last_message_id() == 0
    assert await store.get_message(1) is None


async def test_edit_and_delete_rules(store: StoreAPI) -> None:
    room = await store.create_room("r", False, [1, 2])
    other = await store.create_room("o", False, [1, 2])
    [(m, _)] = await send(store, room, "original")
    assert await store.change_message(room, m.id, 2, "hijack") == (Change.NOT_YOURS, None)
    assert await store.change_message(other, m.id, 1, "x") == (Change.NO_MESSAGE, None)
    assert await store.change_message(room, m.id + 100, 1, "x") == (Change.NO_MESSAGE, None)
    outcome, edited = await store.change_message(room, m.id, 1, "edited")
    assert outcome == Change.DONE and edited is not None
    assert (edited.content, edited.deleted_at) == ("edited", None) and edited.edited_at
    outcome, by_admin = await store.change_message(room, m.id, None, "moderated")
    assert outcome == Change.DONE and by_admin is not None and by_admin.content == "moderated"
    outcome, deleted = await store.change_message(room, m.id, 1, None)
    assert outcome == Change.DONE and deleted is not None
    assert deleted.content == "" and deleted.deleted_at
    assert await store.change_message(room, m.id, 1, "back") == (Change.NO_MESSAGE, None)
    assert await store.change_message(room, m.id, None, None) == (Change.NO_MESSAGE, None)
    # The deleted message keeps its place (and id) in history.
    assert [h.id for h in await store.history(room, None, 10)] == [m.id]
    assert await store.get_message(m.id) == deleted


async def test_read_marks_and_unread_counts(store: StoreAPI) -> None:
    room = await store.create_room("r", False, [1, 2])
    quiet = await store.create_room("q", False, [1, 2])
    theirs = [m for m, _ in await send(store, room, "a", "b", "c", user=2)]
    [(mine, _)] = await send(store, room, "mine", user=1)
    assert await store.room_summaries(1, [room, quiet]) == {
        room: (3, mine),
        quiet: (0, None),
    }
    assert await store.room_summaries(1, []) == {}
    read_at = await store.mark_read(room, 1, theirs[1].id)
    assert read_at
    assert (await store.room_summaries(1, [room]))[room][0] == 1
    await store.mark_read(room, 1, theirs[0].id)  # never moves back
    assert (await store.room_summaries(1, [room]))[room][0] == 1
    await store.change_message(room, theirs[2].id, 2, None)  # deleted: not unread
    assert (await store.room_summaries(1, [room]))[room][0] == 0
    assert (await store.room_summaries(2, [room]))[room][0] == 1  # alice's, unread by bob


# --- rooms, members, invites, revocations ---------------------------------------------------


async def test_rooms_members_and_invites(store: StoreAPI) -> None:
    a = await store.create_room("a", False, [3, 1, 1])
    b = await store.create_room("b", True, [])
    assert 0 < a < b
    assert await store.add_member(a, 2) is True
    assert await store.add_member(a, 2) is False
    assert await store.remove_member(a, 3) is True
    assert await store.remove_member(a, 3) is False
    await store.add_invite(b, 7)
    await store.add_invite(b, 7)
    await store.update_room(a, "renamed", None)
    await store.update_room(b, None, False)
    await store.update_room(b, None, None)
    rows = {r.id: r for r in store.load_rooms_sync()}
    assert set(rows) == {a, b}
    assert (rows[a].name, rows[a].public, rows[a].members) == ("renamed", False, {1, 2})
    assert (rows[b].name, rows[b].public, rows[b].members, rows[b].invited) == (
        "b", False, frozenset(), {7},
    )  # fmt: skip


async def test_delete_room_removes_everything_and_ids_are_not_reused(store: StoreAPI) -> None:
    room = await store.create_room("gone", False, [1, 2])
    kept = await store.create_room("kept", False, [1])
    await store.add_invite(room, 5)
    sent = [m for m, _ in await send(store, room, "a", "b")]
    await store.mark_read(room, 1, sent[-1].id)
    assert await store.delete_room(room) == 2
    assert [r.id for r in store.load_rooms_sync()] == [kept]
    assert await store.history(room, None, 10) == []
    assert await store.get_message(sent[0].id) is None
    [(later, _)] = await send(store, kept, "later")
    assert later.id > sent[-1].id
    assert await store.delete_room(room) == 0


async def test_revocations_only_move_forward(store: StoreAPI) -> None:
    assert store.load_revocations_sync() == {}
    await store.revoke_logins(1, 100.0)
    await store.revoke_logins(1, 50.0)
    await store.revoke_tokens(2, 200.0)
    await store.revoke_tokens(2, 150.0)
    await store.revoke_logins(2, 300.0)
    await store.revoke_tokens(1, 120.0)
    assert store.load_revocations_sync() == {1: (120.0, 120.0), 2: (300.0, 200.0)}


# --- health and failures --------------------------------------------------------------------


async def test_writable_then_closed(open_store: Callable[[], StoreAPI]) -> None:
    store = open_store()
    with trio.fail_after(10):
        assert await store.writable() is None
    room = await store.create_room("r", False, [1])
    await store.aclose()
    with pytest.raises(StoreClosed):
        await store.append_messages(1, "u", None, [Outgoing(room, "late")], WINDOW)
    with pytest.raises(StoreClosed):
        await store.history(room, None, 10)


async def test_postgresql_down_refuses_with_store_unavailable_and_recovers(
    pg_instance: PgInstance, pg_dsn: str  # noqa: F811 (fixtures)
) -> None:
    store = open_pg(pg_dsn)
    try:
        room = await store.create_room("r", False, [1])
        [(before, _)] = await send(store, room, "before")
        assert [m.id for m in await store.history(room, None, 10)] == [before.id]
        # An administrator ends the connections (the writer's and the reader's): the next
        # operation of each is refused, the one after reconnects.
        assert pg_instance.terminate_connections(pg_dsn) == 2
        with trio.fail_after(10):
            [refused] = await store.append_messages(1, "u", None, [Outgoing(room, "x")], WINDOW)
            assert isinstance(refused, StoreUnavailable)
            assert refused.code == "store_unavailable" and refused.status == 503
            with pytest.raises(StoreUnavailable):
                await store.history(room, None, 10)
        [(after_kill, _)] = await send(store, room, "after the kill")
        assert [m.id for m in await store.history(room, None, 10)] == [after_kill.id, before.id]
        # The server stopped: writes, reads and readiness are refused until it is back.
        await trio.to_thread.run_sync(pg_instance.stop)
        try:
            with trio.fail_after(20):
                [refused] = await store.append_messages(
                    1, "u", None, [Outgoing(room, "y")], WINDOW
                )
                assert isinstance(refused, StoreUnavailable)
                with pytest.raises(StoreUnavailable):
                    await store.history(room, None, 10)
                with pytest.raises(StoreUnavailable):
                    await store.mark_read(room, 1, before.id)
                reason = await store.writable()
                assert reason is not None and reason.startswith("PostgreSQL:")
        finally:
            await trio.to_thread.run_sync(pg_instance.start)
        [(back, created)] = await send(store, room, "back")
        assert created and back.id > after_kill.id
        with trio.fail_after(10):
            assert await store.writable() is None
        assert [m.content for m in await store.history(room, None, 10)] == [
            "back", "after the kill", "before",
        ]  # fmt: skip
    finally:
        await store.aclose()
