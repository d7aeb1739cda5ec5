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
