"""Hypercorn's HTTP/1.1 protocol over chatd's own listeners, for any ASGI app.

The main listener (the HTTP API behind the WebSocket front door) and the metrics listener
both serve through `serve_asgi`: hypercorn's `TCPServer` per connection, its lifespan, and
its way of stopping (hypercorn's `trio/run.py`): stop accepting, close idle keep-alive
connections, give the others `graceful_timeout`. Binding is chatd.net.listeners' job, so
`host:port` and `fd://N` mean the same on every listener.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Protocol, cast

import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

log = logging.getLogger("chatd.net")


class PlainStream(Protocol):
    """What hypercorn's TCPServer uses of a stream that is not TLS."""

    socket: trio.socket.SocketType

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

    async def send_all(self, data: bytes) -> None: ...

    async def send_eof(self) -> None: ...

    async def aclose(self) -> None: ...


ServeHttp = Callable[[PlainStream], Awaitable[None]]
# Sees every accepted connection first, and decides whether (and on what stream) hypercorn
# serves it: the main listener's WebSocket front door, the metrics listener's gate.
ConnectionHook = Callable[[trio.SocketStream, ServeHttp], Awaitable[None]]


async def _plain(stream: trio.SocketStream, serve_http: ServeHttp) -> None:
    await serve_http(stream)


class _WriteDeadline:
    """The stream hypercorn writes to, with a deadline on every write.

    hypercorn shields its socket writes from cancellation, so a client that never reads
    would hold its response (a history page, megabytes) for as long as it keeps the
    connection open. Here a write that has not finished within `timeout()` seconds
    resets the connection: the write fails as if the peer had gone (hypercorn then ends
    the request and lets go of the response), and the connection's reader wakes up to a
    closed socket."""

    def __init__(self, stream: PlainStream, timeout: Callable[[], float]) -> None:
        self._stream = stream
        self._timeout = timeout
        self.socket = stream.socket
        # hypercorn sends data under its own lock but half-closes (send_eof) outside it:
        # a close racing a response write made trio raise BusyResourceError in the
        # write, which hypercorn does not expect ("Error in ASGI Framework"). One at a
        # time here: the half-close waits for the write in flight, bounded by its deadline.
        self._sending = trio.Lock()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        async with self._sending:
            await self._send_all(data)

    async def _send_all(self, data: bytes) -> None:
        with trio.move_on_after(self._timeout()):
            await self._stream.send_all(data)
            return
        # A reset, not a FIN: what the kernel still holds for the peer is dropped too.
        with contextlib.suppress(OSError):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self._stream.aclose()
        raise trio.BrokenResourceError("write timed out: the peer does not read")

    async def send_eof(self) -> None:
        async with self._sending:
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


# The answer to a request with both Content-Length and Transfer-Encoding.
TWO_FRAMINGS = orjson.dumps(
    {"error": "bad_request", "message": "Content-Length and Transfer-Encoding together"}
)


def _one_framing(app: Any) -> Any:
    """ASGI middleware: a request with both Content-Length and Transfer-Encoding is
    answered 400 and its connection closed. h11 goes by Transfer-Encoding; a proxy in
    front that goes by Content-Length would take the rest of the body for a request of
    its own (request smuggling), so neither reading is safe to act on.

    The front door answers a connection's first request itself; this catches the ones
    after it. When more bytes follow such a request on the connection, hypercorn may close
    it before the answer is out: nothing after the request is served either way."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            names = {name.lower() for name, _ in scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(TWO_FRAMINGS)).encode()),
                    (b"connection", b"close"),
                ]
                await send({"type": "http.response.start", "status": 400, "headers": headers})
                await send({"type": "http.response.body", "body": TWO_FRAMINGS})
                return
        await app(scope, receive, send)

    return asgi


async def serve_asgi(
    app: Any,
    hc: HypercornConfig,
    listeners: Sequence[trio.abc.Listener[trio.SocketStream]],
    stop: trio.Event,
    *,
    on_connection: ConnectionHook = _plain,
    write_timeout: Callable[[], float] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `listeners` until `stop` is set, then stop accepting and give open
    connections `hc.graceful_timeout` to finish. Whatever `on_connection` runs instead of
    HTTP (WebSocket sessions) shares that deadline; closing those is the caller's part.
    With `write_timeout`, a response write that takes longer (seconds, read at each
    write) drops its connection."""
    wrapped = wrap_app(_one_framing(app), hc.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, hc, lifespan_state)
    context = WorkerContext(None)

    async def serve_http(stream: PlainStream) -> None:
        # hypercorn annotates its stream as an SSLStream, but serves any stream: it calls
        # do_handshake, takes the AttributeError as "not TLS" and reads `.socket`, which is
        # all of PlainStream besides the reads and writes. The cast states that contract.
        if write_timeout is not None:
            stream = _WriteDeadline(stream, write_timeout)
        tls_typed = cast("trio.SSLStream[trio.SocketStream]", stream)
        await TCPServer(wrapped, hc, context, ConnectionState(lifespan_state.copy()), tls_typed)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await on_connection(stream, serve_http)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.aclose()
        except Exception:
            log.exception("connection failed")
            await stream.aclose()

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    serve = partial(trio.serve_listeners, handle, [listener])
                    accepting.start_soon(partial(serve, handler_nursery=connections))
                task_status.started()
                await stop.wait()
                accepting.cancel_scope.cancel()
            # Idle keep-alive HTTP connections close when hypercorn sees `terminated`.
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + hc.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
