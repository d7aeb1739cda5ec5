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


class WireWriter:
    """One connection's way out, bounded in frames (`limit`) and in bytes (`max_bytes`:
    what is queued plus the batch being sent), however the frames are batched."""

    __slots__ = (
        "_outbox",
        "_limit",
        "_max_bytes",
        "_stream",
        "_fd",
        "_sending",
        "_head_partial",
        "_scope",
        "_cork",
        "_cork_bytes",
        "_check_at",
        "_room",
        "_room_bytes",
        "_direct",
        "writes",
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
        self._limit = limit
        self._max_bytes = 1 << 62 if max_bytes is None else max_bytes
        self._stream = stream
        self._fd = fd
        self._sending = False
        self._head_partial = False  # the first queued item is the rest of a begun frame
        self._scope = trio.CancelScope()
        self._cork: list[bytes] | None = None  # frames held by `corked()`
        self._cork_bytes = 0  # what the held frames weigh (kept for a busy socket only)
        self._check_at = 0  # an idle socket's held frames are weighed at this many
        self._room = self._room_bytes = 0  # what a busy socket's block may still take
        self._direct = False  # the held frames go straight to an idle socket
        self.writes = 0  # bumped on every write; heart-beats watch it
        # Bytes the socket has taken, ever: with `unwritten`, a producer can tell when a
        # frame it offered has left (the general broker settles auto-ack deliveries so).
        self.written = 0
        self.broken = False

    def offer(self, data: bytes) -> bool:
        """Queue (or write at once) `data`; False when the queue is full."""
        cork = self._cork
        if cork is not None and self._direct:
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
        self.writes += 1
        self.written += n
        if n == len(data):
            return
        self._head_partial = True
        rest = data[n:]
        self._outbox.add(rest, len(rest), 1 if frames is None else _unfinished(frames, len(rest)))

    def _broke(self) -> None:
        # Reset or broken pipe: the reader will see the end; stop writing.
        self.broken = True
        self._cork = None
        self._outbox.close()
        self._scope.cancel()

    def _hold(self, data: bytes) -> bool:
        cork = self._cork
        if cork is None:
            # Frames for an idle socket would have been written at once: only a busy
            # one's queue counts against the bounds, as it would have without the cork.
            # Nothing in a corked block awaits, so a socket idle now stays idle until the
            # block ends, or until the held frames reach a bound and are written early.
            outbox = self._outbox
            direct = not outbox.items and not self._sending and self._fd is not None
            size = len(data)
            if not direct:
                if not outbox.fits(1, size):
                    return False
                # What the rest of the block may take, read once: nothing in a corked
                # block awaits, so the queue does not change until it ends.
                self._room = outbox.slots
                self._room_bytes = outbox.room
            self._cork = [data]
            self._cork_bytes = size
            self._direct = direct
            self._check_at = min(self._limit, _CHECK_EVERY)
            assert _held is not None
            _held.append(self)
            return True
        cork.append(data)
        # A busy socket (an idle one's frames are taken in `offer`): what is queued and
        # what is held together stay within the bounds, frame by frame, though the block
        # goes into the queue as one item.
        size = self._cork_bytes + len(data)
        if len(cork) > self._room or size > self._room_bytes:
            cork.pop()
            return False
        self._cork_bytes = size
        return True

    def _check_held(self) -> None:
        """An idle socket's block has grown: written early once it reaches a bound."""
        cork = self._cork
        assert cork is not None
        if len(cork) >= self._limit or sum(map(len, cork)) >= self._max_bytes:
            self._flush_held()
        else:
            self._check_at = min(self._limit, len(cork) + _CHECK_EVERY)

    def _flush_held(self) -> None:
        """Write what an idle socket's block holds now: a block's frames never pile up
        past the bounds unwritten. What the socket does not take is queued, and the rest
        of the block counts against the bounds as any busy socket's would."""
        cork = self._cork
        assert cork is not None
        self._cork = []
        self._cork_bytes = 0
        self._check_at = min(self._limit, _CHECK_EVERY)
        self._write(b"".join(cork), cork)
        outbox = self._outbox
        if outbox.items:
            self._direct = False
            self._room = outbox.slots
            self._room_bytes = outbox.room

    def _uncork(self) -> None:
        cork = self._cork
        if cork is None:
            return
        self._cork = None
        if not cork:
            return
        data = cork[0] if len(cork) == 1 else b"".join(cork)
        if self._direct:
            # Idle when the block began, and nothing in a block awaits: no need to look
            # at the outbox again (per connection, on the fan-out path).
            self._write(data, cork)
        else:
            # One item however many frames; they were counted against the bounds one by
            # one in `_hold`.
            self._outbox.add(data, self._cork_bytes, len(cork))

    def _space_bounds(self, size: int) -> tuple[int, int]:
        # Below half the queue in frames and in bytes, and room beside what is held for
        # `size` more bytes (a frame over the byte bound only into an empty queue).
        max_bytes = self._max_bytes
        return max(1, self._limit // 2), min(max_bytes // 2, max(1, max_bytes - size + 1))

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
        cork = self._cork
        return self._outbox.weight + (sum(map(len, cork)) if cork else 0)

    def close_soon(self) -> None:
        """Write what is queued, then let `run` return."""
        self._uncork()
        self._outbox.close()

    def abort(self, final: bytes = b"", grace: float = 5.0) -> None:
        """Drop the queued frames (but not the rest of one already begun), queue `final`,
        and give the writer `grace` seconds to get it out before it stops regardless."""
        self._cork = None
        if self._outbox.closed and not final:
            self._scope.cancel()
            return
        self._outbox.drop_queued(keep_first=self._head_partial)
        if final:
            # Past the bounds if need be: the close frame or ERROR is what the peer reads.
            self._outbox.add(final, len(final), 1)
        self._outbox.close()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace)

    @property
    def closing(self) -> bool:
        return self._outbox.closed

    async def run(self) -> None:
        outbox = self._outbox
        with self._scope:
            while True:
                batch = await outbox.get_batch()
                if not batch:
                    return
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
                self.writes += 1
