"""Byte movers for STOMP sessions: WebSocket (own listener and on the HTTP server) and TCP."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial

import orjson
import trio

from . import wsproto_lite as ws
from .asgi_ws import AsgiWebSocket, Disconnected, Receive, Scope, Send, header
from .auth import origin_allowed
from .config import parse_listen
from .state import ServerState
from .stomp_session import StompSession, StompTransport
from .wire import Disconnected as WireClosed
from .wire import WireWriter

log = logging.getLogger("chatd.stomp")

SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")
HANDSHAKE_TIMEOUT = 10.0
_FORBIDDEN = b'{"error":"origin_not_allowed","message":"origin not allowed"}'


def choose_subprotocol(offered: list[str]) -> str | None:
    for proto in SUBPROTOCOLS:
        if proto in offered:
            return proto
    return None


def _is_text(frame: bytes) -> bool:
    """A frame goes as a text message when it is valid UTF-8, else as binary."""
    if frame.isascii():
        return True
    try:
        frame.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class AsgiTransport:
    """`/ws` on hypercorn: hypercorn frames each message, so no direct writes here."""

    def __init__(self, ws_: AsgiWebSocket, limit: int) -> None:
        self.ws = ws_
        self.out = WireWriter(limit, self._send, None)

    def wire(self, frame: bytes) -> bytes:
        return frame

    async def receive(self) -> bytes | None:
        try:
            data = await self.ws.receive()
        except Disconnected:
            return None
        return data.encode("utf-8") if isinstance(data, str) else data

    async def _send(self, frames: list[bytes]) -> None:
        try:
            for frame in frames:
                if _is_text(frame):
                    await self.ws.send_text(frame.decode("utf-8"))
                else:
                    await self.ws.send_bytes(frame)
        except Disconnected:
            raise WireClosed() from None

    async def aclose(self) -> None:
        await self.ws.close(1000, "")


class _StreamTransport:
    def __init__(self, stream: trio.SocketStream, limit: int) -> None:
        self.stream = stream
        self.out = WireWriter(limit, self._send, stream.socket.fileno())

    async def _send(self, chunks: list[bytes]) -> None:
        try:
            await self.stream.send_all(b"".join(chunks))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise WireClosed() from None

    async def _receive_some(self) -> bytes | None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        return data or None


class TcpTransport(_StreamTransport):
    def wire(self, frame: bytes) -> bytes:
        return frame

    async def receive(self) -> bytes | None:
        return await self._receive_some()

    async def aclose(self) -> None:
        await self.stream.aclose()


class LeanWebSocketTransport(_StreamTransport):
    """STOMP over our own small WebSocket layer (see wsproto_lite for why). Every write,
    pongs and the close frame included, goes through the one WireWriter so frames never
    interleave."""

    def __init__(self, stream: trio.SocketStream, parser: ws.FrameParser, limit: int) -> None:
        super().__init__(stream, limit)
        self.parser = parser
        self._closed = False
        self._events: deque[ws.Message | ws.Ping | ws.Close] = deque()

    def wire(self, frame: bytes) -> bytes:
        opcode = ws.OP_TEXT if _is_text(frame) else ws.OP_BINARY
        return ws.frame_header(opcode, len(frame)) + frame

    async def receive(self) -> bytes | None:
        events = self._events
        while True:
            while events:
                ev = events.popleft()
                if isinstance(ev, ws.Message):
                    data = ev.data
                    return data.encode("utf-8") if isinstance(data, str) else data
                if isinstance(ev, ws.Ping):
                    self.out.offer(ws.encode_frame(ws.OP_PONG, ev.payload))
                else:
                    self._close(ws.CLOSE_NORMAL if ev.code == 1005 else ev.code, "")
                    return None
            try:
                events.extend(self.parser.events())
            except ws.ProtocolError as exc:
                self._close(exc.code, exc.message)
                return None
            if events:
                continue
            chunk = await self._receive_some()
            if chunk is None:
                return None
            self.parser.receive_data(chunk)

    def _close(self, code: int, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self.out.offer(ws.close_frame(code, reason))
            self.out.close_soon()

    async def aclose(self) -> None:
        if not self._closed and not self.out.broken:
            self._closed = True
            with trio.move_on_after(1), contextlib.suppress(WireClosed):
                await self._send([ws.close_frame(ws.CLOSE_NORMAL)])
        await self.stream.aclose()


async def run_session(state: ServerState, kind: str, transport: StompTransport) -> None:
    """Never raises: one connection's failure stays with that connection."""
    session = StompSession(state, kind, transport)
    try:
        await session.run()
    except (Disconnected, WireClosed):
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
    await run_session(state, "websocket", AsgiTransport(ws, state.cfg.chat.outbox_messages))


async def _handle_websocket(state: ServerState, stream: trio.SocketStream) -> None:
    """The dedicated STOMP WebSocket listener: handshake, then a STOMP session."""
    buf = b""
    try:
        with trio.move_on_after(HANDSHAKE_TIMEOUT):
            try:
                request = None
                while request is None:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    buf += chunk
                    request = ws.parse_request(buf)
            except ws.HandshakeError as exc:
                body = orjson.dumps({"error": "bad_handshake", "message": exc.message})
                await stream.send_all(ws.reject_response(exc.status, body))
                request = None
            if request is not None:
                status, body = _check_request(state, request)
                if status:
                    await stream.send_all(ws.reject_response(status, body))
                    request = None
                else:
                    proto = choose_subprotocol(list(request.subprotocols))
                    await stream.send_all(ws.accept_response(request.key, proto))
        if request is None:
            await stream.aclose()
            return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.aclose()
        return
    parser = ws.FrameParser(state.cfg.stomp.max_frame_bytes + 1024)
    parser.receive_data(buf[buf.index(b"\r\n\r\n") + 4 :])
    transport = LeanWebSocketTransport(stream, parser, state.cfg.chat.outbox_messages)
    await run_session(state, "websocket", transport)


def _check_request(state: ServerState, request: ws.Request) -> tuple[int, bytes]:
    if request.path.split("?", 1)[0] != "/ws":
        return 404, b'{"error":"not_found","message":"STOMP is at /ws"}'
    if not origin_allowed(request.headers.get("origin"), state.cfg.auth.allowed_origins):
        state.metrics.auth_failures["origin"] += 1
        return 403, _FORBIDDEN
    if state.closing.is_set():
        return 503, b'{"error":"shutting_down","message":"server shutting down"}'
    return 0, b""


async def _handle_tcp(state: ServerState, stream: trio.SocketStream) -> None:
    if state.closing.is_set():
        await stream.aclose()
        return
    await run_session(state, "tcp", TcpTransport(stream, state.cfg.chat.outbox_messages))


async def serve_stomp_websocket(
    state: ServerState,
    address: str,
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await _serve(partial(_handle_websocket, state), address, handler_nursery, task_status)


async def serve_stomp_tcp(
    state: ServerState,
    address: str,
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await _serve(partial(_handle_tcp, state), address, handler_nursery, task_status)


async def _serve(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    address: str,
    handler_nursery: trio.Nursery,
    task_status: trio.TaskStatus[tuple[str, int]],
) -> None:
    host, port = parse_listen(address)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    task_status.started((host, bound[1]))
    await trio.serve_listeners(handler, listeners, handler_nursery=handler_nursery)
