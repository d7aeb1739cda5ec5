"""A STOMP consumer that stops reading is cut off without holding up the room, and a
server shutdown tells every STOMP client with an ERROR frame before closing."""

from __future__ import annotations

import orjson
import pytest
import trio

from chatd.stomp import Frame

from .conftest import Server, StartServer
from .stomp_client import (
    KINDS,
    Kind,
    StompClient,
    issue_login,
    make_room,
    next_event_of,
    open_raw_tcp,
    open_stomp,
    room_dest,
    stomp_user,
)

SLOW = {
    "rate_per_second": 100000,
    "rate_burst": 100000,
    "outbox_messages": 8,
    "max_content_chars": 60000,
}
BIG = "x" * 50000


async def test_slow_stomp_consumer_is_cut_off_and_the_room_carries_on(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        server = await start_server(chat=SLOW)
        room = await make_room(server, [1, 2, 3])
        async with stomp_user(server, 1) as flooder, stomp_user(server, 2, "ws") as reader:
            login, passcode = await issue_login(server, 3)
            async with open_raw_tcp(server) as silent:
                await silent.connect(login, passcode)
                await silent.subscribe(room_dest(room))
                await reader.subscribe(room_dest(room))
                # Flood until the server reports the cut; the reader gets every message.
                sent: list[int] = []
                while server.state.metrics.slow_consumer_disconnects == 0:
                    assert len(sent) < 400, "the silent client was never cut off"
                    await flooder.publish(room_dest(room), {"content": f"{len(sent)}:{BIG}"})
                    _, body = await next_event_of(reader, "new_message")
                    assert body["message"]["content"].startswith(f"{len(sent)}:")
                    sent.append(body["message"]["id"])
                # The room is not held up by the silent client.
                for i in range(10):
                    await flooder.publish(room_dest(room), {"content": f"after {i}"})
                    _, body = await next_event_of(reader, "new_message")
                    assert body["message"]["content"] == f"after {i}"
                assert server.state.metrics.slow_consumer_disconnects == 1
                # When the silent client reads at last, it finds a prefix of the messages,
                # each whole, then ERROR "Slow consumer", then the end of the stream.
                got: list[int] = []
                while True:
                    frame = await silent.next_frame()
                    if frame.command != "MESSAGE":
                        break
                    got.append(orjson.loads(frame.body)["message"]["id"])
                assert frame.command == "ERROR" and frame.get("message") == "Slow consumer"
                await silent.expect_closed()
                assert got == sent[: len(got)] and len(got) < len(sent)
            # Its session is gone: the user went offline, and others still get everything.
            _, body = await reader.expect_message("user_status_changed")
            assert (body["userId"], body["status"]) == (3, "offline")
            await flooder.publish(room_dest(room), {"content": "last"})
            _, body = await reader.expect_message("new_message")
            assert body["message"]["content"] == "last"


async def _expect_shutdown_error(c: StompClient) -> Frame:
    return await c.expect_error("Server shutting down", "server shutting down")


async def test_shutdown_sends_every_stomp_client_an_error_then_closes(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with (
            stomp_user(server, 1, "tcp", rooms=[room]) as tcp,
            stomp_user(server, 2, "ws", rooms=[room]) as ws,
            stomp_user(server, 3, "http", rooms=[room]) as http,
            open_stomp(server, "tcp") as unconnected,
        ):
            clients = {"tcp": tcp, "ws": ws, "http": http}
            assert set(clients) == set(KINDS)
            # Everyone sees one last message first.
            before = [
                orjson.loads(f.body)
                for f in await tcp.publish(room_dest(room), {"content": "last words"})
            ]
            assert [b["type"] for b in before] == ["user_status_changed"] * 2 + ["new_message"]
            for c in (ws, http):
                _, body = await next_event_of(c, "new_message")
                assert body["message"]["content"] == "last words"
            server.running.shutdown()
            for c in clients.values():
                while True:  # presence of the others may come before the ERROR
                    frame = await c.next_frame()
                    if frame.command == "ERROR":
                        break
                    assert orjson.loads(frame.body)["type"] == "user_status_changed"
                assert frame.get("message") == "Server shutting down"
                assert frame.body == b"server shutting down"
                await c.expect_closed()
            # A connection that never sent CONNECT is simply closed.
            while (event := await unconnected.next_event()) is not None:
                assert isinstance(event, Frame) and event.command == "ERROR", event
            await server.stopped.wait()
        assert server.state.hub.count() == 0
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", server.running.stomp_tcp_port)


async def test_what_was_receipted_survives_shutdown_and_restart(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        server = await start_server()
        room = await make_room(server, [1])
        async with stomp_user(server, 1) as c:
            await c.publish(room_dest(room), {"content": "kept"})
            server.running.shutdown()
            await _expect_shutdown_error(c)
        await server.stopped.wait()
        again = await start_server()
        async with stomp_user(again, 1, "ws", rooms=[room]) as c:
            [own] = await c.publish(room_dest(room), {"content": "after restart"})
            assert orjson.loads(own.body)["message"]["content"] == "after restart"
        stored = await again.state.store.history(room, None, 10)
        assert [m.content for m in stored] == ["after restart", "kept"]


@pytest.mark.parametrize(
    "kind",
    [
        "tcp",
        "ws",
        "http",
    ],
)
async def test_shutdown_is_prompt_with_a_client_that_never_sent_connect(
    start_server: StartServer, kind: Kind
) -> None:
    with trio.fail_after(10):
        server = await start_server(server={"shutdown_grace_seconds": 1.5})
        async with open_stomp(server, kind) as idle, stomp_user(server, 1, kind) as c:
            start = trio.current_time()
            server.running.shutdown()
            await _expect_shutdown_error(c)
            while (event := await idle.next_event()) is not None:
                assert isinstance(event, Frame) and event.command == "ERROR", event
            await server.stopped.wait()
            assert trio.current_time() - start < 1.0
