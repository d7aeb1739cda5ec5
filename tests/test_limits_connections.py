"""Connection limits, server-wide and per client address ([server] max_connections and
max_connections_per_address), counted on every public listener from accept to close and
refused with an answer each protocol's client can read: HTTP 503 with the JSON error, a
WebSocket accepted and closed with 1013, a STOMP ERROR frame. Behind a trusted proxy the
forwarded address is what counts. The counting itself first, then the real server."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest
import trio

from chatd import config as config_mod
from chatd.net.connections import (
    ADDRESS_FULL,
    MAX_REFUSING,
    SERVER_FULL,
    Connections,
    address_key,
    forwarded_for,
)

from ._chat import new_ticket
from .conftest import Server, StartServer
from .stomp_client import issue_login, open_stomp

TIMEOUT = 20
KEY = base64.b64encode(b"0123456789abcdef").decode()


def counts(max_total: int, per_address: int, trusted: tuple[str, ...] = ()) -> Connections:
    c = Connections()
    c.configure(max_total, per_address, list(trusted))
    return c


# --- the counting ----------------------------------------------------------------------------


def test_connections_are_counted_per_address_and_in_total() -> None:
    c = counts(3, 2)
    a1, a2 = c.enter("192.0.2.1"), c.enter("192.0.2.1")
    assert a1 is not None and a2 is not None and not a1.refused and not a2.refused
    refused = c.enter("192.0.2.1")
    assert refused is not None and refused.refused == ADDRESS_FULL
    b1 = c.enter("192.0.2.2")
    assert b1 is not None and not b1.refused
    full = c.enter("192.0.2.3")
    assert full is not None and full.refused == SERVER_FULL
    assert (c.open, c.refusing, c.refused) == (3, 2, 2)
    for seat in (refused, full, a1):
        c.leave(seat)
    assert (c.open, c.refusing) == (2, 0)
    again = c.enter("192.0.2.1")  # a1 left: its address has room again
    assert again is not None and not again.refused
    for seat in (again, a2, b1):
        c.leave(seat)
    assert c.open == 0 and c.count_of("192.0.2.1") == 0


def test_zero_means_no_limit() -> None:
    c = counts(0, 0)
    seats = [c.enter("192.0.2.1") for _ in range(1000)]
    assert all(s is not None and not s.refused for s in seats)


def test_an_ipv6_client_counts_by_its_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("[2001:db8::1]:443") == address_key("2001:db8::2")
    assert address_key("192.0.2.7:5555") == "192.0.2.7"
    c = counts(0, 1)
    first = c.enter("2001:db8:1:2::1")
    assert first is not None and not first.refused
    other = c.enter("2001:db8:1:2::99")
    assert other is not None and other.refused == ADDRESS_FULL


def test_refusals_being_answered_are_bounded() -> None:
    c = counts(1, 0)
    assert c.enter("192.0.2.1") is not None
    answered = [c.enter("192.0.2.2") for _ in range(MAX_REFUSING)]
    assert all(s is not None and s.refused for s in answered)
    assert c.enter("192.0.2.2") is None  # closed without an answer
    c.leave(answered[0])  # type: ignore[arg-type]
    assert c.enter("192.0.2.2") is not None


def test_a_trusted_proxy_counts_against_the_forwarded_address() -> None:
    c = counts(0, 1, ("10.0.0.0/8", "192.0.2.10"))
    proxied = c.enter("10.1.2.3")
    assert proxied is not None and proxied.trusted and proxied.key is None
    # The right-most address that is not a trusted proxy is the client.
    chain = ["198.51.100.1", " 203.0.113.5", "192.0.2.10 "]
    assert c.forwarded(proxied, chain) is None
    assert c.count_of("203.0.113.5") == 1
    second = c.enter("10.1.2.4")
    assert second is not None
    assert c.forwarded(second, ["203.0.113.5"]) == ADDRESS_FULL
    assert second.refused == ADDRESS_FULL
    # No client named (or only proxies): the total alone counts it.
    third = c.enter("192.0.2.10")
    assert third is not None and c.forwarded(third, []) is None
    assert c.forwarded(third, ["10.9.9.9"]) is None
    assert third.key is None
    for seat in (proxied, second, third):
        c.leave(seat)
    assert c.open == 0 and c.refusing == 0 and c.count_of("203.0.113.5") == 0


def test_the_forwarded_header_is_ignored_from_anyone_else() -> None:
    c = counts(0, 1, ("10.0.0.0/8",))
    direct = c.enter("192.0.2.1")
    assert direct is not None and not direct.trusted
    assert c.forwarded(direct, ["203.0.113.5"]) is None
    assert c.count_of("203.0.113.5") == 0 and c.count_of("192.0.2.1") == 1


def test_forwarded_for_reads_every_field_of_the_head() -> None:
    head = (
        b"GET / HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nHost: x\r\n"
        b"x-forwarded-for: 3.3.3.3\r\n\r\nX-Forwarded-For: 9.9.9.9"
    )
    assert [e.strip() for e in forwarded_for(head)] == ["1.1.1.1", "2.2.2.2", "3.3.3.3"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"http": {"trusted_proxies": ["10.0.0.0/8", "proxy.local"]}},
         "http.trusted_proxies: expected IP addresses or CIDR networks, got 'proxy.local'"),
        ({"server": {"max_connections": -1}},
         "server.max_connections: expected a number of 0 or more, got -1"),
        ({"server": {"max_connections_per_address": "many"}},
         "server.max_connections_per_address: expected an integer, got 'many'"),
        ({"chat": {"outbox_bytes": 0}},
         "chat.outbox_bytes: expected a number greater than 0, got 0"),
    ],
)  # fmt: skip
def test_the_limits_are_validated(raw: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.from_mapping(raw, env={})
    assert str(info.value) == message


def test_the_limits_come_from_the_environment_too() -> None:
    cfg = config_mod.from_mapping(
        {},
        env={
            "CHATD_HTTP_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8",
            "CHATD_SERVER_MAX_CONNECTIONS_PER_ADDRESS": "0",
        },
    )
    assert cfg.http.trusted_proxies == ["10.0.0.0/8", "fd00::/8"]
    assert cfg.server.max_connections_per_address == 0


# --- through the real server -------------------------------------------------------------


async def open_count(server: Server, n: int) -> None:
    """Until the server counts `n` open connections (the caller's fail_after bounds it):
    a client's close reaches the server a moment after the client returns."""
    while server.state.connections.open != n:
        await trio.sleep(0.01)


def upgrade_request(path: str, *extra: str) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_to_end(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    return reply


def refused_websocket(reply: bytes) -> tuple[int, bytes]:
    """The close code and reason of a WebSocket accepted and closed at once."""
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), reply[:200]
    assert rest[0] == 0x88 and rest[1] == len(rest) - 2, rest
    return int.from_bytes(rest[2:4], "big"), rest[4:]


def refused_http(reply: bytes) -> dict[str, str]:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), reply[:200]
    return dict(orjson.loads(body))


@asynccontextmanager
async def held_chat(server: Server, ticket: str, *extra: str) -> AsyncIterator[trio.SocketStream]:
    """A /chat WebSocket on the main listener, accepted and left open."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.running.http_port)
    async with stream:
        await stream.send_all(upgrade_request(f"/chat?ticket={ticket}", *extra))
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = await stream.receive_some(65536)
            assert chunk, "closed during the handshake"
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 101 "), reply[:200]
        yield stream


async def assert_refused_everywhere(server: Server, why: str) -> None:
    running = server.running
    body = refused_http(
        await read_to_end(running.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    )
    assert body == {"error": "too_many_connections", "message": why}
    for port, path in ((running.http_port, "/chat"), (running.http_port, "/ws"),
                       (running.stomp_ws_port, "/ws")):  # fmt: skip
        reply = await read_to_end(port, upgrade_request(path, "Sec-WebSocket-Protocol: v12.stomp"))
        assert refused_websocket(reply) == (1013, why.encode())
        # The subprotocol a browser asked for is echoed, or it would not read the close.
        assert b"\r\nSec-WebSocket-Protocol: v12.stomp\r\n" in reply
    reply = await read_to_end(running.stomp_tcp_port, b"CONNECT\naccept-version:1.2\n\n\0")
    assert reply.startswith(b"ERROR\n"), reply
    assert b"\nmessage:Too many connections\n" in reply and reply.endswith(why.encode() + b"\0")


@pytest.mark.parametrize("limit", ["total", "address"])
async def test_a_connection_over_a_limit_is_refused_on_every_listener(
    start_server: StartServer, limit: str
) -> None:
    # From 127.0.0.1, not a trusted proxy here, so it counts as one client address.
    server_cfg = {"max_connections": 2} if limit == "total" else {"max_connections_per_address": 2}
    why = (
        "the server has too many connections; try again later"
        if limit == "total"
        else "too many connections from your address; try again later"
    )
    with trio.fail_after(TIMEOUT):
        server = await start_server(server=server_cfg, http={"trusted_proxies": []})
        login, passcode = await issue_login(server, 1)
        ticket = await new_ticket(server, 2)
        await open_count(server, 0)
        async with open_stomp(server, "tcp") as first, held_chat(server, ticket):
            await first.connect(login, passcode)
            await open_count(server, 2)
            await assert_refused_everywhere(server, why)
            assert server.state.connections.open == 2
            # The sessions already open carry on.
            await first.send_frame("DISCONNECT", {"receipt": "bye"})
            assert (await first.next_frame()).command == "RECEIPT"
        # Once they are gone, new connections are taken again.
        await open_count(server, 0)
        async with server.client() as http:
            assert (await http.get("/healthz")).status_code == 200


async def test_behind_a_trusted_proxy_the_forwarded_address_counts(
    start_server: StartServer,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_server(
            server={"max_connections_per_address": 1},
            http={"trusted_proxies": ["127.0.0.1"]},
        )
        tickets = [await new_ticket(server, 1), await new_ticket(server, 2)]
        await open_count(server, 0)
        async with held_chat(server, tickets[0], "X-Forwarded-For: 203.0.113.5"):
            await open_count(server, 1)
            port = server.running.http_port
            for xff in (
                "203.0.113.5",
                "198.51.100.1, 203.0.113.5",  # the right-most untrusted is the client
                "203.0.113.5, 127.0.0.1",  # a trusted proxy in the chain is skipped
            ):
                reply = await read_to_end(port, upgrade_request("/ws", f"X-Forwarded-For: {xff}"))
                assert refused_websocket(reply)[0] == 1013, xff
            # Another client through the same proxy is let in, and so is the proxy itself
            # (its own requests name no client).
            async with held_chat(server, tickets[1], "X-Forwarded-For: 203.0.113.6"):
                reply = await read_to_end(
                    port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                assert reply.startswith(b"HTTP/1.1 200 ")


async def test_the_forwarded_header_of_an_untrusted_peer_is_ignored(
    start_server: StartServer,
) -> None:
    with trio.fail_after(TIMEOUT):
        server = await start_server(
            server={"max_connections_per_address": 1}, http={"trusted_proxies": ["10.0.0.1"]}
        )
        ticket = await new_ticket(server, 1)
        await open_count(server, 0)
        async with held_chat(server, ticket, "X-Forwarded-For: 203.0.113.5"):
            await open_count(server, 1)
            # Another "client" named in the header is still 127.0.0.1, already at its limit.
            reply = await read_to_end(
                server.running.http_port,
                upgrade_request("/ws", "X-Forwarded-For: 203.0.113.99"),
            )
            assert refused_websocket(reply)[0] == 1013
