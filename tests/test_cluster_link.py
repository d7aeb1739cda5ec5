"""The connection to RabbitMQ (chatd.cluster.link.Link) over a real socket pair: frames go
straight to an idle socket, what the kernel does not take is queued and follows whole and
in order, and heart-beats leave only after a silence (trio's MockClock: exact, no sleeps)."""

from __future__ import annotations

import socket

import trio
import trio.testing

from chatd.cluster.link import Link
from chatd.stomp import Frame, FrameReader


def _pair(max_pending: int) -> tuple[Link, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setblocking(False)
    return Link(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), max_pending), theirs


def _drain(peer: socket.socket) -> bytes:
    got = bytearray()
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


def _send(i: int, size: int = 100) -> Frame:
    return Frame("SEND", (("destination", "/topic/t"), ("i", str(i))), b"x" * size)


async def test_a_frame_to_an_idle_socket_is_written_at_once_without_the_write_loop() -> None:
    link, peer = _pair(1 << 20)
    assert link.send(_send(1))
    # Nothing runs the link: the bytes are on the socket already.
    reader = FrameReader()
    reader.receive_data(_drain(peer))
    frame = reader.next_event()
    assert isinstance(frame, Frame) and frame.get("i") == "1"
    await link.aclose()
    peer.close()


async def test_what_the_kernel_does_not_take_follows_whole_and_in_order() -> None:
    link, peer = _pair(64 << 20)
    frames = [_send(i, 50_000) for i in range(40)]  # far more than the socket's buffers
    for frame in frames:
        assert link.send(frame)
    assert link._pending  # the kernel took only part of it
    reader = FrameReader(max_frame_size=1 << 20)
    got: list[str | None] = []

    async def read() -> None:
        while len(got) < len(frames):
            await trio.lowlevel.wait_readable(peer)
            reader.receive_data(_drain(peer))
            while isinstance(event := reader.next_event(), Frame):
                got.append(event.get("i"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link._write_loop)
        with trio.fail_after(10):
            await read()
            await link.flushed()
        nursery.cancel_scope.cancel()
    assert got == [str(i) for i in range(40)]
    await link.aclose()
    peer.close()


async def test_a_frame_past_the_bound_is_dropped_and_counted() -> None:
    link, peer = _pair(max_pending=10_000)
    sent = 0
    while link.send(_send(sent, 5_000)):
        sent += 1
        assert sent < 1000  # the socket's buffers fill, then the bound is reached
    assert link.dropped == 1
    assert len(link._pending) <= 10_000
    await link.aclose()
    peer.close()


async def test_heart_beats_leave_after_a_silence_and_not_after_a_direct_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link, peer = _pair(1 << 20)
    link._send_every = 2.5
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link._write_loop)
        await trio.sleep(2.4)
        assert _drain(peer) == b""
        await trio.sleep(0.2)  # 2.5 s of silence: one heart-beat
        assert _drain(peer) == b"\n"
        await trio.sleep(2.0)  # 4.6 s
        assert link.send(_send(1))  # written directly: the silence starts again
        assert _drain(peer).startswith(b"SEND")
        await trio.sleep(2.4)  # 7.0 s: 5.1 s since the heart-beat, 2.4 s since the frame
        assert _drain(peer) == b""
        await trio.sleep(0.2)
        assert _drain(peer) == b"\n"
        assert round(trio.current_time() - start, 1) == 7.2
        nursery.cancel_scope.cancel()
    await link.aclose()
    peer.close()


async def test_rabbitmq_silent_past_its_heart_beat_allowance_ends_the_link(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Heart-beats (or frames) from RabbitMQ keep the link up however long it lives; once
    nothing comes for `_silent_for`, `run` ends and says why."""
    link, peer = _pair(1 << 20)
    link._silent_for = 12.5
    start = trio.current_time()
    why: list[str] = []

    async def run() -> None:
        why.append(await link.run(lambda frames: None))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        for _ in range(10):  # 50 s of heart-beats every 5 s
            await trio.sleep(5)
            peer.send(b"\n")
        assert why == []
        with trio.fail_after(60):
            while not why:
                await trio.sleep(0.5)
    assert why == ["RabbitMQ silent for 12.5 s"]
    assert 62.5 <= trio.current_time() - start <= 63.0
    await link.aclose()
    peer.close()
