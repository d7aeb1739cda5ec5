"""The main HTTP listener's front door.

Each new connection's request head is read here. A WebSocket upgrade to `/chat` or `/ws`
is served by chatd's own WebSocket layer; anything else is handed, with the bytes already
read, to hypercorn's HTTP protocol and the ASGI app (chatd.http.asgi).

Why not let hypercorn serve the WebSockets too: hypercorn shields its socket writes from
cancellation, so a client that stops reading can neither be cut off nor stop a graceful
shutdown from hanging; and its per-message ASGI events cost several times what a
prebuilt frame written straight to the socket does.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from chatd.config import parse_listen
from chatd.net import websocket as ws
from chatd.net.ws_transport import Upgrade, read_head
from chatd.state import ServerState

log = logging.getLogger("chatd.http")

WsHandler = Callable[[trio.SocketStream, Upgrade], Awaitable[None]]


class _Replay:
    """A stream that first gives back the bytes the front door already read."""

    def __init__(self, stream: trio.SocketStream, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            data, self._head = self._head, b""
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        await self._stream.send_all(data)

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def _is_upgrade(head: bytes) -> bool:
    if not head.startswith(b"GET "):
        return False
    lowered = head.lower()
    return b"\r\nupgrade:" in lowered and b"websocket" in lowered


def _json(code: str, message: str) -> bytes:
    return orjson.dumps({"error": code, "message": message})


def _listeners(addresses: list[str]) -> list[trio.SocketListener]:
    out = []
    for addr in addresses:
        if addr.startswith("fd://"):
            sock = socket.socket(fileno=int(addr[5:]))
        else:
            host, port = parse_listen(addr)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        out.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
    return out


async def serve_front(
    state: ServerState,
    asgi_app: Any,
    hc: HypercornConfig,
    ws_routes: dict[str, WsHandler],
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `stop` is set, then stop accepting and give HTTP connections
    `hc.graceful_timeout` to finish. WebSocket sessions are closed by the caller."""
    app = wrap_app(asgi_app, hc.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(app, hc, lifespan_state)
    context = WorkerContext(None)
    listeners = _listeners(list(state.cfg.http.listen))
    bound = [lst.socket.getsockname()[:2] for lst in listeners]

    async def handle(stream: trio.SocketStream) -> None:
        try:
            head = await read_head(stream)
            if not head:
                await stream.aclose()
                return
            if _is_upgrade(head):
                box = [head]
                del head
                await _websocket(stream, box)
                return
            await TCPServer(
                app, hc, context, ConnectionState(lifespan_state.copy()), _Replay(stream, head)
            )  # type: ignore[arg-type]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()
        except Exception:
            log.exception("connection failed")
            await stream.aclose()

    async def _websocket(stream: trio.SocketStream, box: list[bytes]) -> None:
        head = box.pop()
        try:
            request = ws.parse_request(head)
        except ws.HandshakeError as exc:
            body = _json("bad_handshake", exc.message)
            await stream.send_all(ws.reject_response(exc.status, body))
            await stream.aclose()
            return
        if request is None:  # head too long or cut short
            await stream.aclose()
            return
        handler = ws_routes.get(request.path.split("?", 1)[0])
        if handler is None:
            await stream.send_all(ws.reject_response(404, _json("not_found", "no WebSocket here")))
            await stream.aclose()
            return
        upgrade = Upgrade(request, head[head.index(b"\r\n\r\n") + 4 :])
        del head, request
        await handler(stream, upgrade)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    serve = partial(trio.serve_listeners, handle, [listener])
                    accepting.start_soon(partial(serve, handler_nursery=connections))
                task_status.started([(str(h), int(p)) for h, p in bound])
                await stop.wait()
                accepting.cancel_scope.cancel()
            # Idle keep-alive HTTP connections close when hypercorn sees `terminated`.
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + hc.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
