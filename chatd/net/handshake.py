"""The one opening-handshake path of every WebSocket chatd serves.

Both the main listener (`/chat` and `/ws`, beside the HTTP API) and the dedicated STOMP
WebSocket listener hand each new connection to `serve_connection`: read the request head,
parse it (chatd.net.websocket), route it by path, answer a refusal with the documented
status and JSON body, and give the accepted `Upgrade` to the protocol's handler. What a
protocol checks after routing (Origin, a ticket, shutting down) stays with the protocol.

Each connection is counted (chatd.net.connections) from here to its end, and one over a
connection limit is answered once its head is read (see `busy_answer`), in a way that lets
the client read the answer rather than a reset (`close_with`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import orjson
import trio

from chatd.net import websocket as ws
from chatd.net.connections import (
    ANSWER_SECONDS,
    Connections,
    close_with,
    forwarded_for,
)
from chatd.net.ws_transport import Upgrade

log = logging.getLogger("chatd.net")

HEAD_TIMEOUT = 10.0

WsHandler = Callable[[trio.SocketStream, Upgrade], Awaitable[None]]
# Takes a connection that is not a WebSocket upgrade, with the bytes already read.
HttpHandoff = Callable[[trio.SocketStream, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WsRoutes:
    """The WebSocket paths one listener serves, and what a 404 for any other one says."""

    handlers: Mapping[str, WsHandler]
    not_found: str
    # The server's connection counts (chatd.net.connections); None counts nothing.
    connections: Connections | None = None


async def read_head(stream: trio.SocketStream, timeout: float = HEAD_TIMEOUT) -> bytes:
    """Bytes up to and including the blank line after an HTTP request head (and any that
    came with it), or what arrived before the size limit, EOF or the timeout."""
    buf = b""
    with trio.move_on_after(timeout):
        while b"\r\n\r\n" not in buf and len(buf) <= ws.MAX_HANDSHAKE:
            chunk = await stream.receive_some(16384)
            if not chunk:
                break
            buf += chunk
    return buf


def is_upgrade(head: bytes) -> bool:
    """Whether a head asks for a WebSocket at all: a GET whose Upgrade field lists
    websocket. Whether it asks well is parse_request's to say, so a broken handshake gets
    the handshake's answer, not an HTTP one."""
    return ws.asks_websocket(head)


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": code, "message": message})


async def refuse(stream: trio.SocketStream, status: int, body: bytes) -> None:
    """Answer a handshake with an HTTP error and close, so that the client reads the
    answer (a peer already gone is no error)."""
    await close_with(stream, ws.reject_response(status, body))


def busy_answer(head: bytes, why: str) -> bytes:
    """What a connection over a connection limit is told. A browser never sees the status
    of a failed WebSocket handshake (only "closed, 1006"), so a good WebSocket handshake
    is accepted and closed at once with 1013 (try again later) and `why`; anything else
    gets 503 and the JSON error body."""
    request = None
    if is_upgrade(head):
        with contextlib.suppress(ws.HandshakeError):
            request = ws.parse_request(head)
    return busy_close(request, why)


def busy_close(request: ws.Request | None, why: str) -> bytes:
    """busy_answer for a request already parsed (None: not a good WebSocket handshake)."""
    if request is None:
        return ws.reject_response(503, error_body("too_many_connections", why))
    # A browser that offered subprotocols fails a handshake that picks none before it
    # would read the close: echo the first it offered, the close follows at once.
    offered = request.subprotocols[0] if request.subprotocols else None
    proto = offered if offered and offered.isascii() and offered.isprintable() else None
    return ws.accept_response(request.key, proto) + ws.close_frame(ws.CLOSE_TRY_AGAIN_LATER, why)


async def serve_connection(
    stream: trio.SocketStream, routes: WsRoutes, http: HttpHandoff | None = None
) -> None:
    """One new connection, start to end. With `http`, a request that is no WebSocket
    upgrade goes there; without, it is answered as a bad handshake. Counted in
    `routes.connections` from here to its end, and refused there when over a limit.
    Never raises: one connection's failure stays with that connection."""
    connections = routes.connections
    seat = None
    try:
        if connections is not None:
            seat = connections.accepted(stream)
            if seat is None:  # a flood of refusals: no answer for this one
                await stream.aclose()
                return
        refused = seat.refused if seat is not None else None
        # A refused connection is answered once its head is read, which it gets little
        # time for: it holds a socket of the few kept for refusals.
        head = await read_head(stream, ANSWER_SECONDS if refused else HEAD_TIMEOUT)
        if not head:
            await stream.aclose()
            return
        if seat is not None and connections is not None:
            # It said what it wants: no longer waiting; a STOMP route counts its own wait
            # for the login from here (chatd.stomp.transports), with no await between.
            connections.arrived(seat)
        if seat is not None and seat.trusted and connections and connections.max_per_address:
            refused = connections.forwarded(seat, forwarded_for(head))
        if refused:
            await close_with(stream, busy_answer(head, refused))
            return
        if http is not None and not is_upgrade(head):
            await http(stream, head)
            return
        try:
            request = ws.parse_request(head)
        except ws.HandshakeError as exc:
            await refuse(stream, exc.status, error_body("bad_handshake", exc.message))
            return
        if request is None:  # cut short
            await stream.aclose()
            return
        handler = routes.handlers.get(request.path.split("?", 1)[0])
        if handler is None:
            await refuse(stream, 404, error_body("not_found", routes.not_found))
            return
        upgrade = Upgrade(request, head[head.index(b"\r\n\r\n") + 4 :])
        # The handler runs in this frame for the connection's whole life: keep no head.
        del head, request
        await handler(stream, upgrade)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.aclose()
    except Exception:
        log.exception("connection failed")
        await stream.aclose()
    finally:
        if seat is not None and connections is not None:
            connections.leave(seat)
