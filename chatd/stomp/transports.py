"""Byte movers for STOMP sessions: WebSocket (own listener and on the HTTP server) and TCP."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import trio

from chatd.auth import origin_allowed
from chatd.net import websocket as ws
from chatd.net.connections import LoginWait, close_with, counting, peer_address, serve_counted
from chatd.net.handshake import WsRoutes, busy_close, refuse, serve_connection
from chatd.net.wire import Disconnected as WireClosed
from chatd.net.wire import WireWriter
from chatd.net.ws_transport import Upgrade, WebSocketTransport
from chatd.ops import logs
from chatd.state import ServerState
from chatd.stomp import SUBPROTOCOLS, V10, Frame, FrameWriter
from chatd.stomp.session import StompSession

log = logging.getLogger("chatd.stomp")

_FORBIDDEN = b'{"error":"origin_not_allowed","message":"origin not allowed"}'
# A WebSocket message may hold a little more than one STOMP frame (heart-beats, the start or
# the end of another frame): its limit is the frame limit plus this.
_MESSAGE_SLACK = 1024


def choose_subprotocol(offered: list[str]) -> str | None:
    for proto in SUBPROTOCOLS:
        if proto in offered:
            return proto
    return None


class TcpTransport:
    __slots__ = ("stream", "out", "wait")
    framing = "raw"

    def __init__(self, stream: trio.SocketStream, limit: int, max_bytes: int | None = None) -> None:
        self.stream = stream
        self.out = WireWriter(limit, stream, stream.socket.fileno(), max_bytes)
        # Counted among its address's connections not yet logged in, until the login.
        self.wait: LoginWait | None = None

    def wire(self, frame: bytes, utf8: bool = False) -> bytes:
        return frame

    async def receive(self) -> bytes | None:
        try:
            # Before the login (`wait` set) a few KB is all a CONNECT may take.
            data = await self.stream.receive_some(65536 if self.wait is None else 16384)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        return data or None

    async def aclose(self, drain: bool = True) -> None:
        # The ERROR (or RECEIPT) is written; the drain lets a client still sending read it.
        await close_with(self.stream, drain=drain)

    def logged_in(self, max_frame_bytes: int) -> None:
        # The frame reader alone bounds what a TCP peer sends.
        _end_wait(self)


class StompWebSocketTransport(WebSocketTransport):
    """STOMP is a byte stream: frames end with NUL, not with the WebSocket message. So a
    read returns every message already parsed, joined, and the session handles the SENDs
    of a burst together.

    The WebSocket parser buffers a whole message before STOMP sees any of it, so until
    the login is accepted its limit is the small pre-login one too."""

    __slots__ = ("wait",)

    def __init__(
        self, stream: trio.SocketStream, parser: ws.FrameParser, limit: int, max_bytes: int
    ) -> None:
        super().__init__(stream, parser, limit, max_bytes)
        # Counted among its address's connections not yet logged in, until the login.
        self.wait: LoginWait | None = None

    def logged_in(self, max_frame_bytes: int) -> None:
        self.parser.max_message = max_frame_bytes + _MESSAGE_SLACK
        _end_wait(self)

    async def receive(self) -> bytes | None:
        data = await super().receive()
        if data is None:
            return None
        more = self.take_ready_messages()
        return b"".join([data, *more]) if more else data


def _end_wait(transport: TcpTransport | StompWebSocketTransport) -> None:
    if transport.wait is not None:
        transport.wait.done()
        transport.wait = None


async def run_session(
    state: ServerState, kind: str, transport: TcpTransport | StompWebSocketTransport, client: str
) -> None:
    """Never raises: one connection's failure stays with that connection. `client`: who
    it is for the logs (chatd.net.connections.Connections.client_address)."""
    session = StompSession(state, kind, transport)
    opened = trio.current_time()
    try:
        await session.run()
    except WireClosed:
        pass
    except Exception:
        log.exception("stomp %s session failed", kind)
    finally:
        _end_wait(transport)
        logs.connection_closed(
            "STOMP",
            kind,
            session.user_id,
            client,
            trio.current_time() - opened,
            session.end or "connection closed or lost",
        )


async def serve_stomp_ws(state: ServerState, stream: trio.SocketStream, upgrade: Upgrade) -> None:
    """A `/ws` upgrade, from the front door or the dedicated listener (both routed by
    chatd.net.handshake)."""
    request, leftover = upgrade.take()
    chain = request.headers.get("x-forwarded-for", "").split(",")
    peer = peer_address(stream)
    client = state.connections.client_address(peer, chain)
    # Taken over from the connection's seat before any await (chatd.net.connections).
    wait = state.connections.login_wait(peer, client)
    if isinstance(wait, str):
        logs.refused("/ws", wait, client)
        await close_with(stream, busy_close(request, wait))
        return
    try:
        status, body = _check_request(state, request)
        if status:
            if status == 403:
                why = f"origin {request.headers.get('origin')!r} not allowed"
                logs.refused("/ws", why, client)
            await refuse(stream, status, body)
            return
        try:
            proto = choose_subprotocol(list(request.subprotocols))
            await stream.send_all(ws.accept_response(request.key, proto))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()
            return
        cfg = state.cfg.stomp
        parser = ws.FrameParser(
            min(cfg.max_connect_frame_bytes, cfg.max_frame_bytes) + _MESSAGE_SLACK
        )
        parser.receive_data(leftover)
        # This frame waits here for the connection's whole life: keep only what it needs.
        del request, leftover, chain, status, body
        chat = state.cfg.chat
        transport = StompWebSocketTransport(stream, parser, chat.outbox_messages, chat.outbox_bytes)
        transport.wait, wait = wait, None  # the transport ends it at login
        del parser, cfg, chat
        await run_session(state, "websocket", transport, client)
    finally:
        if wait is not None:
            wait.done()


def _check_request(state: ServerState, request: ws.Request) -> tuple[int, bytes]:
    headers = request.headers
    allowed = state.cfg.auth.allowed_origins
    if not origin_allowed(headers.get("origin"), allowed, headers.get("host")):
        state.metrics.auth_failures["origin"] += 1
        return 403, _FORBIDDEN
    if state.closing.is_set():
        return 503, b'{"error":"shutting_down","message":"server shutting down"}'
    return 0, b""


async def _handle_tcp(state: ServerState, stream: trio.SocketStream) -> None:
    if state.closing.is_set():
        await stream.aclose()
        return
    peer = peer_address(stream)
    # Taken over from the connection's seat (serve_counted) before any await.
    wait = state.connections.login_wait(peer, peer)
    if isinstance(wait, str):
        await close_with(stream, _refused_tcp(wait))
        return
    chat = state.cfg.chat
    transport = TcpTransport(stream, chat.outbox_messages, chat.outbox_bytes)
    transport.wait = wait
    await run_session(state, "tcp", transport, peer)


def _refused_tcp(why: str) -> bytes:
    """The ERROR frame a STOMP TCP connection over a connection limit gets, at once."""
    error = Frame(
        "ERROR", (("message", "Too many connections"), ("content-type", "text/plain")), why.encode()
    )
    return FrameWriter(V10).send(error)


async def serve_stomp_websocket(
    state: ServerState,
    listeners: Sequence[trio.SocketListener],
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[list[trio.abc.Listener[trio.SocketStream]]] = (
        trio.TASK_STATUS_IGNORED
    ),
) -> None:
    """The dedicated STOMP WebSocket listener: `/ws` only, until cancelled."""
    routes = WsRoutes(
        {"/ws": partial(serve_stomp_ws, state)},
        not_found="STOMP is at /ws",
        connections=state.connections,
    )
    handler = partial(serve_connection, routes=routes)
    await trio.serve_listeners(
        handler,
        counting(listeners, state.connections),
        handler_nursery=handler_nursery,
        task_status=task_status,
    )


async def serve_stomp_tcp(
    state: ServerState,
    listeners: Sequence[trio.SocketListener],
    handler_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[list[trio.abc.Listener[trio.SocketStream]]] = (
        trio.TASK_STATUS_IGNORED
    ),
) -> None:
    """STOMP over plain TCP, until cancelled."""
    # Counted with every other listener's connections (chatd.net.connections).
    handler = partial(
        serve_counted, state.connections, handler=partial(_handle_tcp, state), refusal=_refused_tcp
    )
    await trio.serve_listeners(
        handler,
        counting(listeners, state.connections),
        handler_nursery=handler_nursery,
        task_status=task_status,
    )
