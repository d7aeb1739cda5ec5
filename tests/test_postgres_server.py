"""A real server on PostgreSQL (`[store] backend = "postgresql"`): clients send and
receive over /chat, resume with `since`, and find rooms and history after a restart;
with PostgreSQL stopped, sends are refused with store_unavailable and /readyz says 503,
and all recovers by itself when it is back. A private server (tests/pg_instance.py)."""

from __future__ import annotations

from pathlib import Path

import trio

from ._chat import (
    chat,
    create_room,
    history,
    recv,
    recv_message,
    roundtrip,
    send,
)
from .conftest import StartServer
from .pg_instance import PgInstance, pg_dsn, pg_instance  # noqa: F401 (fixtures)


def on_postgres(dsn: str) -> dict[str, object]:
    return {"backend": "postgresql", "dsn": dsn}


async def test_a_server_on_postgresql_sends_receives_and_keeps_history_across_a_restart(
    start_server: StartServer, pg_dsn: str, tmp_path: Path  # noqa: F811 (fixture)
) -> None:
    with trio.fail_after(30):
        first = await start_server(store=on_postgres(pg_dsn))
        room = await create_room(first, [1, 2], name="on postgres")
        async with chat(first, 1) as alice, chat(first, 2) as bob:
            sent = [await roundtrip(alice, room, f"m{i}") for i in range(3)]
            assert [await recv_message(bob) for _ in sent] == sent
            assert [m["id"] for m in sent] == sorted(m["id"] for m in sent)
        async with chat(first, 2, since=sent[0]["id"]) as resumed:
            assert [await recv_message(resumed) for _ in sent[1:]] == sent[1:]
        async with first.client() as http:
            ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        await first.stop()
        # Nothing went to a SQLite file: only the secrets live beside [store] path.
        assert not (tmp_path / "chatd.db").exists()

        second = await start_server(store=on_postgres(pg_dsn))
        assert await history(second, 2, room) == sent
        async with second.client() as http:
            rooms = await http.get("/chat/rooms", headers={"accessToken": second.token(2)})
        (kept,) = rooms.json()["rooms"]
        assert (kept["id"], kept["name"], kept["members"]) == (room, "on postgres", [1, 2])
        assert kept["lastMessage"] == sent[-1]
        async with chat(second, 1) as alice, chat(second, 2) as bob:
            after = await roundtrip(alice, room, "after the restart")
            assert after["id"] > sent[-1]["id"]
            assert await recv_message(bob) == after


async def test_postgresql_stopped_refuses_sends_and_readiness_then_recovers(
    start_server: StartServer, pg_instance: PgInstance, pg_dsn: str  # noqa: F811 (fixtures)
) -> None:
    with trio.fail_after(60):
        server = await start_server(store=on_postgres(pg_dsn))
        room = await create_room(server, [1, 2])
        async with chat(server, 1) as alice, chat(server, 2) as bob:
            before = await roundtrip(alice, room, "before")
            assert await recv_message(bob) == before
            await trio.to_thread.run_sync(pg_instance.stop)
            try:
                await send(alice, room, "while down")
                reply = await recv(alice)
                assert (reply["type"], reply["code"]) == ("error", "store_unavailable"), reply
                async with server.client() as http:
                    ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["status"] == "not_ready"
                assert ready.json()["reason"].startswith("PostgreSQL:")
            finally:
                await trio.to_thread.run_sync(pg_instance.start)
            # The same connections, open all along, carry on.
            back = await roundtrip(alice, room, "back")
            assert await recv_message(bob) == back
            async with server.client() as http:
                ready = await http.get("/readyz")
            assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        assert [m["content"] for m in await history(server, 2, room)] == ["before", "back"]


async def test_a_message_with_u0000_is_refused_and_the_session_carries_on(
    start_server: StartServer, pg_dsn: str  # noqa: F811 (fixture)
) -> None:
    """PostgreSQL's text cannot hold U+0000: once a DataError that closed the sender's
    socket with 1011. It is refused as bad content on every store now."""
    with trio.fail_after(30):
        server = await start_server(store=on_postgres(pg_dsn))
        room = await create_room(server, [1, 2])
        async with chat(server, 1) as alice, chat(server, 2) as bob:
            await send(alice, room, "nul \u0000 inside")
            reply = await recv(alice)
            assert (reply["type"], reply["code"]) == ("error", "bad_content"), reply
            after = await roundtrip(alice, room, "and then")
            assert await recv_message(bob) == after
        assert [m["content"] for m in await history(server, 1, room)] == ["and then"]
