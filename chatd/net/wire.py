"""A connection's way out: a bounded queue of wire bytes, one writer task, and a direct
write when the socket is idle.

Fan-out is where a chat server spends its time. When nothing is queued for a connection
and its writer is not mid-send, the bytes go straight to the socket with one
non-blocking `os.write`; no task has to wake up. Whatever the kernel does not take goes
into the queue and the writer task sends it when the socket drains. The queue is bounded
in frames and in bytes, whatever the batching (a corked block goes in as one item, but
counts as its frames and its bytes). A full queue means a
slow consumer: `offer` says so and the caller cuts that one connection with `abort`,
which drops the queued frames but never a frame already begun, so the final frame
(a close or an ERROR) still arrives whole if the peer ever reads again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import trio

from chatd.net.outbox import Outbox


class Disconnected(Exception):
    """The peer is gone."""


async def send_joined(stream: trio.abc.SendStream, chunks: list[bytes]) -> None:
    """One `send_all` of `chunks` joined; a peer that is gone raises Disconnected."""
    try:
        await stream.send_all(b"".join(chunks))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise Disconnected() from None


# The writers holding frames while `corked()` is open; None when it is not.
_held: list[WireWriter] | None = None


@contextlib.contextmanager
def corked() -> Iterator[None]:
    """Hold what every connection is offered inside the block and write it at the end,
    one system call per connection. A commit of many messages to one room then costs each
    member one write instead of one per message. Frames offered inside keep their order
    and come before anything offered after. Nested blocks join the outermost."""
    global _held
    if _held is not None:
        yield
        return
    held: list[WireWriter] = []
    _held = held
    try:
        yield
    finally:
        _held = None
        for writer in held:
            writer._uncork()


# An idle socket's corked block is weighed every this many frames, not at each (this is
# the fan-out path); one reaching a bound is written early (`_check_held`), so what it can
# leave queued exceeds the byte bound by at most this many frames.
_CHECK_EVERY = 64


def _unfinished(frames: list[bytes], rest: int) -> int:
    """How many of `frames`, written joined, are not whole when the last `rest` bytes of
    them are still to go."""
    count = 0
    for frame in reversed(frames):
        count += 1
        rest -= len(frame)
        if rest <= 0:
            break
    return count


class _Block:
    """A busy socket's corked block: its frames, what they weigh, and what the queue could
    still take when the block began (nothing in a block awaits, so the queue does not
    change until it ends). Made per block for busy sockets only: an idle one's block is a
    plain list (`WireWriter._cork`), and most are idle."""

    __slots__ = ("frames", "size", "room", "room_bytes")

    def __init__(self, frames: list[bytes], size: int, room: int, room_bytes: int) -> None:
        self.frames = frames
        self.size = size
        self.room = room
        self.room_bytes = room_bytes


class WireWriter:
    """One connection's way out, bounded in frames (`limit`) and in bytes (`max_bytes`:
    what is queued plus the batch being sent), however the frames are batched.

    Ten thousand of these are alive at once, so the state is lean: the bounds are the
    outbox's, a corked block is a list (idle socket) or a `_Block` (busy one), and `run`
    cancels through the scope it is run in rather than a scope of its own."""

    __slots__ = (
        "_outbox",
        "_stream",
        "_fd",
        "_sending",
        "_head_partial",
        "_scope",
        "_cork",
        "_check_at",
        "_block",
        "written",
        "broken",
    )

    def __init__(
        self,
        limit: int,
        stream: trio.abc.SendStream,
        fd: int | None,
        max_bytes: int | None = None,
    ) -> None:
        self._outbox: Outbox[bytes] = Outbox(limit, max_bytes)
        self._stream = stream
        self._fd = fd
        self._sending = False
        self._head_partial = False  # the first queued item is the rest of a begun frame
        # What `run` runs in (or, before it runs, what an `abort` left for it to take on).
        self._scope: trio.CancelScope | None = None
        # An idle socket's frames held by `corked()`: they go straight to the socket at
        # the end of the block. Weighed when there are `_check_at` of them (`_check_held`).
        self._cork: list[bytes] | None = None
        self._check_at = min(limit, _CHECK_EVERY)
        self._block: _Block | None = None  # a busy socket's frames held by `corked()`
        # Bytes the socket has taken, ever: with `unwritten`, a producer can tell when a
        # frame it offered has left (the general broker settles auto-ack deliveries so),
        # and heart-beats see whether anything was written.
        self.written = 0
        self.broken = False

    def offer(self, data: bytes) -> bool:
        """Queue (or write at once) `data`; False when the queue is full."""
        cork = self._cork
        if cork is not None:
            # The fan-out path (a corked block to an idle socket), without a call: most
            # deliveries take it. A block is set only inside `corked()`, and dropped when
            # the writer closes or breaks.
            cork.append(data)
            if len(cork) >= self._check_at:
                self._check_held()
            return True
        if self._outbox.closed:
            return True
        if _held is not None:
            return self._hold(data)
        return self._offer_now(data)

    def _offer_now(self, data: bytes) -> bool:
        if self._fd is not None and not self._sending and not self._outbox.items:
            self._write(data, None)
            return True
        return self._outbox.put(data, len(data))

    def _write(self, data: bytes, frames: list[bytes] | None) -> None:
        """One `os.write` to the idle socket (`frames`: the frames `data` joins, None for
        one); what it does not take is queued. The queue is empty here, so the rest of a
        begun frame always goes in: a frame is never cut in two."""
        try:
            n = os.write(self._fd, data)  # type: ignore[arg-type]
        except BlockingIOError:
            n = 0
        except OSError:
            self._broke()
            return
        self.written += n
        if n == len(data):
            return
        self._head_partial = True
        rest = data[n:]
        self._outbox.add(rest, len(rest), 1 if frames is None else _unfinished(frames, len(rest)))

    def _broke(self) -> None:
        # Reset or broken pipe: the reader will see the end; stop writing. Only an idle
        # socket is written directly, so nothing is queued, and closing the outbox wakes
        # the writer, which then returns.
        self.broken = True
        self._drop_held()
        self._outbox.close()

    def _drop_held(self) -> None:
        self._cork = None
        self._block = None
        self._check_at = min(self._outbox.limit, _CHECK_EVERY)

    def _hold(self, data: bytes) -> bool:
        block = self._block
        if block is not None:
            # A busy socket (an idle one's frames are taken in `offer`): what is queued
            # and what is held together stay within the bounds, frame by frame, though
            # the block goes into the queue as one item.
            frames = block.frames
            size = block.size + len(data)
            if len(frames) >= block.room or size > block.room_bytes:
                return False
            frames.append(data)
            block.size = size
            return True
        # The block's first frame for this connection. Frames for an idle socket would
        # have been written at once: only a busy one's queue counts against the bounds,
        # as it would have without the cork. Nothing in a corked block awaits, so a socket
        # idle now stays idle until the block ends, or until the held frames reach a
        # bound and are written early.
        outbox = self._outbox
        if not outbox.items and not self._sending and self._fd is not None:
            self._cork = [data]
        elif outbox.fits(1, len(data)):
            self._block = _Block([data], len(data), outbox.slots, outbox.room)
        else:
            return False
        assert _held is not None
        _held.append(self)
        return True

    def _check_held(self) -> None:
        """An idle socket's block has grown: written early once it reaches a bound."""
        cork = self._cork
        assert cork is not None
        outbox = self._outbox
        if len(cork) >= outbox.limit or sum(map(len, cork)) >= outbox.max_bytes:
            self._flush_held()
        else:
            self._check_at = min(outbox.limit, len(cork) + _CHECK_EVERY)

    def _flush_held(self) -> None:
        """Write what an idle socket's block holds now: a block's frames never pile up
        past the bounds unwritten. What the socket does not take is queued, and the rest
        of the block counts against the bounds as any busy socket's would."""
        cork = self._cork
        assert cork is not None
        outbox = self._outbox
        self._cork = []
        self._check_at = min(outbox.limit, _CHECK_EVERY)
        self._write(b"".join(cork), cork)
        if outbox.items and self._cork is not None:
            # Busy now: the rest of the block is checked frame by frame. (`_cork` is
            # None when the write broke the connection.)
            self._cork = None
            self._block = _Block([], 0, outbox.slots, outbox.room)

    def _uncork(self) -> None:
        cork = self._cork
        if cork is not None:
            # Idle when the block began, and nothing in a block awaits: no need to look
            # at the outbox again (per connection, on the fan-out path).
            self._cork = None
            n = len(cork)
            if n >= _CHECK_EVERY:
                self._check_at = min(self._outbox.limit, _CHECK_EVERY)
            if n:
                self._write(cork[0] if n == 1 else b"".join(cork), cork)
            return
        block = self._block
        if block is not None:
            self._block = None
            frames = block.frames
            if frames:
                # One item however many frames; they were counted against the bounds one
                # by one in `_hold`.
                data = frames[0] if len(frames) == 1 else b"".join(frames)
                self._outbox.add(data, block.size, len(frames))

    def _space_bounds(self, size: int) -> tuple[int, int]:
        # Below half the queue in frames and in bytes, and room beside what is held for
        # `size` more bytes (a frame over the byte bound only into an empty queue).
        outbox = self._outbox
        max_bytes = outbox.max_bytes
        return max(1, outbox.limit // 2), min(max_bytes // 2, max(1, max_bytes - size + 1))

    async def wait_space(self, size: int = 0) -> None:
        """For producers that can wait (a replay of history, a queue's backlog): keep half
        the queue, in frames and in bytes, free for live traffic, and wait until a frame
        of `size` bytes fits."""
        await self._outbox.wait_space(*self._space_bounds(size))

    def space_for(self, size: int) -> bool:
        """Whether `wait_space(size)` would return at once on an open writer."""
        outbox = self._outbox
        frames, below = self._space_bounds(size)
        return not outbox.closed and outbox.frames < frames and outbox.weight < below

    @property
    def unwritten(self) -> int:
        """Bytes offered and not yet taken by the socket: queued, being sent, or held by
        `corked()`. A frame offered now has left once `written` reaches `written +
        unwritten` read just after the offer."""
        cork, block = self._cork, self._block
        held = sum(map(len, cork)) if cork else 0 if block is None else block.size
        return self._outbox.weight + held

    def close_soon(self) -> None:
        """Write what is queued, then let `run` return."""
        self._uncork()
        self._outbox.close()

    def abort(self, final: bytes = b"", grace: float = 5.0) -> None:
        """Drop the queued frames (but not the rest of one already begun), queue `final`,
        and give the writer `grace` seconds to get it out before it stops regardless."""
        self._drop_held()
        scope = self._scope
        if scope is None:
            # `run` has not started: it takes this deadline (or cancel) on.
            scope = self._scope = trio.CancelScope()
        if self._outbox.closed and not final:
            scope.cancel()
            return
        self._outbox.drop_queued(keep_first=self._head_partial)
        if final:
            # Past the bounds if need be: the close frame or ERROR is what the peer reads.
            self._outbox.add(final, len(final), 1)
        self._outbox.close()
        scope.deadline = min(scope.deadline, trio.current_time() + grace)

    @property
    def closing(self) -> bool:
        return self._outbox.closed

    async def run(self, scope: trio.CancelScope | None = None) -> None:
        """Send what is queued until the outbox is closed and empty. `scope`: the cancel
        scope this is awaited in, directly; `abort` cancels it, or gives it a deadline,
        to stop the writer (and so whatever else the scope holds: a session's nursery
        ends with its writer anyway). Without one, the writer runs in a scope of its own."""
        if scope is None:
            with trio.CancelScope() as own:
                await self.run(own)
            return
        pending = self._scope
        self._scope = scope
        if pending is not None:  # an abort came before
            scope.deadline = min(scope.deadline, pending.deadline)
            if pending.cancel_called:
                scope.cancel()
        outbox = self._outbox
        try:
            while True:
                if not outbox.items:
                    if outbox.closed:
                        return
                    await outbox.wait_items()
                    continue
                batch = outbox.take()
                data = batch[0] if len(batch) == 1 else b"".join(batch)
                # Only the joined bytes stay alive while the socket takes them, and they
                # count against the byte bound until it has.
                del batch
                self._head_partial = False
                self._sending = True
                try:
                    await self._stream.send_all(data)
                    self.written += len(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.broken = True
                    return
                finally:
                    self._sending = False
                    outbox.sent(len(data))
                del data
        finally:
            self._scope = None  # a later abort is for a later `run`
