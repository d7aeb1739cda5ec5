"""An HTTP response that cannot be written in `[http] write_timeout_seconds` is dropped with
its connection: a client that asks for a big history page and never reads it holds the
page for that long, not for as long as it keeps the socket open. Through the real server,
with a raw socket that never reads."""

from __future__ import annotations

import socket

import pytest
import trio

from chatd import config as config_mod

from ._chat import bearer, create_room
from .conftest import Server, StartServer

WRITE_TIMEOUT = 0.5
PAGE = 200
CONTENT = "y" * 50000  # 200 of them: a 10 MB page, more than loopback buffers hold


async def wait_for_open_connections(server: Server, n: int) -> None:
    """Until the server counts `n` connections open (the caller's fail_after bounds it)."""
    while server.state.connections.open != n:
        await trio.sleep(0.01)


async def fill_room(server: Server) -> int:
    room = await create_room(server, [1])
    async with server.client() as http:
        for i in range(PAGE):
            resp = await http.post(
                "/chat-ws/send-message",
                headers=bearer(server.token(1)),
                json={"roomId": room, "message": {"message_type": "text", "content": CONTENT}},
            )
            assert resp.status_code == 200, (i, resp.text)
    return room


async def test_a_response_the_client_never_reads_is_dropped(start_server: StartServer) -> None:
    with trio.fail_after(60):
        server = await start_server(
            http={"write_timeout_seconds": WRITE_TIMEOUT, "max_body_bytes": 1 << 20},
            chat={"rate_per_second": 100000, "rate_burst": 100000, "max_content_chars": 60000},
        )
        room = await fill_room(server)
        await wait_for_open_connections(server, 0)

        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", server.running.http_port))
        token = server.token(1)
        async with trio.SocketStream(sock) as stalled:
            await stalled.send_all(
                f"GET /chat/rooms/{room}/messages?limit={PAGE} HTTP/1.1\r\nHost: x\r\n"
                f"accessToken: {token}\r\n\r\n".encode()
            )
            # Others are served while the stalled client's answer waits.
            async with server.client() as http:
                assert (await http.get("/healthz")).status_code == 200
                page = await http.get(f"/chat/rooms/{room}/messages?limit=2", headers=bearer(token))
                assert page.status_code == 200
            # The stalled one is dropped once its write has taken WRITE_TIMEOUT.
            await wait_for_open_connections(server, 0)
            got = 0
            try:
                while chunk := await stalled.receive_some(65536):
                    got += len(chunk)
            except trio.BrokenResourceError:
                pass  # reset: what the server still held for it was thrown away
            assert got < PAGE * len(CONTENT)  # cut short: far from the whole page
        async with server.client() as http:
            assert (await http.get("/healthz")).status_code == 200


def test_the_write_timeout_is_validated() -> None:
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.from_mapping({"http": {"write_timeout_seconds": 0}}, env={})
    assert str(info.value) == (
        "http.write_timeout_seconds: expected a number greater than 0, got 0.0"
    )
