"""chatd.net.asgi_server's stream under hypercorn: a half-close (send_eof) that comes
while a response write is still in flight waits for it, instead of making trio raise
BusyResourceError in the write (which hypercorn reports as an ASGI framework error)."""

from __future__ import annotations

import socket

import trio
import trio.testing

from chatd.net.asgi_server import _WriteDeadline


async def test_a_half_close_waits_for_the_write_in_flight() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    ours = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    stream = _WriteDeadline(ours, lambda: 30.0)
    data = b"x" * (8 << 20)  # far more than the socket buffers hold: the write waits
    got = bytearray()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            writing = trio.Event()

            async def write() -> None:
                writing.set()
                await stream.send_all(data)

            nursery.start_soon(write)
            await writing.wait()
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(stream.send_eof)  # hypercorn's _close, outside its lock
            await trio.testing.wait_all_tasks_blocked()
            while chunk := await peer.receive_some(1 << 16):
                got += chunk
    assert bytes(got) == data  # all of it, then the end of the stream
    await stream.aclose()
    await peer.aclose()
