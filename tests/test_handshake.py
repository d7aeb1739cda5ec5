"""The one WebSocket handshake path (chatd.net.handshake): the same refusals, status and JSON
body, on the main listener and on the dedicated STOMP WebSocket listener."""

from __future__ import annotations

import base64

import orjson
import pytest
import trio

from chatd.net.handshake import is_upgrade

from .conftest import Server

TIMEOUT = 10
KEY = base64.b64encode(b"0123456789abcdef").decode()


def upgrade(path: str, *extra: str, method: str = "GET", version: str = "13") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        f"Sec-WebSocket-Version: {version}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (upgrade("/chat"), True),
        (b"GET /ws HTTP/1.1\r\nUPGRADE: WebSocket\r\n\r\n", True),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"POST /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", False),
        (b"GET /ws HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", False),
        (b"", False),
    ],
)
def test_is_upgrade(head: bytes, expected: bool) -> None:
    assert is_upgrade(head) is expected


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str] | None]:
    """Send `request`, read until the server closes; the status and the JSON body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body) if body else None


def bad(message: str) -> dict[str, str]:
    return {"error": "bad_handshake", "message": message}


@pytest.mark.parametrize("listener", ["http", "stomp"])
@pytest.mark.parametrize(
    ("request_", "status", "body"),
    [
        (upgrade("/ws", version="8"), 426, bad("WebSocket version 13 required")),
        (
            upgrade("/ws").replace(KEY.encode(), b"short"),
            400,
            bad("bad Sec-WebSocket-Key"),
        ),
        (
            upgrade("/ws", "bad header line"),
            400,
            bad("bad header line"),
        ),
    ],
    ids=["version", "key", "header"],
)
async def test_bad_handshakes_get_the_same_answer_on_both_listeners(
    server: Server, listener: str, request_: bytes, status: int, body: dict[str, str]
) -> None:
    port = server.running.http_port if listener == "http" else server.running.stomp_ws_port
    with trio.fail_after(TIMEOUT):
        assert await exchange(port, request_) == (status, body)


async def test_unknown_paths_name_what_each_listener_serves(server: Server) -> None:
    with trio.fail_after(TIMEOUT):
        assert await exchange(server.running.http_port, upgrade("/nope")) == (
            404,
            {"error": "not_found", "message": "no WebSocket here"},
        )
        assert await exchange(server.running.stomp_ws_port, upgrade("/chat")) == (
            404,
            {"error": "not_found", "message": "STOMP is at /ws"},
        )


async def test_the_stomp_listener_speaks_websocket_only(server: Server) -> None:
    port = server.running.stomp_ws_port
    with trio.fail_after(TIMEOUT):
        plain = b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"
        assert await exchange(port, plain) == (426, bad("this endpoint speaks WebSocket only"))
        post = upgrade("/ws", method="POST")
        assert await exchange(port, post) == (405, bad("WebSocket handshakes use GET"))


async def test_a_connection_that_closes_before_its_head_ends_is_let_go(server: Server) -> None:
    for port in (server.running.http_port, server.running.stomp_ws_port):
        with trio.fail_after(TIMEOUT):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n")
                await stream.send_eof()
                assert await stream.receive_some(65536) == b""


# --- the Upgrade field read as the token list it is --------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /ws HTTP/1.1\r\nUpgrade: h2c, WebSocket\r\nConnection: upgrade\r\n\r\n", True),
        (b"GET /ws HTTP/1.1\r\nupgrade:websocket/13\r\n\r\n", True),
        # "websocket" elsewhere in the head is no upgrade.
        (b"GET /websocket HTTP/1.1\r\nUpgrade: foo\r\n\r\n", False),
        (b"GET /x HTTP/1.1\r\nCookie: a=websocket\r\nUpgrade: foo\r\n\r\n", False),
        (b"GET /x HTTP/1.1\r\nX-Upgrade: websocket\r\nUpgrade: foo\r\n\r\n", False),
        (b"GET /x HTTP/1.1\r\nUpgrade: websockets\r\n\r\n", False),
    ],
)
def test_is_upgrade_parses_the_upgrade_field(head: bytes, expected: bool) -> None:
    assert is_upgrade(head) is expected


async def test_a_request_naming_websocket_outside_the_upgrade_field_is_http(server: Server) -> None:
    request = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nCookie: theme=websocket\r\n"
        b"Connection: close\r\n\r\n"
    )
    with trio.fail_after(TIMEOUT):
        assert await exchange(server.running.http_port, request) == (200, {"status": "ok"})


async def test_an_upgrade_listing_websocket_among_others_is_accepted(server: Server) -> None:
    request = upgrade("/ws").replace(b"Upgrade: websocket", b"Upgrade: h2c, WebSocket")
    request = request.replace(b"Connection: Upgrade", b"Connection: keep-alive, UPGRADE")
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", server.running.http_port)
        async with stream:
            await stream.send_all(request)
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = await stream.receive_some(65536)
                assert chunk
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 101 ")


# --- heads too long, two framings ---------------------------------------------------------


@pytest.mark.parametrize("listener", ["http", "stomp"])
async def test_an_over_long_upgrade_head_gets_431_not_a_reset(
    server: Server, listener: str
) -> None:
    port = server.running.http_port if listener == "http" else server.running.stomp_ws_port
    # 256 KB of headers, sent while the answer is read: the server stops reading after
    # 16 KB and answers; the client must still get to send it all and read the answer.
    padding = [f"X-Pad-{i}: {'a' * 1000}" for i in range(256)]
    request = upgrade("/ws", *padding)
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            reply = b""
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, request)
                while chunk := await stream.receive_some(65536):
                    reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert orjson.loads(body) == bad("request headers too large")


async def test_an_upgrade_with_two_framings_is_refused(server: Server) -> None:
    request = upgrade("/ws", "Content-Length: 5", "Transfer-Encoding: chunked")
    with trio.fail_after(TIMEOUT):
        assert await exchange(server.running.http_port, request) == (
            400,
            bad("Content-Length and Transfer-Encoding together"),
        )


# --- close frames after the handshake -----------------------------------------------------


def masked_close(payload: bytes) -> bytes:
    key = b"\x01\x02\x03\x04"
    return (
        bytes([0x88, 0x80 | len(payload)])
        + key
        + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ((0).to_bytes(2, "big"), 1002),
        ((65535).to_bytes(2, "big"), 1002),
        ((1005).to_bytes(2, "big"), 1002),
        ((2500).to_bytes(2, "big") + b"why", 1002),
        (b"\x03", 1002),
        ((1000).to_bytes(2, "big") + b"\xff\xfe", 1007),
        ((4321).to_bytes(2, "big") + b"ciao", 4321),  # a good one is echoed
    ],
)
async def test_a_client_close_frame_is_checked_before_it_is_answered(
    server: Server, payload: bytes, code: int
) -> None:
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", server.running.stomp_ws_port)
        async with stream:
            await stream.send_all(upgrade("/ws", "Sec-WebSocket-Protocol: v12.stomp"))
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = await stream.receive_some(65536)
                assert chunk
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 101 ")
            reply = reply.partition(b"\r\n\r\n")[2]
            await stream.send_all(masked_close(payload))
            while chunk := await stream.receive_some(65536):
                reply += chunk
    # The server's close frame: unmasked, short.
    assert reply[0] == 0x88 and reply[1] == len(reply) - 2, reply
    assert int.from_bytes(reply[2:4], "big") == code
