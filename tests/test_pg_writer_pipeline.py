"""The PostgreSQL writer sends a batch of messages in one round trip (psycopg's pipeline
mode) and keeps what the one-statement-at-a-time writer gave: ids, `prev_id`s, the
idempotency of client message ids (inside one batch too), a failing operation failing
alone, other operations between messages, and a lost connection failing the batch with
StoreUnavailable. A private server (tests/pg_instance.py), a new database per test."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from psycopg import pq

from chatd.model import Outgoing, StoredMessage
from chatd.store import StoreError, StoreUnavailable
from chatd.store.postgres import PgStore, schema

from .pg_instance import PgInstance, pg_dsn, pg_instance  # noqa: F401 (fixtures)

WINDOW = 600.0
Result = tuple[StoredMessage, bool] | BaseException


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PgStore]:  # noqa: F811 (fixture)
    opened = PgStore(pg_dsn)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
def writer_round_trips(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[[], int]]:
    """How many round trips the writer's connections have made so far: libpq's trace of
    what they sent, counting simple queries (BEGIN, COMMIT and statements without
    parameters outside pipeline mode) and Sync messages (one after every statement with
    parameters outside pipeline mode; in pipeline mode only a sync sends one), after
    each of which the client waits for the server. Counted while the writer is idle."""
    traced: list[tuple[schema.Connection, int]] = []
    connect = schema.connect

    def trace(conn: schema.Connection, fd: int) -> None:
        conn.pgconn.trace(fd)
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)

    def traced_connect(dsn: str) -> schema.Connection:
        conn = connect(dsn)
        if threading.current_thread().name == "chatd-pg-writer":
            fd = os.open(tmp_path / f"writer-{len(traced)}.trace", os.O_WRONLY | os.O_CREAT)
            traced.append((conn, fd))
            trace(conn, fd)
        return conn

    monkeypatch.setattr(schema, "connect", traced_connect)

    def count() -> int:
        for conn, fd in traced:
            conn.pgconn.untrace()  # flushes libpq's buffer
            trace(conn, fd)
        return sum(
            1
            for i in range(len(traced))
            for line in (tmp_path / f"writer-{i}.trace").read_text().splitlines()
            if line.split("\t")[:1] == ["F"] and line.split("\t")[2:3] in (["Sync"], ["Query"])
        )

    try:
        yield count
    finally:
        for conn, fd in traced:
            conn.pgconn.untrace()
            os.close(fd)


async def append(store: PgStore, user: int, messages: list[Outgoing]) -> list[Result]:
    with trio.fail_after(20):
        return await store.append_messages(user, f"user{user}", None, messages, WINDOW)


def stored(results: list[Result]) -> list[tuple[StoredMessage, bool]]:
    out = []
    for r in results:
        assert not isinstance(r, BaseException), r
        out.append(r)
    return out


async def history(store: PgStore, room: int) -> list[StoredMessage]:
    with trio.fail_after(20):
        for _ in range(2):  # once refused, when the reader's connection was cut
            try:
                return list(reversed(await store.history(room, None, 1000)))
            except StoreUnavailable:
                pass
        return list(reversed(await store.history(room, None, 1000)))


def assert_chain(created: list[StoredMessage], before: int) -> None:
    """Each message's prev_id is the one committed just before it."""
    ids = [m.id for m in created]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [m.prev_id for m in created] == [before, *ids[:-1]]


class Gate:
    """Holds the writer thread in an operation of its own until opened, so that what is
    queued meanwhile makes the next batch, in the order it was queued."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self, conn: Any) -> None:
        self.entered.set()
        assert self.opened.wait(20)

    async def close(self, store: PgStore, nursery: trio.Nursery) -> None:
        nursery.start_soon(store.write, self.hold)
        with trio.fail_after(20):
            assert await trio.to_thread.run_sync(self.entered.wait, 20)

    def open(self) -> None:
        self.opened.set()


async def queue_in_order(
    nursery: trio.Nursery, calls: list[Callable[[], Any]], results: list[Any]
) -> None:
    """Start `calls` one after the other, each queued before the next starts."""

    async def run(i: int, call: Callable[[], Any]) -> None:
        try:
            results[i] = await call()
        except Exception as exc:
            results[i] = exc

    for i, call in enumerate(calls):
        nursery.start_soon(run, i, call)
        await trio.testing.wait_all_tasks_blocked()


# --- one round trip -----------------------------------------------------------------------


async def test_a_batch_of_messages_is_one_round_trip(
    store: PgStore, writer_round_trips: Callable[[], int]
) -> None:
    room = await store.create_room("r", True, [])
    before = writer_round_trips()
    [(one, created)] = stored(await append(store, 1, [Outgoing(room, "one")]))
    assert created
    assert writer_round_trips() - before == 1  # BEGIN, the clock's lock, INSERT, COMMIT
    batch = [Outgoing(room, f"m{i}", client_message_id=f"c{i % 7}") for i in range(20)]
    batch += [Outgoing(room, f"n{i}") for i in range(20)]
    before = writer_round_trips()
    results = stored(await append(store, 1, batch))
    assert writer_round_trips() - before == 1
    assert [c for _, c in results] == [True] * 7 + [False] * 13 + [True] * 20
    assert_chain([m for m, c in results if c], one.id)


# --- the same outcomes as one statement at a time ------------------------------------------


async def test_a_batch_keeps_ids_prev_ids_and_client_message_ids(store: PgStore) -> None:
    room = await store.create_room("r", True, [])
    other = await store.create_room("o", True, [])
    [(earlier, _)] = stored(await append(store, 1, [Outgoing(room, "e", client_message_id="e")]))
    seen: list[tuple[str, int, bool]] = []

    def hook(new: Outgoing, result: tuple[StoredMessage, bool]) -> None:
        seen.append((new.content, result[0].id, result[1]))

    batch = [
        Outgoing(room, "a"),
        Outgoing(room, "b", "text", "ts-b", client_message_id="b"),
        Outgoing(room, "b again", client_message_id="b"),  # a duplicate inside the batch
        Outgoing(room, "e again", client_message_id="e"),  # of an earlier batch's
        Outgoing(other, "b elsewhere", client_message_id="b"),  # another room: new
        Outgoing(room, "c", "notice"),
        Outgoing(room, "b a third time", client_message_id="b"),
    ]
    with trio.fail_after(20):
        results = stored(await store.append_messages(1, "user1", "p.png", batch, WINDOW, hook))
    [a, b, b2, e2, b_other, c, b3] = results
    assert [created for _, created in results] == [True, True, False, False, True, True, False]
    assert b2[0] == b[0] and b3[0] == b[0] and e2[0] == earlier
    assert b2[0].content == "b"
    assert_chain([a[0], b[0], b_other[0], c[0]], earlier.id)
    pairs = zip(batch, results, strict=True)
    assert seen == [(new.content, m.id, created) for new, (m, created) in pairs]
    assert (c[0].message_type, c[0].username, c[0].profile_image) == ("notice", "user1", "p.png")
    # What was returned is what was stored.
    assert await history(store, room) == [earlier, a[0], b[0], c[0]]
    assert await history(store, other) == [b_other[0]]
    [(after, _)] = stored(await append(store, 2, [Outgoing(room, "after")]))
    assert after.prev_id == c[0].id


async def test_messages_of_several_callers_in_a_row_are_stored_in_their_order(
    store: PgStore,
) -> None:
    """Those without a client message id that follow one another in a batch are one
    statement: ids, prev_ids, hooks and rows as if stored one by one."""
    room = await store.create_room("r", True, [])
    other = await store.create_room("o", True, [])
    [(first, _)] = stored(await append(store, 1, [Outgoing(room, "first")]))
    seen: list[tuple[str, int]] = []

    def hook(new: Outgoing, result: tuple[StoredMessage, bool]) -> None:
        seen.append((new.content, result[0].id))

    calls = [
        (1, [Outgoing(room, "p1"), Outgoing(other, "p2", "notice", "ts"), Outgoing(room, "p3")]),
        (2, [Outgoing(room, "q1", client_message_id="q"), Outgoing(room, "q2"),
             Outgoing(room, "q3")]),
        (3, [Outgoing(other, "r1"), Outgoing(room, "r2")]),
    ]  # fmt: skip
    gate = Gate()
    results: list[Any] = [None] * len(calls)
    async with trio.open_nursery() as nursery:
        await gate.close(store, nursery)

        def call(user: int, messages: list[Outgoing]) -> Callable[[], Any]:
            return lambda: store.append_messages(
                user, f"user{user}", f"{user}.png", messages, WINDOW, hook
            )

        await queue_in_order(nursery, [call(u, m) for u, m in calls], results)
        gate.open()
    messages = [m for result in results for m, created in stored(result) if created]
    sent = [new for _, batch in calls for new in batch]
    assert len(messages) == len(sent) == 8
    assert_chain(messages, first.id)
    assert seen == [(new.content, m.id) for new, m in zip(sent, messages, strict=True)]
    users = [user for user, batch in calls for _ in batch]
    for new, m, user in zip(sent, messages, users, strict=True):
        assert (m.room_id, m.content, m.message_type, m.user_id) == (
            new.room_id, new.content, new.message_type, user
        )  # fmt: skip
        assert (m.username, m.profile_image, m.client_message_id) == (
            f"user{user}", f"{user}.png", new.client_message_id
        )  # fmt: skip
    assert await history(store, room) == [first, *[m for m in messages if m.room_id == room]]
    assert await history(store, other) == [m for m in messages if m.room_id == other]
    for m in messages:
        assert await store.get_message(m.id) == m
    [(after, _)] = stored(await append(store, 4, [Outgoing(room, "after")]))
    assert after.prev_id == messages[-1].id


async def test_a_failing_message_fails_alone_and_the_rest_are_stored_in_order(
    store: PgStore,
) -> None:
    """Whether the server refuses it (the batch's pipeline is aborted) or psycopg does
    before sending it (what was sent is rolled back), nothing is stored twice."""
    room = await store.create_room("r", True, [])
    [(first, _)] = stored(await append(store, 1, [Outgoing(room, "first")]))
    batch = [
        Outgoing(room, "a"),
        Outgoing(room, "b", client_message_id="b"),
        Outgoing(2**63, "refused by the server"),  # out of BIGINT's range
        Outgoing(room, "c"),
        Outgoing(room, "b again", client_message_id="b"),
        Outgoing(2**63, "refused with a client message id", client_message_id="x"),
        Outgoing(room, "d", client_message_id="d"),
    ]
    [a, b, bad, c, b2, bad2, d] = await append(store, 1, batch)
    for refused in (bad, bad2):
        assert isinstance(refused, Exception) and not isinstance(refused, StoreUnavailable)
    good = stored([a, b, c, b2, d])
    assert [created for _, created in good] == [True, True, True, False, True]
    assert good[3][0] == good[1][0]
    new = [m for m, created in good if created]
    assert_chain(new, first.id)
    assert await history(store, room) == [first, *new]
    # psycopg refuses text with NUL before sending it: what was sent is rolled back.
    batch = [
        Outgoing(room, "e"),
        Outgoing(room, "f", client_message_id="f"),
        Outgoing(room, "refused before it is sent: \u0000"),
        Outgoing(room, "g"),
    ]
    [e, f, nul, g] = await append(store, 1, batch)
    assert isinstance(nul, Exception) and not isinstance(nul, StoreUnavailable)
    more = [m for m, created in stored([e, f, g]) if created]
    assert len(more) == 3
    assert_chain(more, new[-1].id)
    assert await history(store, room) == [first, *new, *more]


async def test_a_failure_reported_while_the_batch_is_still_being_sent_fails_alone(
    store: PgStore,
) -> None:
    """The server answers a failing statement at once: while the writer still sends the
    rest of the batch, psycopg reports it, and then reports every statement after it as
    aborted (`PipelineAborted`, an OperationalError): not a store that is unavailable."""
    room = await store.create_room("r", True, [])
    batch = [Outgoing(room, "a"), Outgoing(2**63, "refused by the server")]
    batch += [Outgoing(room, f"c{i}", client_message_id=f"c{i}") for i in range(300)]
    [a, bad, *rest] = await append(store, 1, batch)
    assert isinstance(bad, Exception) and not isinstance(bad, StoreUnavailable), bad
    new = [m for m, created in stored([a, *rest]) if created]
    assert len(new) == 301
    assert_chain(new, 0)
    assert await history(store, room) == new


# --- other operations in a batch of messages ----------------------------------------------


async def test_other_operations_between_messages_read_their_own_results(store: PgStore) -> None:
    room = await store.create_room("r", True, [])
    [(first, _)] = stored(await append(store, 1, [Outgoing(room, "first")]))

    def refuse(conn: Any) -> None:
        raise ValueError("refused")

    gate = Gate()
    results: list[Any] = [None] * 5
    async with trio.open_nursery() as nursery:
        await gate.close(store, nursery)
        await queue_in_order(
            nursery,
            [
                lambda: store.append_messages(1, "u", None, [Outgoing(room, "a")], WINDOW),
                lambda: store.add_member(room, 7),  # its result is its UPDATE's rowcount
                lambda: store.write(refuse),
                lambda: store.add_member(room, 7),
                lambda: store.append_messages(
                    1, "u", None,
                    [Outgoing(room, "b", client_message_id="b"),
                     Outgoing(room, "b", client_message_id="b")],
                    WINDOW,
                ),  # fmt: skip
            ],
            results,
        )
        gate.open()
    [a] = stored(results[0])
    assert results[1] is True and results[3] is False
    assert isinstance(results[2], ValueError)
    b, b2 = stored(results[4])
    assert b2 == (b[0], False)
    assert_chain([a[0], b[0]], first.id)
    assert await history(store, room) == [first, a[0], b[0]]
    assert 7 in {m for row in await store.rooms() if row.id == room for m in row.members}


# --- a lost connection -----------------------------------------------------------------------


async def test_a_connection_lost_in_the_middle_of_a_batch_fails_it_and_recovers(
    store: PgStore, pg_instance: PgInstance, pg_dsn: str  # noqa: F811 (fixtures)
) -> None:
    room = await store.create_room("r", True, [])
    [(first, _)] = stored(await append(store, 1, [Outgoing(room, "first")]))

    def cut(conn: Any) -> int:
        # The batch's first messages are sent; an administrator ends the connections.
        return pg_instance.terminate_connections(pg_dsn)

    gate = Gate()
    results: list[Any] = [None] * 3
    async with trio.open_nursery() as nursery:
        await gate.close(store, nursery)
        await queue_in_order(
            nursery,
            [
                lambda: store.append_messages(1, "u", None, [Outgoing(room, "a")], WINDOW),
                lambda: store.write(cut),
                lambda: store.append_messages(
                    1, "u", None, [Outgoing(room, "b", client_message_id="b")], WINDOW
                ),
            ],
            results,
        )
        gate.open()
    [a], failed, [b] = results
    assert isinstance(a, StoreUnavailable) and isinstance(b, StoreUnavailable)
    assert isinstance(failed, StoreUnavailable)
    # Nothing of the batch was committed; the next batch connects again.
    retry = [Outgoing(room, "b", client_message_id="b")]
    [(again, created)] = stored(await append(store, 1, retry))
    assert created and again.prev_id == first.id
    assert await history(store, room) == [first, again]


# --- plain messages straight through libpq (chatd.store.postgres.direct) --------------------


@pytest.fixture
def writer_trace(
    writer_round_trips: Callable[[], int], tmp_path: Path
) -> Callable[[], list[list[str]]]:
    """What the writer's connections have sent so far: libpq's trace lines, split."""

    def lines() -> list[list[str]]:
        writer_round_trips()  # flushes the trace
        return [
            line.split("\t")
            for path in sorted(tmp_path.glob("writer-*.trace"))
            for line in path.read_text().splitlines()
            if line.startswith("F\t")
        ]

    return lines


def prepared_names(trace: list[list[str]], message: str) -> list[str]:
    """The statement names of the Parse or Bind messages in `trace`, in order."""
    names = []
    for fields in trace:
        if fields[2:3] == [message]:
            words = fields[3].strip().split(" ")
            names.append((words[1] if message == "Bind" else words[0]).strip('"'))
    return names


async def client_timestamps(store: PgStore, ids: list[int]) -> list[str | None]:
    def read(conn: Any) -> list[str | None]:
        rows = conn.execute(
            "SELECT client_timestamp FROM messages WHERE id = ANY(%s) ORDER BY id", (ids,)
        ).fetchall()
        return [r[0] for r in rows]

    with trio.fail_after(20):
        return await store.read(read)


async def test_plain_messages_are_stored_through_libpq_with_every_character_intact(
    store: PgStore, writer_trace: Callable[[], list[list[str]]]
) -> None:
    room = await store.create_room("r", True, [])
    [(first, _)] = stored(await append(store, 1, [Outgoing(room, "first")]))
    tricky = [
        'a "quoted" word', "back\\slash", "\\\"", "{braces, and commas}", "NULL", "null",
        " spaced ", "new\nline\ttab", "日本語 ✓ 🎉", "'single'", "$1", ",", "}", "{",
    ]  # fmt: skip
    batch = [Outgoing(room, text, "text", text) for text in tricky]
    batch.append(Outgoing(room, "no client timestamp", "notice", None))
    sent_before = len(writer_trace())
    with trio.fail_after(20):
        results = stored(
            await store.append_messages(7, 'user "7" \\ NULL', "NULL", batch, WINDOW)
        )
    messages = [m for m, created in results if created]
    assert len(messages) == len(batch)
    assert_chain(messages, first.id)
    assert [m.content for m in messages] == [new.content for new in batch]
    assert {(m.username, m.profile_image) for m in messages} == {('user "7" \\ NULL', "NULL")}
    assert messages[-1].message_type == "notice"
    # What the writer returned is what the table holds, created_unix to the last bit.
    assert await history(store, room) == [first, *messages]
    for m in messages:
        got = await store.get_message(m.id)
        assert got is not None and got.created_unix == m.created_unix
    assert await client_timestamps(store, [m.id for m in messages]) == [
        new.client_timestamp for new in batch
    ]
    # Through the statements prepared on the writer's connection (for `first`), and
    # nothing else: not run again on the general path.
    trace = writer_trace()
    assert prepared_names(trace, "Parse").count("chatd_append_many_0") == 1
    assert prepared_names(trace[sent_before:], "Parse") == []
    assert prepared_names(trace[sent_before:], "Bind") == ["chatd_lock_0", "chatd_append_many_0"]


async def test_a_plain_batch_the_server_refuses_is_run_again_and_fails_alone(
    store: PgStore, writer_trace: Callable[[], list[list[str]]]
) -> None:
    room = await store.create_room("r", True, [])
    [(first, _)] = stored(await append(store, 1, [Outgoing(room, "first")]))
    batch = [Outgoing(room, "a"), Outgoing(2**63, "out of BIGINT's range"), Outgoing(room, "c")]
    [a, bad, c] = await append(store, 1, batch)
    assert isinstance(bad, Exception) and not isinstance(bad, StoreUnavailable), bad
    new = [m for m, _ in stored([a, c])]
    assert_chain(new, first.id)
    # Text psycopg refuses never reaches the server; the rest is stored.
    [d, nul, e] = await append(store, 1, [Outgoing(room, "d"), Outgoing(room, "\u0000"),
                                          Outgoing(room, "e")])  # fmt: skip
    assert isinstance(nul, Exception) and not isinstance(nul, StoreUnavailable), nul
    more = [m for m, _ in stored([d, e])]
    assert_chain(more, new[-1].id)
    [(after, _)] = stored(await append(store, 1, [Outgoing(room, "after")]))
    assert after.prev_id == more[-1].id
    assert await history(store, room) == [first, *new, *more, after]
    # The statements outlived the refusals: prepared once, used by every plain batch.
    trace = writer_trace()
    assert prepared_names(trace, "Parse").count("chatd_append_many_0") == 1
    assert prepared_names(trace, "Bind").count("chatd_append_many_0") == 3


async def test_statements_gone_from_the_connection_are_prepared_again(
    store: PgStore, writer_trace: Callable[[], list[list[str]]]
) -> None:
    room = await store.create_room("r", True, [])
    [(first, _)] = stored(await append(store, 1, [Outgoing(room, "first")]))
    with trio.fail_after(20):
        await store.write(lambda conn: conn.execute("DEALLOCATE ALL"))
    [(second, _)] = stored(await append(store, 1, [Outgoing(room, "second")]))
    [(third, _)] = stored(await append(store, 1, [Outgoing(room, "third")]))
    assert_chain([first, second, third], 0)
    assert await history(store, room) == [first, second, third]
    trace = writer_trace()
    # `second` found its statement gone and was stored by the general path; `third`
    # prepared new ones.
    assert prepared_names(trace, "Bind").count("chatd_append_many_0") == 2
    assert prepared_names(trace, "Parse").count("chatd_append_many_1") == 1
    assert prepared_names(trace, "Bind").count("chatd_append_many_1") == 1


async def test_a_connection_lost_before_a_plain_batch_fails_it_and_recovers(
    store: PgStore, pg_instance: PgInstance, pg_dsn: str  # noqa: F811 (fixtures)
) -> None:
    room = await store.create_room("r", True, [])
    [(first, _)] = stored(await append(store, 1, [Outgoing(room, "first")]))
    assert pg_instance.terminate_connections(pg_dsn) >= 1
    [lost] = await append(store, 1, [Outgoing(room, "lost")])
    assert isinstance(lost, StoreUnavailable), lost
    [(again, created)] = stored(await append(store, 1, [Outgoing(room, "again")]))
    assert created and again.prev_id == first.id
    assert await history(store, room) == [first, again]


async def test_the_newest_id_outlives_its_rooms_deletion(store: PgStore) -> None:
    """A cluster's nodes take `last_message_id` for what was committed (their sequencer's
    floor, a /chat resume's "now"): deleting the room of the newest message must not make
    it an id that is still to come."""
    kept = await store.create_room("kept", True, [])
    gone = await store.create_room("gone", True, [])
    [(older, _)] = stored(await append(store, 1, [Outgoing(kept, "older")]))
    [(newest, _)] = stored(await append(store, 1, [Outgoing(gone, "newest")]))
    with trio.fail_after(20):
        await store.delete_room(gone)
        assert await store.last_message_id() == newest.id > older.id
    [(after, _)] = stored(await append(store, 1, [Outgoing(kept, "after")]))
    assert after.prev_id == newest.id
    with trio.fail_after(20):
        assert await store.last_message_id() == after.id


async def test_a_committed_plain_batch_whose_ids_cannot_be_read_is_not_stored_again(
    store: PgStore,
) -> None:
    """Without message_clock's row the batch still commits (nothing refuses it) but
    answers no previous id: an error for its callers, never a second run of the batch
    on the general path, which would store every message twice."""
    room = await store.create_room("r", True, [])
    with trio.fail_after(20):
        await store.write(lambda conn: conn.execute("DELETE FROM message_clock"))
    results = await append(store, 1, [Outgoing(room, "a"), Outgoing(room, "b")])
    assert all(isinstance(r, StoreError) for r in results), results
    assert all("stored" in str(r) and "commit failed" not in str(r) for r in results)
    assert [m.content for m in await history(store, room)] == ["a", "b"]
