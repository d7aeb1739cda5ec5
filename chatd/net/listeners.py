"""The one listener binder: `[…] listen` entries in, trio SocketListeners out.

Every listener chatd has (HTTP, STOMP WebSocket, STOMP TCP, metrics) is opened here, so
each accepts the same three forms: `host:port`, `[v6]:port`, and `fd://N` for a socket
someone else bound and handed down (systemd's socket activation, or any supervisor that
passes descriptors). A failure names the listener and the address as configured, which is
what a self-hoster needs to read when a port is taken.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import trio

from chatd.config import parse_listen

HTTP = "http"
STOMP_WEBSOCKET = "stomp websocket"
STOMP_TCP = "stomp tcp"
METRICS = "metrics"

# Asked of the kernel when chatd binds; Linux caps it at net.core.somaxconn. A socket
# that arrives already listening keeps the backlog its owner chose (systemd's Backlog=).
BACKLOG = 4096


class ListenError(Exception):
    """A listener could not be opened: `cannot listen on ADDRESS (KIND): REASON`."""

    def __init__(self, kind: str, address: str, reason: str, errno: int | None = None) -> None:
        self.kind = kind
        self.address = address
        self.reason = reason
        self.errno = errno
        super().__init__(f"cannot listen on {address} ({kind}): {reason}")


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _from_fd(kind: str, address: str) -> trio.SocketListener:
    fd = int(address.removeprefix("fd://"))
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenError(kind, address, _reason(exc), exc.errno) from exc
    try:
        if sock.type != socket.SOCK_STREAM:
            raise ListenError(kind, address, "not a stream socket")
        # Like sd_listen_fds(3): a process we start must not take the socket along.
        sock.set_inheritable(False)
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.listen(BACKLOG)
        sock.setblocking(False)
        return trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    except OSError as exc:
        sock.detach()  # the descriptor stays its owner's, as it came
        raise ListenError(kind, address, _reason(exc), exc.errno) from exc
    except ListenError:
        sock.detach()
        raise


async def open_listeners(kind: str, addresses: Sequence[str]) -> list[trio.SocketListener]:
    """Bind every address of one listener kind, or none: on a failure the ones already
    opened are closed and ListenError says which address failed."""
    return (await open_listener_groups({kind: addresses}))[kind]


async def open_listener_groups(
    groups: Mapping[str, Sequence[str]],
) -> dict[str, list[trio.SocketListener]]:
    """`{kind: addresses}` in, `{kind: listeners}` out, all or nothing."""
    opened: dict[str, list[trio.SocketListener]] = {kind: [] for kind in groups}
    fds: dict[str, str] = {}
    try:
        for kind, addresses in groups.items():
            for address in addresses:
                if address.startswith("fd://"):
                    # Two socket objects on one descriptor would close it under each other.
                    if address in fds:
                        raise ListenError(kind, address, f"already used by {fds[address]}")
                    fds[address] = kind
                    opened[kind].append(_from_fd(kind, address))
                    continue
                try:
                    host, port = parse_listen(address)
                    opened[kind].extend(await trio.open_tcp_listeners(port, host=host))
                except ValueError as exc:  # config.py checks the form; a caller may not have
                    raise ListenError(kind, address, str(exc)) from exc
                except OSError as exc:
                    raise ListenError(kind, address, _reason(exc), exc.errno) from exc
    except BaseException:
        for listeners in opened.values():
            for listener in listeners:
                listener.socket.close()
        raise
    return opened


def address_of(listener: trio.SocketListener) -> tuple[str, int]:
    """Where a listener is bound, as (host, port); a Unix socket is (path, 0)."""
    name = listener.socket.getsockname()
    if isinstance(name, tuple):
        return str(name[0]), int(name[1])
    return (name.decode() if isinstance(name, bytes) else str(name)), 0


@dataclass
class BoundListeners:
    """Every listener of one server, opened before anything starts serving."""

    http: list[trio.SocketListener] = field(default_factory=list)
    stomp_websocket: list[trio.SocketListener] = field(default_factory=list)
    stomp_tcp: list[trio.SocketListener] = field(default_factory=list)
    metrics: list[trio.SocketListener] = field(default_factory=list)

    @classmethod
    async def open(
        cls,
        http: Sequence[str],
        stomp_websocket: Sequence[str],
        stomp_tcp: Sequence[str],
        metrics: Sequence[str],
    ) -> BoundListeners:
        groups = await open_listener_groups(
            {HTTP: http, STOMP_WEBSOCKET: stomp_websocket, STOMP_TCP: stomp_tcp, METRICS: metrics}
        )
        return cls(groups[HTTP], groups[STOMP_WEBSOCKET], groups[STOMP_TCP], groups[METRICS])

    def close(self) -> None:
        """Close whatever is still open (the accept loops close their own on the way out)."""
        for group in (self.http, self.stomp_websocket, self.stomp_tcp, self.metrics):
            for listener in group:
                listener.socket.close()
