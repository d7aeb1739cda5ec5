"""Hypercorn's HTTP/1.1 protocol over chatd's own listeners, for any ASGI app.

The main listener (the HTTP API behind the WebSocket front door) and the metrics listener
both serve through `serve_asgi`: hypercorn's `TCPServer` per connection, its lifespan, and
its way of stopping (hypercorn's `trio/run.py`): stop accepting, close idle keep-alive
connections, give the others `graceful_timeout`. Binding is chatd.net.listeners' job, so
`host:port` and `fd://N` mean the same on every listener.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Protocol, cast

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


async def serve_asgi(
    app: Any,
    hc: HypercornConfig,
    listeners: Sequence[trio.SocketListener],
    stop: trio.Event,
    *,
    on_connection: ConnectionHook = _plain,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on `listeners` until `stop` is set, then stop accepting and give open
    connections `hc.graceful_timeout` to finish. Whatever `on_connection` runs instead of
    HTTP (WebSocket sessions) shares that deadline; closing those is the caller's part."""
    wrapped = wrap_app(app, hc.wsgi_max_body_size, "asgi")
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, hc, lifespan_state)
    context = WorkerContext(None)

    async def serve_http(stream: PlainStream) -> None:
        # hypercorn annotates its stream as an SSLStream, but serves any stream: it calls
        # do_handshake, takes the AttributeError as "not TLS" and reads `.socket`, which is
        # all of PlainStream besides the reads and writes. The cast states that contract.
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
