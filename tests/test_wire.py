"""WireWriter over a real socket pair: direct writes, the bounded queue, and `corked()`,
which holds what every connection is offered and writes it once per connection."""

from __future__ import annotations

import os
import socket
import types

import orjson
import pytest
import trio
import trio.testing

from chatd.net import wire
from chatd.net.wire import WireWriter

from .conftest import Server
from .stomp_client import make_room, stomp_user
from .test_stomp_bursts import send_frame


class _NoQueuedWrites(trio.abc.SendStream):
    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        raise AssertionError("no queued write expected")

    async def wait_send_all_might_not_block(self) -> None:
        raise AssertionError("not used")

    async def aclose(self) -> None:
        pass


_keep: list[socket.socket] = []  # the writers hold only file numbers


def pair(limit: int = 4) -> tuple[WireWriter, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    _keep.append(ours)
    return WireWriter(limit, _NoQueuedWrites(), ours.fileno()), theirs


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the writer's direct writes, from now on."""
    sizes: list[int] = []

    def write(fd: int, data: bytes) -> int:
        n = os.write(fd, data)
        sizes.append(n)
        return n

    monkeypatch.setattr(wire, "os", types.SimpleNamespace(write=write))
    return sizes


async def test_corked_frames_go_out_in_one_write_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    w, peer = pair()
    writes = count_writes(monkeypatch)
    with wire.corked():
        for frame in (b"a", b"b", b"c"):
            assert w.offer(frame)
        assert read_all(peer) == b""  # held until the block ends
        assert writes == [] and w.written == 0
    assert read_all(peer) == b"abc"
    assert writes == [3] and w.written == 3
    assert w.offer(b"d")  # after the block: written at once again
    assert read_all(peer) == b"d"


async def test_nested_blocks_join_the_outermost() -> None:
    w, peer = pair()
    with wire.corked():
        w.offer(b"1")
        with wire.corked():
            w.offer(b"2")
        assert read_all(peer) == b""
    assert read_all(peer) == b"12"


async def test_an_idle_socket_is_not_held_to_the_queue_limit() -> None:
    # These frames would each have been written at once: holding them is no slowness.
    w, peer = pair(limit=2)
    with wire.corked():
        assert all(w.offer(bytes([65 + i])) for i in range(10))
    assert read_all(peer) == b"ABCDEFGHIJ"


async def test_a_busy_socket_still_counts_against_the_limit() -> None:
    w, peer = pair(limit=3)
    # Fill the kernel buffer so the writer has a queue, as a slow consumer would.
    big = b"x" * (1 << 20)
    assert w.offer(big)
    assert w.offer(b"queued")
    with wire.corked():
        assert w.offer(b"one more")  # 1 queued + 1 held < 3
        assert not w.offer(b"too many")  # 1 queued + 2 held: the slow-consumer signal
    peer.close()


async def test_abort_drops_the_held_frames_and_close_soon_writes_them() -> None:
    w, peer = pair()
    with wire.corked():
        w.offer(b"dropped")
        w.abort(b"")
    assert read_all(peer) == b""

    w, peer = pair()
    with wire.corked():
        w.offer(b"kept")
        w.close_soon()
        assert w.offer(b"after close") is True  # ignored, as on any closed writer
    assert read_all(peer) == b"kept"


async def test_a_held_frame_the_socket_cannot_take_whole_is_finished_by_the_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes = count_writes(monkeypatch)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    w = WireWriter(4, stream, ours.fileno())
    big = bytes(range(256)) * 8192  # 2 MiB: far more than the kernel buffer takes at once
    received = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w.run)
            with wire.corked():
                assert w.offer(big[:1000])
                assert w.offer(big[1000:])
            assert len(writes) == 1  # the end of the block wrote what the socket took
            assert 0 < w.written == writes[0] < len(big)
            w.close_soon()
            peer = trio.socket.from_stdlib_socket(theirs)
            while len(received) < len(big):
                chunk = await peer.recv(1 << 16)
                assert chunk
                received += chunk
    assert bytes(received) == big
    assert not w.broken
    theirs.close()


async def test_a_peer_gone_at_the_end_of_the_block_costs_only_its_own_frames() -> None:
    gone, gone_peer = pair()
    alive, alive_peer = pair()
    gone_peer.close()
    with wire.corked():
        assert gone.offer(b"lost")
        assert alive.offer(b"kept")
    assert gone.broken and gone.closing
    assert read_all(alive_peer) == b"kept"
    assert gone.offer(b"later") is True  # a broken writer ignores what comes after


async def test_messages_committed_together_reach_a_member_in_order(server: Server) -> None:
    """Through the real server, where the commit hooks of a batch run corked."""
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with (
            stomp_user(server, 1, "ws") as sender,
            stomp_user(server, 2, "tcp", rooms=[room]) as member,
        ):
            await sender.send_raw(b"".join(send_frame(room, f"m{i}", None) for i in range(5)))
            got = [orjson.loads((await member.next_frame()).body) for _ in range(5)]
            assert [body["message"]["content"] for body in got] == [f"m{i}" for i in range(5)]


# --- the bounds: frames and bytes, whatever the batching --------------------------------


def busy_pair(limit: int, max_bytes: int | None = None) -> tuple[WireWriter, socket.socket]:
    """A writer whose socket is full (its peer does not read): what it is offered now is
    queued, as for a slow consumer. Its queue holds the rest of one big frame."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    _keep.extend((ours, theirs))
    if max_bytes is None:
        w = WireWriter(limit, _NoQueuedWrites(), ours.fileno())
    else:
        w = WireWriter(limit, _NoQueuedWrites(), ours.fileno(), max_bytes)
    assert w.offer(b"x" * (1 << 22))  # 4 MiB: far more than the socket takes
    return w, theirs


async def test_corked_blocks_cannot_queue_more_frames_than_the_limit() -> None:
    # The rest of the big frame is 1 frame queued; 3 more reach the limit of 4, whether
    # they come in one corked block or several.
    w, _ = busy_pair(limit=4)
    accepted = 0
    for block in range(4):
        with wire.corked():
            accepted += sum(w.offer(b"frame %d.%d" % (block, i)) for i in range(3))
    assert accepted == 3
    assert not w.offer(b"one more, uncorked")


async def test_the_queue_is_bounded_in_bytes() -> None:
    w, _ = busy_pair(limit=1000, max_bytes=64 * 1024)
    # The rest of a frame already begun is queued whatever its size (a frame is never cut
    # in two), so the queue is past the byte bound at once: nothing more goes in.
    assert not w.offer(b"small")
    with wire.corked():
        assert not w.offer(b"small")

    ours, _theirs = socket.socketpair()
    _keep.extend((ours, _theirs))
    ours.setblocking(False)
    w = WireWriter(1000, _NoQueuedWrites(), ours.fileno(), 64 * 1024)
    w._sending = True  # busy: the writer task is mid-send with nothing counted
    frame = b"y" * 1000
    accepted = sum(w.offer(frame) for _ in range(100))
    assert accepted == 65  # 65,000 bytes fit in 64 KiB, 66,000 do not
    w2 = WireWriter(1000, _NoQueuedWrites(), ours.fileno(), 64 * 1024)
    w2._sending = True
    with wire.corked():
        assert sum(w2.offer(frame) for _ in range(100)) == 65


async def test_the_batch_being_written_counts_against_the_byte_bound() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    w = WireWriter(1000, stream, ours.fileno(), 64 * 1024)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w.run)
            assert w.offer(b"z" * (1 << 22))  # mostly queued, then taken by the writer
            await trio.testing.wait_all_tasks_blocked()
            assert w._sending and not w._outbox.items  # all of it in the writer's hands
            assert not w.offer(b"small")  # 4 MiB held by the writer is past 64 KiB
            nursery.cancel_scope.cancel()
    theirs.close()


async def test_a_corked_block_to_an_idle_socket_is_written_early_at_a_bound() -> None:
    # An idle socket's frames are held without a check, as they would have been written
    # at once; but a block of many to a peer that does not read must not pile up past
    # the bounds before the block ends: it is written when it reaches a bound, and what
    # the socket does not take counts as any busy socket's queue.
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    _keep.extend((ours, theirs))
    w = WireWriter(8, _NoQueuedWrites(), ours.fileno(), 256 * 1024)
    frame = b"f" * 65536
    with wire.corked():
        results = [w.offer(frame) for _ in range(200)]  # 12.5 MiB
        assert False in results  # the slow-consumer signal, inside the block
        assert w._outbox.frames <= 8
        # Weighed every few frames (the fan-out path), so past the bound by a few at most.
        assert w._outbox.weight <= 256 * 1024 + min(8, wire._CHECK_EVERY) * len(frame)
        assert w.written > 0  # written before the block's end


async def test_a_partial_write_of_a_block_queues_only_its_unfinished_frames() -> None:
    assert wire._unfinished([b"aa", b"bb", b"cc"], 1) == 1
    assert wire._unfinished([b"aa", b"bb", b"cc"], 2) == 1
    assert wire._unfinished([b"aa", b"bb", b"cc"], 3) == 2
    assert wire._unfinished([b"aa", b"bb", b"cc"], 6) == 3
