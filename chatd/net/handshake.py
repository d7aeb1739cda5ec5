"""The one opening-handshake path of every WebSocket chatd serves.

Both the main listener (`/chat` and `/ws`, beside the HTTP API) and the dedicated STOMP
WebSocket listener hand each new connection to `serve_connection`: read the request head,
parse it (chatd.net.websocket), route it by path, answer a refusal with the documented
status and JSON body, and give the accepted `Upgrade` to the protocol's handler. What a
protocol checks after routing (Origin, a ticket, shutting down) stays with the protocol.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import orjson
import trio

from chatd.net import websocket as ws
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


async def read_head(stream: trio.SocketStream) -> bytes:
    """Bytes up to and including the blank line after an HTTP request head (and any that
    came with it), or what arrived before the size limit, EOF or the timeout."""
    buf = b""
    with trio.move_on_after(HEAD_TIMEOUT):
        while b"\r\n\r\n" not in buf and len(buf) <= ws.MAX_HANDSHAKE:
            chunk = await stream.receive_some(16384)
            if not chunk:
                break
            buf += chunk
    return buf


def is_upgrade(head: bytes) -> bool:
    """Whether a head asks for a WebSocket at all; whether it asks well is parse_request's
    to say, so a broken handshake gets the handshake's answer, not an HTTP one."""
    if not head.startswith(b"GET "):
        return False
    lowered = head.lower()
    return b"\r\nupgrade:" in lowered and b"websocket" in lowered


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": code, "message": message})


async def refuse(stream: trio.SocketStream, status: int, body: bytes) -> None:
    """Answer a handshake with an HTTP error and close; a peer already gone is no error."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(ws.reject_response(status, body))
    await stream.aclose()


async def serve_connection(
    stream: trio.SocketStream, routes: WsRoutes, http: HttpHandoff | None = None
) -> None:
    """One new connection, start to end. With `http`, a request that is no WebSocket
    upgrade goes there; without, it is answered as a bad handshake. Never raises: one
    connection's failure stays with that connection."""
    try:
        head = await read_head(stream)
        if not head:
            await stream.aclose()
            return
        if http is not None and not is_upgrade(head):
            await http(stream, head)
            return
        try:
            request = ws.parse_request(head)
        except ws.HandshakeError as exc:
            await refuse(stream, exc.status, error_body("bad_handshake", exc.message))
            return
        if request is None:  # head too long or cut short
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
