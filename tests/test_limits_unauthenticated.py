"""Connections not yet logged in, bounded per client address ([server]
max_unauthenticated_per_address): from accept until the request head is read and, on
STOMP, until the login is accepted, on every listener together. Idle sockets from one
address (issue 12, attack 6b: tens of addresses) must not take every connection or every
STOMP pre-login slot: another address still logs in. The counting first, then the real
server, with the attacker on 127.0.0.2 and the honest client on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing
import trio_websocket

from chatd import config as config_mod
from chatd.net.connections import (
    ACCEPT_BURST,
    MAX_REFUSING,
    WAITING_FULL,
    Connections,
    LoginWait,
    counting,
)

from .conftest import Server, StartServer
from .stomp_client import issue_login, open_stomp
from .test_limits_connections import refused_http, refused_websocket, upgrade_request

TIMEOUT = 20
ATTACKER = "127.0.0.2"


def counts(per_address: int, waiting: int, trusted: tuple[str, ...] = ()) -> Connections:
    c = Connections()
    c.configure(0, per_address, list(trusted), waiting)
    return c


# --- the counting ----------------------------------------------------------------------------


def test_connections_waiting_are_counted_per_address() -> None:
    c = counts(0, 2)
    a1, a2 = c.enter("192.0.2.1"), c.enter("192.0.2.1")
    assert a1 is not None and a2 is not None and a1.waiting and a2.waiting
    refused = c.enter("192.0.2.1")
    assert refused is not None and refused.refused == WAITING_FULL
    other = c.enter("192.0.2.2")  # another address has its own
    assert other is not None and not other.refused
    c.arrived(a1)  # its head came: no longer waiting, still open
    assert (c.waiting_of("192.0.2.1"), c.count_of("192.0.2.1")) == (1, 2)
    a3 = c.enter("192.0.2.1")
    assert a3 is not None and not a3.refused
    for seat in (a1, a2, a3, refused, other):
        c.leave(seat)
    assert (c.open, c.refusing, c.waiting_of("192.0.2.1"), c.count_of("192.0.2.1")) == (0, 0, 0, 0)


def test_a_login_wait_takes_over_and_ends_once() -> None:
    c = counts(0, 1)
    seat = c.enter("192.0.2.1")
    assert seat is not None
    c.arrived(seat)
    wait = c.login_wait("192.0.2.1", "192.0.2.1")
    assert isinstance(wait, LoginWait) and c.waiting_of("192.0.2.1") == 1
    assert c.login_wait("192.0.2.1", "192.0.2.1") == WAITING_FULL
    wait.done()
    wait.done()
    assert c.waiting_of("192.0.2.1") == 0
    c.leave(seat)


def test_behind_a_trusted_proxy_the_forwarded_client_waits() -> None:
    c = counts(0, 1, ("10.0.0.1",))
    seat = c.enter("10.0.0.1")  # the proxy: its head names the client
    assert seat is not None and not seat.waiting
    assert c.login_wait("10.0.0.1", "10.0.0.1") is None  # the proxy's own: not counted
    wait = c.login_wait("10.0.0.1", "203.0.113.5")
    assert isinstance(wait, LoginWait) and c.waiting_of("203.0.113.5") == 1
    assert c.login_wait("10.0.0.1", "203.0.113.5") == WAITING_FULL
    wait.done()
    c.leave(seat)
    assert c.waiting_of("203.0.113.5") == 0


def test_the_limit_is_validated_and_zero_means_none() -> None:
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.from_mapping({"server": {"max_unauthenticated_per_address": -1}}, env={})
    assert str(info.value) == (
        "server.max_unauthenticated_per_address: expected a number of 0 or more, got -1"
    )
    cfg = config_mod.from_mapping({}, env={"CHATD_SERVER_MAX_UNAUTHENTICATED_PER_ADDRESS": "0"})
    assert cfg.server.max_unauthenticated_per_address == 0
    c = counts(0, 0)
    assert all(s is not None and not s.refused for s in [c.enter("192.0.2.1") for _ in range(100)])


# --- the accept loop ---------------------------------------------------------------------


async def test_the_accept_loop_closes_what_it_will_not_answer_before_any_handler() -> None:
    c = counts(0, 1)
    handled: list[trio.SocketStream] = []

    async def handler(stream: trio.SocketStream) -> None:
        seat = c.accepted(stream)  # the one counted at accept: not counted again
        assert seat is not None and not seat.refused
        handled.append(stream)
        await trio.sleep_forever()

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            await nursery.start(trio.serve_listeners, handler, counting(listeners, c))
            first = await trio.open_tcp_stream("127.0.0.1", port)
            await until(lambda: len(handled) == 1)
            assert (c.open, c.waiting_of("127.0.0.1")) == (1, 1)
            c.refusing = MAX_REFUSING  # as many refusals being answered as there may be
            # More than one burst of connections over the limit: each is closed at accept
            # (EOF, no answer), none reaches the handler, nothing stays counted.
            for _ in range(ACCEPT_BURST + 4):
                async with await trio.open_tcp_stream("127.0.0.1", port) as refused:
                    assert await refused.receive_some(100) == b""
            assert len(handled) == 1 and c.open == 1 and c.refused == ACCEPT_BURST + 4
            nursery.cancel_scope.cancel()
        await first.aclose()


# --- through the real server -------------------------------------------------------------


async def until(condition: Callable[[], bool]) -> None:
    """Until the server, in this process, reaches `condition` (the caller's fail_after
    bounds it): each round lets every other task run until all are blocked."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked()


async def from_attacker(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port, local_address=ATTACKER)


async def attacker_reply(port: int, request: bytes) -> bytes:
    stream = await from_attacker(port)
    async with stream:
        await stream.send_all(request)
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    return reply


@asynccontextmanager
async def stomp_ws_from_attacker(
    port: int,
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A STOMP WebSocket from the attacker's address, handshake done, no CONNECT sent."""
    async with trio.open_nursery() as nursery:
        stream = await from_attacker(port)
        conn = await trio_websocket.wrap_client_stream(
            nursery, stream, "127.0.0.1", "/ws", subprotocols=["v12.stomp"]
        )
        try:
            yield conn
        finally:
            await conn.aclose()


async def assert_honest_logs_in(server: Server) -> None:
    """The honest client (127.0.0.1) logs in over STOMP on TCP and on both WebSockets."""
    login, passcode = await issue_login(server, 1)
    for kind in ("tcp", "ws", "http"):
        async with open_stomp(server, kind) as c:
            await c.connect(login, passcode)
            await c.disconnect()


async def test_idle_connections_from_one_address_leave_room_for_others(
    start_server: StartServer,
) -> None:
    with trio.fail_after(TIMEOUT):
        # 127.0.0.1 is no trusted proxy here: each loopback address is a client of its own.
        server = await start_server(
            server={"max_unauthenticated_per_address": 2},
            stomp={"max_unauthenticated_connections": 4},
            http={"trusted_proxies": []},
        )
        running = server.running
        connections = server.state.connections
        async with AsyncExitStack() as idle:
            # Idle STOMP TCP sockets, more than the node's pre-login slots: only the
            # address's own share is kept, the rest are refused at once.
            for n in (1, 2):
                await idle.enter_async_context(await from_attacker(running.stomp_tcp_port))
                await until(lambda n=n: connections.waiting_of(ATTACKER) == n)  # type: ignore[misc]
            for _ in range(4):
                reply = await attacker_reply(running.stomp_tcp_port, b"")
                assert reply.startswith(b"ERROR\n") and b"\nmessage:Too many connections\n" in reply
                assert reply.endswith(WAITING_FULL.encode() + b"\0"), reply
            # Every listener refuses the attacker while it holds its share...
            reply = await attacker_reply(
                running.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            assert refused_http(reply) == {"error": "too_many_connections", "message": WAITING_FULL}
            for port in (running.http_port, running.stomp_ws_port):
                reply = await attacker_reply(
                    port, upgrade_request("/ws", "Sec-WebSocket-Protocol: v12.stomp")
                )
                assert refused_websocket(reply) == (1013, WAITING_FULL.encode())
            # ... and another address logs in, over every STOMP transport.
            await assert_honest_logs_in(server)
            assert connections.waiting_of(ATTACKER) == 2
        # The idle ones gone, the address has its share again.
        await until(lambda: connections.waiting_of(ATTACKER) == 0)
        reply = await attacker_reply(
            running.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]


async def test_a_connection_waits_until_its_head_and_its_stomp_login(
    start_server: StartServer,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_server(
            server={"max_unauthenticated_per_address": 2}, http={"trusted_proxies": []}
        )
        running = server.running
        connections = server.state.connections
        login, passcode = await issue_login(server, 1)
        connect = f"CONNECT\naccept-version:1.2\nhost:/\nlogin:{login}\npasscode:{passcode}\n\n\0"
        # An HTTP request whose head was read, kept alive, no longer waits.
        async with await from_attacker(running.http_port) as kept:
            await kept.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await kept.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
            assert connections.waiting_of(ATTACKER) == 0
            # Two STOMP WebSockets past their handshake wait for their login...
            async with (
                stomp_ws_from_attacker(running.http_port) as first,
                stomp_ws_from_attacker(running.stomp_ws_port) as second,
            ):
                await until(lambda: connections.waiting_of(ATTACKER) == 2)
                async with stomp_ws_from_attacker(running.stomp_ws_port) as third:
                    with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                        await third.get_message()
                    reason = closed.value.reason
                    assert reason is not None
                    assert (reason.code, reason.reason) == (1013, WAITING_FULL)
                # ... until it is accepted: then the address has room again.
                await first.send_message(connect)
                assert str(await first.get_message()).startswith("CONNECTED")
                assert connections.waiting_of(ATTACKER) == 1
                async with stomp_ws_from_attacker(running.stomp_ws_port) as fourth:
                    await fourth.send_message(connect)
                    assert str(await fourth.get_message()).startswith("CONNECTED")
                assert not second.closed
        await until(lambda: connections.waiting_of(ATTACKER) == 0)
