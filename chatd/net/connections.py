"""Open connections, counted from accept to close: in total and per client address.

`[server] max_connections` bounds every listener together (HTTP, /chat, /ws, the STOMP
WebSocket and TCP listeners; not the private metrics listener), and
`max_connections_per_address` each client address. An IPv6 client is counted by its /64,
which is what one host or home network is given: counting single IPv6 addresses would
let one host take as many as it likes.

`max_unauthenticated_per_address` bounds, per client address, the connections that have
not yet said who they are: from accept until the request head is read (HTTP, /chat) and,
on STOMP (/ws, the STOMP WebSocket and TCP listeners), until the login is accepted. Such a
connection costs nothing to open and can be held idle for the whole head or CONNECT
timeout; without this bound a few dozen addresses fill `max_connections` (and STOMP's
`max_unauthenticated_connections`) with idle sockets, and nobody else can log in. Each
phase counts its own wait: the seat until the head (`arrived`), then a STOMP transport's
`LoginWait` until the login; the hand-over is synchronous, so the count never drops in
between.

Behind a reverse proxy every connection comes from the proxy. A connection from an
address in `[http] trusted_proxies` is counted against the client address the proxies
forwarded (`X-Forwarded-For`, the right-most address that is not itself a trusted proxy),
once its request head has been read; until then, and for ever when no head names a
client (STOMP over TCP, a proxy's own health checks), it counts in the total only. The
header is believed from trusted proxies only: anyone else could write any address in it.

A refused connection is answered (HTTP 503, WebSocket close 1013, a STOMP ERROR frame)
and closed; answering takes a moment, so at most `MAX_REFUSING` are answered at once and
any more are closed without an answer. Counting happens in the accept loop
(`CountingListener`): a connection closed without an answer costs an accept and a close,
no task, stream or buffer; during a flood that is most of them.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence

import trio

# Refused connections answered at once; beyond this a flood is closed without a word.
MAX_REFUSING = 64
# Connections a listener takes from the kernel's queue in one go before letting the
# other tasks run.
ACCEPT_BURST = 16
# How long a refused connection (or any answered with an error and closed) is given to
# send its request head and to read the answer, and how much it may send meanwhile.
ANSWER_SECONDS = 2.0
MAX_DRAIN_BYTES = 1 << 20

# Why a connection was refused, as the client is told.
SERVER_FULL = "the server has too many connections; try again later"
ADDRESS_FULL = "too many connections from your address; try again later"
WAITING_FULL = "too many connections from your address not yet logged in; try again later"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: Iterable[str]) -> list[_Network]:
    """`[http] trusted_proxies` entries (addresses or CIDRs) as networks; ValueError names
    the first entry that is neither."""
    networks: list[_Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or a CIDR network") from None
    return networks


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a peer or a proxy writes it (`[v6]:port` and `v4:port` too); None
    when it is none."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_key(text: str) -> str:
    """What one client address is counted as: the IPv4 address, or the IPv6 /64."""
    if ":" not in text and "[" not in text:
        return text  # IPv4 as the kernel writes it, the common case: no parsing
    ip = _ip(text)
    if ip is None:
        return text[:64]  # no address, but what a trusted proxy wrote: count it as is
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return f"{ipaddress.IPv6Network((ip, 64), strict=False).network_address}/64"


def peer_address(stream: trio.SocketStream) -> str:
    """The address a connection comes from; "" for a Unix socket (local, so trusted) or
    a peer already gone."""
    try:
        name = stream.socket.getpeername()
    except OSError:
        return ""
    return str(name[0]) if isinstance(name, tuple) else ""


class Seat:
    """One connection's place in the counts, from accept to close."""

    __slots__ = ("key", "trusted", "refused", "waiting")

    def __init__(self, key: str | None, trusted: bool, refused: str | None) -> None:
        self.key = key  # the address it counts against; None: the total only
        self.trusted = trusted  # it comes from a trusted proxy
        self.refused = refused  # why it is refused (what the client is told), or None
        self.waiting = False  # counted among its address's connections not yet logged in


class LoginWait:
    """A STOMP connection counted among its address's connections not yet logged in,
    until `done` (the login is accepted, or the connection ends)."""

    __slots__ = ("_connections", "_key")

    def __init__(self, connections: Connections, key: str) -> None:
        self._connections = connections
        self._key = key

    def done(self) -> None:
        """Idempotent."""
        if self._key:
            self._connections._unwait(self._key)
            self._key = ""


class Connections:
    """The counts, and the limits they are held to (0: no limit)."""

    def __init__(self) -> None:
        self.open = 0
        self.refusing = 0
        self.refused = 0  # connections refused since start
        self.max_total = 0
        self.max_per_address = 0
        self.max_waiting = 0  # per address, not yet logged in
        self._per_address: dict[str, int] = {}
        self._waiting: dict[str, int] = {}
        # Seats counted by a CountingListener, until the connection's handler takes its own.
        self._accepted: dict[trio.SocketStream, Seat] = {}
        self._trusted_exact: frozenset[str] = frozenset()
        self._trusted_networks: tuple[_Network, ...] = ()

    def configure(
        self,
        max_total: int,
        max_per_address: int,
        trusted_proxies: Sequence[str],
        max_unauthenticated_per_address: int = 0,
    ) -> None:
        """Set the limits (at start and on reload; connections already open stay)."""
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.max_waiting = max_unauthenticated_per_address
        networks = parse_networks(trusted_proxies)
        # Single addresses are looked up as the kernel writes them, without parsing.
        self._trusted_exact = frozenset(
            str(n.network_address) for n in networks if n.num_addresses == 1
        )
        self._trusted_networks = tuple(n for n in networks if n.num_addresses > 1)

    def trusts(self, address: str) -> bool:
        """Whether `address` is a trusted proxy (a Unix socket peer, "", always is)."""
        if not address or address in self._trusted_exact:
            return True
        if not self._trusted_networks and ":" not in address:
            return False
        ip = _ip(address)
        if ip is None:
            return False
        if str(ip) in self._trusted_exact:
            return True
        return any(ip in net for net in self._trusted_networks)

    def enter(self, peer: str) -> Seat | None:
        """Count a new connection from `peer`. A refused one gets a seat that says why,
        to be answered; None when too many refusals are being answered already."""
        if self.max_total and self.open >= self.max_total:
            return self._refuse(SERVER_FULL)
        trusted = self.trusts(peer)
        if trusted or not (self.max_per_address or self.max_waiting):
            self.open += 1
            return Seat(None, trusted, None)
        key = address_key(peer)
        count = self._per_address.get(key, 0)
        if self.max_per_address and count >= self.max_per_address:
            return self._refuse(ADDRESS_FULL)
        waiting = self._waiting.get(key, 0)
        if self.max_waiting and waiting >= self.max_waiting:
            return self._refuse(WAITING_FULL)
        self._per_address[key] = count + 1
        self.open += 1
        seat = Seat(key, False, None)
        if self.max_waiting:
            self._waiting[key] = waiting + 1
            seat.waiting = True
        return seat

    def accepted(self, stream: trio.SocketStream) -> Seat | None:
        """The seat of a connection its handler starts with: the one a CountingListener
        counted it in, or one counted now (a listener that does not count). None: refused
        and not to be answered (close it)."""
        seat = self._accepted.pop(stream, None)
        return seat if seat is not None else self.enter(peer_address(stream))

    def arrived(self, seat: Seat) -> None:
        """The connection sent its request head (or, on STOMP over TCP, its session
        starts): it no longer counts as waiting on its seat."""
        if seat.waiting:
            seat.waiting = False
            self._unwait(seat.key)  # type: ignore[arg-type]

    def login_wait(self, peer: str, client: str) -> LoginWait | None | str:
        """Count a STOMP connection from `peer` (for the logs `client`, see
        client_address) among its address's connections not yet logged in. Returns the
        wait to end at login; None when it is not counted (no limit, or a trusted proxy's
        own connection with no client named); the refusal when the address is full."""
        if not self.max_waiting or (client == peer and self.trusts(peer)):
            return None
        key = address_key(client)
        waiting = self._waiting.get(key, 0)
        if waiting >= self.max_waiting:
            self.refused += 1
            return WAITING_FULL
        self._waiting[key] = waiting + 1
        return LoginWait(self, key)

    def _unwait(self, key: str) -> None:
        count = self._waiting[key] - 1
        if count:
            self._waiting[key] = count
        else:
            del self._waiting[key]

    def forwarded(self, seat: Seat, chain: Sequence[str]) -> str | None:
        """For a connection from a trusted proxy: count it against the client address
        `chain` (the X-Forwarded-For entries, oldest first) names. Returns why it is
        refused when that address is at its limit (the seat is then a refused one). Its
        head is read: it does not count as waiting (a STOMP login wait is counted by
        `login_wait`, against the same client)."""
        if not seat.trusted or seat.key is not None or seat.refused or not self.max_per_address:
            return None
        client = self._forwarded_client(chain)
        if client is None:
            return None
        key = address_key(client)
        count = self._per_address.get(key, 0)
        if count >= self.max_per_address:
            self.open -= 1
            self.refusing += 1
            self.refused += 1
            seat.refused = ADDRESS_FULL
            return ADDRESS_FULL
        self._per_address[key] = count + 1
        seat.key = key
        return None

    def _forwarded_client(self, chain: Sequence[str]) -> str | None:
        """The right-most X-Forwarded-For entry that is not itself a trusted proxy."""
        for entry in reversed(chain):
            entry = entry.strip()
            if entry and not self.trusts(entry):
                return entry
        return None

    def client_address(self, peer: str, chain: Sequence[str]) -> str:
        """Who a connection is, for the logs: its peer, or for one from a trusted proxy
        the client the proxies forwarded (bounded: the header is the client's to write
        up to the first proxy)."""
        if not self.trusts(peer):
            return sys.intern(peer)
        client = self._forwarded_client(chain)
        # Interned: kept for each connection's whole life, and many come from one address.
        return sys.intern(peer if client is None else client[:64])

    def leave(self, seat: Seat) -> None:
        if seat.refused:
            self.refusing -= 1
            return
        self.open -= 1
        key = seat.key
        if seat.waiting:
            seat.waiting = False
            self._unwait(key)  # type: ignore[arg-type]
        if key is not None:
            count = self._per_address[key] - 1
            if count:
                self._per_address[key] = count
            else:
                del self._per_address[key]

    def count_of(self, address: str) -> int:
        """Connections open from `address` (by its key)."""
        return self._per_address.get(address_key(address), 0)

    def waiting_of(self, address: str) -> int:
        """Connections from `address` (by its key) not yet logged in."""
        return self._waiting.get(address_key(address), 0)

    def _refuse(self, why: str) -> Seat | None:
        self.refused += 1
        if self.refusing >= MAX_REFUSING:
            return None
        self.refusing += 1
        return Seat(None, False, why)


# What accept(2) may fail with for one connection, the listener being fine (as trio's).
_IGNORABLE_ACCEPT = {errno.EPERM, errno.ECONNABORTED, errno.EPROTO, errno.ENETDOWN,
                     errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
                     errno.EOPNOTSUPP, errno.ENETUNREACH}  # fmt: skip
_CLOSED = {errno.EBADF, errno.ENOTSOCK, errno.EINVAL}


class CountingListener(trio.abc.Listener[trio.SocketStream]):
    """A listener that takes what the kernel has queued in bursts (one wake-up for many
    connections, not one each), counts each connection as it accepts it
    (Connections.enter), and closes one refused without an answer there and then: no
    handler task, no stream, no buffer is made for it. The handler takes the seat with
    `Connections.accepted`. It accepts on a duplicate of the listener's descriptor (the
    same listening socket), so the trio listener stays its owner's as it was."""

    def __init__(self, listener: trio.SocketListener, connections: Connections) -> None:
        self.listener = listener
        self._connections = connections
        self._sock = socket.socket(fileno=os.dup(listener.socket.fileno()))
        self._sock.setblocking(False)
        self._burst = 0

    async def accept(self) -> trio.SocketStream:
        listening = self._sock
        connections = self._connections
        while True:
            if self._burst >= ACCEPT_BURST:
                self._burst = 0
                await trio.lowlevel.checkpoint()
            try:
                sock, address = listening.accept()
            except BlockingIOError:
                self._burst = 0
                await trio.lowlevel.wait_readable(listening)
                continue
            except OSError as exc:
                if exc.errno in _CLOSED:
                    raise trio.ClosedResourceError from None
                if exc.errno not in _IGNORABLE_ACCEPT:
                    raise  # serve_listeners waits out EMFILE and the like
                continue
            self._burst += 1
            # The peer as accept(2) gave it: no getpeername. A Unix socket's is "".
            seat = connections.enter(str(address[0]) if isinstance(address, tuple) else "")
            if seat is None:
                sock.close()
                continue
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            connections._accepted[stream] = seat
            return stream

    async def aclose(self) -> None:
        trio.lowlevel.notify_closing(self._sock)
        self._sock.close()
        await self.listener.aclose()


def counting(
    listeners: Sequence[trio.SocketListener], connections: Connections | None
) -> list[trio.abc.Listener[trio.SocketStream]]:
    """`listeners`, each counting in `connections` (as they are, when None)."""
    if connections is None:
        return list(listeners)
    return [CountingListener(listener, connections) for listener in listeners]


def forwarded_for(head: bytes) -> list[str]:
    """The X-Forwarded-For entries of a request head, oldest first, every such field in
    order (a proxy may add its own line instead of extending the last)."""
    end = head.find(b"\r\n\r\n")
    chain: list[str] = []
    for line in (head if end < 0 else head[:end]).split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"x-forwarded-for":
            chain.extend(value.decode("latin-1").split(","))
    return chain


async def close_with(
    stream: trio.SocketStream,
    answer: bytes = b"",
    peer_done: Callable[[bytes], bool] | None = None,
    *,
    drain: bool = True,
) -> None:
    """Send `answer` and close so that the peer gets to read it (and whatever was sent
    before it). Closing a socket with unread bytes sends a reset, which can destroy the
    answer before the peer reads it and gives a client still sending a reset instead of
    the answer. So: send, shut our side, read and drop what the peer still sends until it
    closes, or until `peer_done(chunk)` says what it sent ends its part (a WebSocket close
    frame), for at most ANSWER_SECONDS and MAX_DRAIN_BYTES, then close. Every error
    close goes this way: refused connections, STOMP ERRORs, WebSocket closes. Without
    `drain` (the server is shutting down: it must not wait on its clients), send and
    close."""
    with (
        trio.move_on_after(ANSWER_SECONDS),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        if answer:
            await stream.send_all(answer)
        if not drain:
            return
        await stream.send_eof()
        drained = 0
        while drained < MAX_DRAIN_BYTES:
            # Small reads: what is drained is dropped, and a flood of refused
            # connections must not hold 64 KiB each while it drains.
            chunk = await stream.receive_some(16384)
            if not chunk or (peer_done is not None and peer_done(chunk)):
                break
            drained += len(chunk)
    await stream.aclose()


async def serve_counted(
    connections: Connections,
    stream: trio.SocketStream,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    refusal: Callable[[str], bytes],
) -> None:
    """Run `handler` for a connection that has no request head (STOMP over TCP), counted
    while it runs; a refused one is sent `refusal(why)` and closed."""
    seat = connections.accepted(stream)
    if seat is None:
        await stream.aclose()
        return
    try:
        if seat.refused:
            await close_with(stream, refusal(seat.refused))
        else:
            # A handler whose protocol has a login counts its own wait for it
            # (Connections.login_wait), taking over from the seat before any await.
            connections.arrived(seat)
            await handler(stream)
    finally:
        connections.leave(seat)
