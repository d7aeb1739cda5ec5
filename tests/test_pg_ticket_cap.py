"""`[auth] max_tickets_per_user` holds across the nodes of a cluster: two nodes issuing a
ticket to one user at once take turns (an advisory lock per user, held to the commit), so
the second counts the first's ticket. A private PostgreSQL (tests/pg_instance.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest
import trio
import trio.testing

from chatd.store.postgres import PgStore, queries, schema

from .pg_instance import pg_dsn, pg_instance  # noqa: F401 (fixtures)


@pytest.fixture
async def two_nodes(pg_dsn: str) -> AsyncIterator[tuple[PgStore, PgStore]]:  # noqa: F811
    a, b = PgStore(pg_dsn), PgStore(pg_dsn)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_two_nodes_issuing_at_once_do_not_pass_the_cap(
    two_nodes: tuple[PgStore, PgStore],
) -> None:
    a, b = two_nodes
    expires = time.time() + 30
    entered, release = threading.Event(), threading.Event()

    def issue_and_hold(conn: schema.Connection) -> bool:
        # Node A issues the user's only allowed ticket and has not committed yet.
        issued = queries.issue_ticket(conn, b"a" * 32, 7, "{}", expires, 1, time.time())
        entered.set()
        release.wait(20)
        return issued

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            held: list[bool] = []

            async def node_a() -> None:
                held.append(await a.write(issue_and_hold))

            nursery.start_soon(node_a)
            assert await trio.to_thread.run_sync(entered.wait, 20)
            got: list[bool] = []
            b_done = trio.Event()

            async def node_b() -> None:
                got.append(await b.issue_ticket(b"b" * 32, 7, "{}", expires, 1))
                b_done.set()

            nursery.start_soon(node_b)
            # Node B must wait for A's commit: it cannot answer while A holds its ticket.
            with trio.move_on_after(1):
                await b_done.wait()
            assert not b_done.is_set(), f"node B issued {got} while node A's was pending"
            release.set()
        assert held == [True] and got == [False]
        # Another user is not held up by this one.
        assert await b.issue_ticket(b"c" * 32, 8, "{}", expires, 1)


async def test_two_nodes_issuing_to_the_same_users_in_opposite_orders_do_not_deadlock(
    two_nodes: tuple[PgStore, PgStore],
) -> None:
    """Node A's batch issues to users 1 then 2, node B's to 2 then 1, and each reaches the
    middle of its batch before the other goes on: the ticket locks taken in the order of
    the jobs would be a deadlock (PostgreSQL ends one batch: 503 store_unavailable). Each
    batch takes its users' locks first, in one order: B waits for A's commit."""
    a, b = two_nodes
    expires = time.time() + 30
    gates = {name: (threading.Event(), threading.Event()) for name in "ab"}
    middles = {"a": threading.Event(), "b": threading.Event()}

    def gate(name: str) -> Callable[[schema.Connection], None]:
        entered, opened = gates[name]

        def hold(conn: schema.Connection) -> None:
            entered.set()
            assert opened.wait(20)

        return hold

    def middle(mine: str, other: str) -> Callable[[schema.Connection], None]:
        def wait(conn: schema.Connection) -> None:
            # Between its two tickets; gives up on the other batch after a while (it never
            # comes when this batch holds the lock it waits for, as it should).
            middles[mine].set()
            middles[other].wait(3)

        return wait

    results: dict[str, list[object]] = {"a": [None] * 3, "b": [None] * 3}

    async def queue(store: PgStore, name: str, first: int, second: int) -> None:
        other = "b" if name == "a" else "a"
        calls = [
            lambda: store.issue_ticket(f"{name}1".encode() * 16, first, "{}", expires, 5),
            lambda: store.write(middle(name, other)),
            lambda: store.issue_ticket(f"{name}2".encode() * 16, second, "{}", expires, 5),
        ]

        async def run(i: int) -> None:
            try:
                results[name][i] = await calls[i]()
            except Exception as exc:
                results[name][i] = exc

        for i in range(3):
            nursery.start_soon(run, i)
            await trio.testing.wait_all_tasks_blocked()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for name, store in (("a", a), ("b", b)):
                nursery.start_soon(store.write, gate(name))
                assert await trio.to_thread.run_sync(gates[name][0].wait, 20)
            await queue(a, "a", 1, 2)
            await queue(b, "b", 2, 1)
            for _, opened in gates.values():
                opened.set()
    assert results == {"a": [True, None, True], "b": [True, None, True]}
