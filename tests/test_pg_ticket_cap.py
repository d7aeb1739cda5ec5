"""`[auth] max_tickets_per_user` holds across the nodes of a cluster: two nodes issuing a
ticket to one user at once take turns (an advisory lock per user, held to the commit), so
the second counts the first's ticket. A private PostgreSQL (tests/pg_instance.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator

import pytest
import trio

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
