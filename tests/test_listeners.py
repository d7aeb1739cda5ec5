"""The one listener binder (chatd.net.listeners): `host:port`, `[v6]:port` and `fd://N` for
every listener, all-or-nothing binding, and failures that name the listener and address."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import trio

from chatd.net.listeners import ListenError, address_of, open_listener_groups, open_listeners
from chatd.server import serve

from ._chat import chat, create_room, roundtrip
from .conftest import StartServer, make_config
from .stomp_client import issue_login, open_stomp, user_dest

TIMEOUT = 30


def tcp_socket(*, listen: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    if listen:
        sock.listen(16)
    return sock


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fd_alive(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@contextmanager
def busy_port() -> Iterator[int]:
    """A port some other program is listening on."""
    with tcp_socket() as sock:
        yield sock.getsockname()[1]


# --- fd:// for every listener, end to end --------------------------------------------------


async def test_every_listener_serves_on_an_inherited_socket(start_server: StartServer) -> None:
    # As systemd would: bound and listening before chatd starts, handed over by number.
    # detach(): from here on the descriptor is the server's, which closes it when it stops.
    socks = {kind: tcp_socket() for kind in ("http", "ws", "tcp", "metrics")}
    ports = {kind: s.getsockname()[1] for kind, s in socks.items()}
    fds = {kind: s.detach() for kind, s in socks.items()}
    with trio.fail_after(TIMEOUT):
        server = await start_server(
            http={"listen": [f"fd://{fds['http']}"]},
            stomp={
                "websocket_listen": [f"fd://{fds['ws']}"],
                "tcp_listen": [f"fd://{fds['tcp']}"],
            },
            metrics={"listen": [f"fd://{fds['metrics']}"]},
        )
        running = server.running
        assert running.http == [("127.0.0.1", ports["http"])]
        assert running.stomp_ws == [("127.0.0.1", ports["ws"])]
        assert running.stomp_tcp == [("127.0.0.1", ports["tcp"])]
        assert running.metrics == [("127.0.0.1", ports["metrics"])]

        login, passcode = await issue_login(server, 1)  # over the inherited HTTP socket
        for kind in ("tcp", "ws", "http"):
            async with open_stomp(server, kind) as c:
                await c.connect(login, passcode)
                assert await c.request("SUBSCRIBE", {"destination": user_dest(1), "id": "u"}) == []
        room = await create_room(server, [1])
        async with chat(server, 1) as ws:  # /chat, also on the inherited HTTP socket
            assert (await roundtrip(ws, room, "hello"))["content"] == "hello"
        async with httpx.AsyncClient(timeout=10) as http:
            resp = await http.get(f"http://127.0.0.1:{ports['metrics']}/metrics")
        assert resp.status_code == 200
        assert "chatd_connections" in resp.text

        await server.stop()
        # The server closed what it was handed: nothing listens there any more.
        for kind in ("http", "ws", "tcp", "metrics"):
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", ports[kind])


# --- failures name the listener and the address ----------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "kind"),
    [
        ("http", "listen", "http"),
        ("stomp", "websocket_listen", "stomp websocket"),
        ("stomp", "tcp_listen", "stomp tcp"),
        ("metrics", "listen", "metrics"),
    ],
)
async def test_a_taken_port_is_an_error_naming_the_listener(
    tmp_path: Path, section: str, key: str, kind: str
) -> None:
    with busy_port() as port, trio.fail_after(TIMEOUT):
        address = f"127.0.0.1:{port}"
        cfg = make_config(tmp_path, **{section: {key: [address]}})
        before = open_fds()
        with pytest.raises(ListenError) as info:
            await serve(cfg)
        assert str(info.value) == f"cannot listen on {address} ({kind}): address already in use"
        assert (info.value.kind, info.value.address) == (kind, address)
        # Bound before anything else: the database was never opened, and the listeners
        # bound before the failing one were closed again.
        assert not (tmp_path / "chatd.db").exists()
        assert open_fds() == before


async def test_binding_is_all_or_nothing() -> None:
    with busy_port() as port, trio.fail_after(TIMEOUT):
        before = open_fds()
        with pytest.raises(ListenError, match=rf"127\.0\.0\.1:{port} \(metrics\)"):
            await open_listener_groups(
                {"http": ["127.0.0.1:0", "127.0.0.1:0"], "metrics": [f"127.0.0.1:{port}"]}
            )
        assert open_fds() == before


async def test_an_unresolvable_host_is_named() -> None:
    with trio.fail_after(TIMEOUT), pytest.raises(ListenError) as info:
        await open_listeners("stomp tcp", ["no-such-host.invalid:61613"])
    assert str(info.value).startswith("cannot listen on no-such-host.invalid:61613 (stomp tcp): ")


# --- fd:// details ------------------------------------------------------------------------


async def test_fd_that_is_not_a_socket_is_refused_and_left_open() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(ListenError) as info:
            await open_listeners("metrics", [f"fd://{r}"])
        assert (
            str(info.value)
            == f"cannot listen on fd://{r} (metrics): socket operation on non-socket"
        )
        assert fd_alive(r)  # not ours to close: a typo must not close someone's stderr
    finally:
        os.close(r)
        os.close(w)


async def test_fd_of_a_datagram_socket_is_refused_and_left_open() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(ListenError, match=r"\(http\): not a stream socket$"):
            await open_listeners("http", [f"fd://{udp.fileno()}"])
        assert fd_alive(udp.fileno())


async def test_a_closed_fd_is_refused() -> None:
    # The highest number the limit allows: open in no test process.
    fd = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1
    assert not fd_alive(fd)
    with pytest.raises(ListenError, match=rf"fd://{fd} \(http\): bad file descriptor$"):
        await open_listeners("http", [f"fd://{fd}"])


async def test_the_same_fd_twice_is_refused() -> None:
    sock = tcp_socket()
    fd = sock.detach()
    try:
        with pytest.raises(ListenError) as info:
            await open_listener_groups({"http": [f"fd://{fd}"], "metrics": [f"fd://{fd}"]})
        assert str(info.value) == f"cannot listen on fd://{fd} (metrics): already used by http"
        # The HTTP listener had taken it, and was closed with everything else.
        assert not fd_alive(fd)
    finally:
        if fd_alive(fd):  # pragma: no cover - only when the assertion above failed
            os.close(fd)


async def test_a_bound_socket_that_does_not_listen_yet_is_made_to() -> None:
    sock = tcp_socket(listen=False)
    port = sock.getsockname()[1]
    with trio.fail_after(TIMEOUT):
        [listener] = await open_listeners("stomp tcp", [f"fd://{sock.detach()}"])
        async with listener:
            assert address_of(listener) == ("127.0.0.1", port)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            async with client, await listener.accept() as accepted:
                await client.send_all(b"ping")
                assert await accepted.receive_some(4) == b"ping"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_bracketed_ipv6_address() -> None:
    with trio.fail_after(TIMEOUT):
        [listener] = await open_listeners("http", ["[::1]:0"])
        async with listener:
            host, port = address_of(listener)
            assert host == "::1" and port > 0
            client = await trio.open_tcp_stream("::1", port)
            async with client, await listener.accept():
                pass
