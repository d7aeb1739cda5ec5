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
from .stomp_session import StompSession

log = logging.getLogger("chatd.stomp")

SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")
HANDSHAKE_TIMEOUT = 10.0
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


class LeanWebSocketTransport:
    """STOMP over our own small WebSocket layer (see wsproto_lite for why)."""

    def __init__(self, stream: trio.SocketStream, parser: ws.FrameParser) -> None:
        self.stream = stream
        self.parser = parser
        self._lock = trio.Lock()
        self._closed = False
        self._events: deque[ws.Message | ws.Ping | ws.Close] = deque()

    async def _write(self, data: bytes) -> None:
        try:
            async with self._lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise Disconnected() from None

    async def receive(self) -> bytes | None:
        events = self._events
        while True:
            while events:
                ev = events.popleft()
                if isinstance(ev, ws.Message):
                    data = ev.data
                    return data.encode("utf-8") if isinstance(data, str) else data
                if isinstance(ev, ws.Ping):
                    await self._write(ws.encode_frame(ws.OP_PONG, ev.payload))
                else:
                    await self._close(ws.CLOSE_NORMAL if ev.code == 1005 else ev.code, "")
                    return None
            try:
                events.extend(self.parser.events())
            except ws.ProtocolError as exc:
                await self._close(exc.code, exc.message)
                return None
            if events:
                continue
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not chunk:
                return None
            self.parser.receive_data(chunk)

    async def send_frames(self, frames: list[bytes]) -> None:
        parts: list[bytes] = []
        for frame in frames:
            opcode = ws.OP_TEXT if frame.isascii() or _is_utf8(frame) else ws.OP_BINARY
            parts.append(ws.frame_header(opcode, len(frame)))
            parts.append(frame)
        await self._write(b"".join(parts))

    async def _close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(1), contextlib.suppress(Disconnected):
            await self._write(ws.close_frame(code, reason))

    async def aclose(self) -> None:
        await self._close(ws.CLOSE_NORMAL, "")
        await self.stream.aclose()


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
    await run_session(state, "websocket", LeanWebSocketTransport(stream, parser))


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
    await run_session(state, "tcp", TcpTransport(stream))


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
