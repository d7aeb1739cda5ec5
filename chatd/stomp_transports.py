"""Byte movers for STOMP sessions: WebSocket (own listener and on the HTTP server) and TCP."""

from __future__ import annotations

import logging
from functools import partial

import trio
import trio_websocket

from .asgi_ws import AsgiWebSocket, Disconnected, Receive, Scope, Send, header
from .auth import origin_allowed
from .config import parse_listen
from .state import ServerState
from .stomp_session import StompSession

log = logging.getLogger("chatd.stomp")

SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")
_FORBIDDEN = b'{"error":"origin_not_allowed","message":"origin not allowed"}'


def choose_subprotocol(offered: list[str]) -> str | None:
    for proto in SUBPROTOCOLS:
        if proto in offered:
            return proto
    return None


def _as_message(frame: bytes) -> str | bytes:
    """A frame goes as a text message when it is valid UTF-8, else as binary."""
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError:
        return frame


class AsgiTransport:
    def __init__(self, ws: AsgiWebSocket) -> None:
        self.ws = ws

    async def receive(self) -> bytes | None:
        try:
            data = await self.ws.receive()
        except Disconnected:
            return None
        return data.encode("utf-8") if isinstance(data, str) else data

    async def send_frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            msg = _as_message(frame)
            if isinstance(msg, str):
                await self.ws.send_text(msg)
            else:
                await self.ws.send_bytes(msg)

    async def aclose(self) -> None:
        await self.ws.close(1000, "")


class TrioWebSocketTransport:
    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def receive(self) -> bytes | None:
        try:
            data = await self.ws.get_message()
        except trio_websocket.ConnectionClosed:
            return None
        return data.encode("utf-8") if isinstance(data, str) else data

    async def send_frames(self, frames: list[bytes]) -> None:
        try:
            for frame in frames:
                await self.ws.send_message(_as_message(frame))
        except trio_websocket.ConnectionClosed:
            raise Disconnected() from None

    async def aclose(self) -> None:
        await self.ws.aclose()


class TcpTransport:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream

    async def receive(self) -> bytes | None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        return data or None

    async def send_frames(self, frames: list[bytes]) -> None:
        try:
            await self.stream.send_all(b"".join(frames))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Disconnected() from None

    async def aclose(self) -> None:
        await self.stream.aclose()


async def run_session(state: ServerState, kind: str, transport: object) -> None:
    """Never raises: one connection's failure stays with that connection."""
    session = StompSession(state, kind)
    try:
        await session.run(transport)  # type: ignore[arg-type]
    except Disconnected:
        pass
    except Exception:
        log.exception("stomp %s session failed", kind)


async def serve_stomp_asgi(state: ServerState, scope: Scope, receive: Receive, send: Send) -> None:
    """`/ws` on the main HTTP listener."""
    ws = AsgiWebSocket(scope, receive, send)
    try:
        await ws.wait_connect()
    except Disconnected:
        return
    if not origin_allowed(header(scope, b"origin"), state.cfg.auth.allowed_origins):
        state.metrics.auth_failures["origin"] += 1
        await ws.reject(403, _FORBIDDEN)
        return
    if state.closing.is_set():
        await ws.reject(503, b'{"error":"shutting_down","message":"server shutting down"}')
        return
    await ws.accept(choose_subprotocol(list(scope.get("subprotocols", ()))))
    await run_session(state, "websocket", AsgiTransport(ws))


async def _handle_ws_request(state: ServerState, request: trio_websocket.WebSocketRequest) -> None:
    try:
        if request.path.split("?", 1)[0] != "/ws":
            await request.reject(404, body=b'{"error":"not_found","message":"use /ws"}')
            return
        origin = None
        for name, value in request.headers:
            if name.lower() == b"origin":
                origin = value.decode("latin-1")
        if not origin_allowed(origin, state.cfg.auth.allowed_origins):
            state.metrics.auth_failures["origin"] += 1
            await request.reject(403, body=_FORBIDDEN)
            return
        if state.closing.is_set():
            await request.reject(503)
            return
        proto = choose_subprotocol(list(request.proposed_subprotocols))
        ws = await request.accept(subprotocol=proto)
    except trio_websocket.ConnectionClosed:
        return
    except Exception:
        log.exception("stomp websocket handshake failed")
        return
    await run_session(state, "websocket", TrioWebSocketTransport(ws))


async def _handle_tcp(state: ServerState, stream: trio.SocketStream) -> None:
    if state.closing.is_set():
        await stream.aclose()
        return
    await run_session(state, "tcp", TcpTransport(stream))


async def serve_stomp_websocket(
    state: ServerState,
    address: str,
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    host, port = parse_listen(address)
    await trio_websocket.serve_websocket(
        partial(_handle_ws_request, state),
        host,
        port,
        None,
        handler_nursery=handler_nursery,
        max_message_size=state.cfg.stomp.max_frame_bytes + 1024,
        message_queue_size=4,
        connect_timeout=10,
        disconnect_timeout=5,
        task_status=_Reporter(task_status, host),  # type: ignore[arg-type]
    )


class _Reporter:
    """Turns trio-websocket's `WebSocketServer` into the (host, port) it bound."""

    def __init__(self, status: trio.TaskStatus[tuple[str, int]], host: str) -> None:
        self._status = status
        self._host = host

    def started(self, server: trio_websocket.WebSocketServer) -> None:
        self._status.started((self._host, server.port))


async def serve_stomp_tcp(
    state: ServerState,
    address: str,
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    host, port = parse_listen(address)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    task_status.started((host, bound[1]))
    await trio.serve_listeners(
        partial(_handle_tcp, state), listeners, handler_nursery=handler_nursery
    )
