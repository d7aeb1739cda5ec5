"""A connection the server ends with an error while the client is still sending (issue 13
point 2): the client gets the ERROR frame (or the WebSocket close frame), on STOMP over
TCP, STOMP over WebSocket and /chat. Closing a socket with unread input makes the kernel
send a reset, which destroys the answer in flight; the server instead sends its answer,
shuts its side, reads and drops what still comes (for a bounded time and number of
bytes), then closes.

Each client here writes everything first and reads only afterwards, as a client busy
uploading does: without the drain, its send is reset (stomp.py's ConnectionResetError),
or its read is, and on a real network the reset can destroy the answer in flight.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
import wsproto
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Request,
    TextMessage,
)

from chatd.net import connections

from ._chat import chat_url, new_ticket
from .conftest import Server, StartServer
from .stomp_client import (
    assert_carries_on,
    issue_login,
    make_room,
    stomp_user,
)

MAX_FRAME = 65536
# What the client sends after the frame that is too large: well within what the server
# drains (chatd.net.connections.MAX_DRAIN_BYTES), well beyond the socket buffers.
MORE = 768 * 1024
CHUNK = 16 * 1024


async def send_all_it_can(stream: trio.SocketStream, chunks: list[bytes]) -> bool:
    """Send it all at once, so that much of it waits unread in the server's socket when
    the server fails the frame. False when the send was reset: the server closed with
    input unread, and a client such as stomp.py gives up there (ConnectionResetError)."""
    try:
        await stream.send_all(b"".join(chunks))
    except trio.BrokenResourceError:
        return False
    return True


async def read_to_end(stream: trio.SocketStream) -> tuple[bytes, bool]:
    """Everything the server sent, and whether it ended with a reset rather than EOF."""
    data = bytearray()
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return bytes(data), True
        if not chunk:
            return bytes(data), False
        data += chunk


async def stomp_tcp_login(server: Server, stream: trio.SocketStream) -> None:
    login, passcode = await issue_login(server, 1)
    connect = f"CONNECT\naccept-version:1.2\nhost:/\nlogin:{login}\npasscode:{passcode}\n\n\0"
    await stream.send_all(connect.encode())
    got = b""
    while b"\0" not in got:
        got += await stream.receive_some(65536)
    assert got.startswith(b"CONNECTED\n"), got


async def test_stomp_tcp_client_still_sending_gets_its_error(start_server: StartServer) -> None:
    server = await start_server(stomp={"max_frame_bytes": MAX_FRAME})
    room = await make_room(server, [1, 2])
    with trio.fail_after(20):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            stream = await trio.open_tcp_stream("127.0.0.1", server.running.stomp_tcp_port)
            async with stream:
                await stomp_tcp_login(server, stream)
                body = b"x" * (MAX_FRAME + MORE)
                chunks = [b"SEND\ndestination:/queue/x\n\n"]
                chunks += [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
                sent = await send_all_it_can(stream, chunks)
                data, reset = await read_to_end(stream)
            assert b"ERROR\nmessage:Frame too large\n" in data, data[-300:]
            assert data.endswith(b"\0"), data[-300:]
            assert sent and not reset
            await assert_carries_on(server, room, bystander)


class WsClient:
    """A WebSocket client on a raw stream (wsproto), so that it can write without reading."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)

    async def handshake(self, target: str, subprotocols: list[str]) -> None:
        await self.stream.send_all(
            self.ws.send(Request(host="127.0.0.1", target=target, subprotocols=subprotocols))
        )
        while True:
            self.ws.receive_data(await self.stream.receive_some(65536))
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return
                raise AssertionError(event)

    def message(self, data: bytes, *, last: bool = True) -> bytes:
        return self.ws.send(Message(data=data, message_finished=last))

    async def next_message(self) -> bytes:
        buf = bytearray()
        while True:
            for event in self.ws.events():
                assert isinstance(event, TextMessage | BytesMessage), event
                buf += event.data if isinstance(event, BytesMessage) else event.data.encode()
                if event.message_finished:
                    return bytes(buf)
            self.ws.receive_data(await self.stream.receive_some(65536))

    def events_of(self, data: bytes) -> list[object]:
        # Fed raw, then read: the client was not reading while it sent.
        self.ws.receive_data(data)
        events: list[object] = []
        for event in self.ws.events():
            if isinstance(event, TextMessage | BytesMessage) and events:
                last = events[-1]
                if isinstance(last, type(event)) and not last.message_finished:
                    last.data += event.data  # type: ignore[operator]
                    last.message_finished = event.message_finished
                    continue
            events.append(event)
        return events


async def test_stomp_websocket_client_still_sending_gets_its_error(
    start_server: StartServer,
) -> None:
    server = await start_server(stomp={"max_frame_bytes": MAX_FRAME})
    room = await make_room(server, [1, 2])
    login, passcode = await issue_login(server, 1)
    with trio.fail_after(20):
        async with stomp_user(server, 2, rooms=[room]) as bystander:
            stream = await trio.open_tcp_stream("127.0.0.1", server.running.stomp_ws_port)
            async with stream:
                c = WsClient(stream)
                await c.handshake("/ws", ["v12.stomp"])
                connect = f"CONNECT\naccept-version:1.2\nhost:/\nlogin:{login}\npasscode:{passcode}"
                await stream.send_all(c.message((connect + "\n\n\0").encode()))
                assert (await c.next_message()).startswith(b"CONNECTED\n")
                # One STOMP frame that never ends, in WebSocket messages of 16 KiB: the
                # frame, not any one message, goes over the limit.
                chunks = [c.message(b"SEND\ndestination:/queue/x\n\n")]
                chunks += [c.message(b"x" * CHUNK) for _ in range((MAX_FRAME + MORE) // CHUNK)]
                sent = await send_all_it_can(stream, chunks)
                data, reset = await read_to_end(stream)
            events = c.events_of(data)
            errors = [
                e
                for e in events
                if isinstance(e, TextMessage | BytesMessage) and "ERROR" in str(e.data)[:20]
            ]
            assert len(errors) == 1, events
            assert "message:Frame too large" in str(errors[0].data)
            assert isinstance(events[-1], CloseConnection), events
            assert sent and not reset
            await assert_carries_on(server, room, bystander)


async def test_chat_client_still_sending_gets_its_close_frame(start_server: StartServer) -> None:
    server = await start_server(chat={"max_frame_bytes": MAX_FRAME})
    ticket = await new_ticket(server, 1)
    target = chat_url(server, ticket).split("/", 3)[3]
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", server.running.http_port)
        async with stream:
            c = WsClient(stream)
            await c.handshake("/" + target, [])
            # A message over the limit (twice max_frame_bytes), its header first: the
            # server refuses it at once, while the client streams the rest.
            size = 2 * MAX_FRAME + MORE
            frame = c.ws.send(Message(data=b"x" * size))
            chunks = [frame[i : i + CHUNK] for i in range(0, len(frame), CHUNK)]
            sent = await send_all_it_can(stream, chunks)
            data, reset = await read_to_end(stream)
        close = [e for e in c.events_of(data) if isinstance(e, CloseConnection)]
        assert [e.code for e in close] == [1009], close
        assert sent and not reset


async def test_a_websocket_close_handshake_ends_the_drain(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer's close frame ends the drain: a client that answers the server's close
    frame and then waits for the server to close the TCP connection, as browsers do, is
    not kept waiting for the drain's time limit (made a minute here)."""
    monkeypatch.setattr(connections, "ANSWER_SECONDS", 60.0)
    server = await start_server()
    login, passcode = await issue_login(server, 1)
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", server.running.stomp_ws_port)
        async with stream:
            c = WsClient(stream)
            await c.handshake("/ws", ["v12.stomp"])
            connect = f"CONNECT\naccept-version:1.2\nhost:/\nlogin:{login}\npasscode:{passcode}"
            await stream.send_all(c.message((connect + "\n\n\0").encode()))
            assert (await c.next_message()).startswith(b"CONNECTED\n")
            await stream.send_all(c.message(b"DISCONNECT\n\n\0"))
            got = bytearray()
            while True:
                got += await stream.receive_some(65536)
                c.ws.receive_data(bytes(got))
                got.clear()
                closes = [e for e in c.ws.events() if isinstance(e, CloseConnection)]
                if closes:
                    break
            # The client answers the close and keeps its side open; the server closes the
            # connection (and stops counting it) without waiting for the client's EOF.
            await stream.send_all(c.ws.send(closes[0].response()))
            assert await stream.receive_some(65536) == b""
            while server.state.connections.open:
                await trio.testing.wait_all_tasks_blocked()
