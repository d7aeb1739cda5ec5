"""The main HTTP listener's front door.

Each new connection's request head is read here. A WebSocket upgrade to `/chat` or `/ws`
is served by chatd's own WebSocket layer (chatd.net.handshake); anything else is handed,
with the bytes already read, to hypercorn's HTTP protocol and the ASGI app
(chatd.net.asgi_server).

Why not let hypercorn serve the WebSockets too: hypercorn shields its socket writes from
cancellation, so a client that stops reading can neither be cut off nor stop a graceful
shutdown from hanging; and its per-message ASGI events cost several times what a
prebuilt frame written straight to the socket does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

from chatd.net import websocket as ws
from chatd.net.asgi_server import TWO_FRAMINGS, ServeHttp, serve_asgi
from chatd.net.connections import Connections, close_with, counting
from chatd.net.handshake import WsHandler, WsRoutes, serve_connection


class _Replay(trio.abc.HalfCloseableStream):
    """A connection whose first bytes, already read by the front door, are read again."""

    def __init__(self, stream: trio.SocketStream, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            data, self._head = self._head, b""
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def serve_front(
    asgi_app: Any,
    hc: HypercornConfig,
    ws_routes: Mapping[str, WsHandler],
    listeners: Sequence[trio.SocketListener],
    stop: trio.Event,
    *,
    connections: Connections | None = None,
    write_timeout: Callable[[], float] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `stop` is set, then stop accepting and give HTTP connections
    `hc.graceful_timeout` to finish. WebSocket sessions are closed by the caller. Every
    connection counts in `connections` (and is refused there over a limit); an HTTP
    response write that takes longer than `write_timeout()` drops its connection."""
    routes = WsRoutes(ws_routes, not_found="no WebSocket here", connections=connections)

    async def front_door(stream: trio.SocketStream, serve_http: ServeHttp) -> None:
        async def http(stream: trio.SocketStream, head: bytes) -> None:
            if ws.two_framings(head):
                # Answered here, before hypercorn reads a byte of it (see _one_framing).
                await close_with(stream, ws.reject_response(400, TWO_FRAMINGS))
                return
            await serve_http(_Replay(stream, head))

        await serve_connection(stream, routes, http)

    await serve_asgi(
        asgi_app,
        hc,
        counting(listeners, connections),
        stop,
        on_connection=front_door,
        write_timeout=write_timeout,
        task_status=task_status,
    )
