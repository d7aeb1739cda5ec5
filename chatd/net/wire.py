"""A connection's way out: a bounded queue of wire bytes, one writer task, and a direct
write when the socket is idle.

Fan-out is where a chat server spends its time. When nothing is queued for a connection
and its writer is not mid-send, the bytes go straight to the socket with one
non-blocking `os.write`; no task has to wake up. Whatever the kernel does not take goes
into the queue and the writer task sends it when the socket drains. A full queue means a
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


class WireWriter:
    __slots__ = (
        "_outbox",
        "_limit",
        "_stream",
        "_fd",
        "_sending",
        "_head_partial",
        "_scope",
        "_cork",
        "_direct",
        "writes",
        "broken",
    )

    def __init__(self, limit: int, stream: trio.abc.SendStream, fd: int | None) -> None:
        self._outbox: Outbox[bytes] = Outbox(limit)
        self._limit = limit
        self._stream = stream
        self._fd = fd
        self._sending = False
        self._head_partial = False  # the first queued item is the rest of a begun frame
        self._scope = trio.CancelScope()
        self._cork: list[bytes] | None = None  # frames held by `corked()`
        self._direct = False  # the held frames go straight to an idle socket
        self.writes = 0  # bumped on every write; heart-beats watch it
        self.broken = False

    def offer(self, data: bytes) -> bool:
        """Queue (or write at once) `data`; False when the queue is full."""
        if self._outbox.closed:
            return True
        if _held is not None:
            return self._hold(data)
        return self._offer_now(data)

    def _offer_now(self, data: bytes) -> bool:
        if self._fd is not None and not self._sending and not self._outbox.items:
            return self._write(data)
        return self._outbox.put(data)

    def _write(self, data: bytes) -> bool:
        """One `os.write` to the idle socket; what it does not take is queued."""
        try:
            n = os.write(self._fd, data)  # type: ignore[arg-type]
        except BlockingIOError:
            n = 0
        except OSError:
            self._broke()
            return True
        self.writes += 1
        if n == len(data):
            return True
        self._head_partial = True
        return self._outbox.put(data[n:])

    def _broke(self) -> None:
        # Reset or broken pipe: the reader will see the end; stop writing.
        self.broken = True
        self._outbox.close()
        self._scope.cancel()

    def _hold(self, data: bytes) -> bool:
        cork = self._cork
        if cork is not None and self._direct:
            cork.append(data)
            return True
        # Frames for an idle socket would have been written at once: only a busy one's
        # queue counts against the limit, as it would have without the cork. Nothing in
        # a corked block awaits, so a socket idle now is still idle when it ends.
        queued = len(self._outbox.items)
        busy = bool(queued) or self._sending
        if busy and queued + (0 if cork is None else len(cork)) >= self._limit:
            return False
        if cork is None:
            self._cork = [data]
            self._direct = not busy and self._fd is not None
            assert _held is not None
            _held.append(self)
        else:
            cork.append(data)
        return True

    def _uncork(self) -> None:
        cork = self._cork
        if cork is None:
            return
        self._cork = None
        # One item however many frames: it is bounded by what one corked block offers,
        # and a busy socket's share was counted against the limit in `_hold`.
        data = cork[0] if len(cork) == 1 else b"".join(cork)
        if self._direct:
            # Idle when the block began, and nothing in a block awaits: no need to look
            # at the outbox again (per connection, on the fan-out path).
            self._write(data)
        elif not self._outbox.closed:
            self._offer_now(data)

    async def wait_space(self) -> None:
        """For producers that can wait (a replay of history): keep half the queue free
        for live traffic."""
        await self._outbox.wait_space(max(1, self._limit // 2))

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
            self._outbox.put(final)
        self._outbox.close()
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace)

    @property
    def closing(self) -> bool:
        return self._outbox.closed

    async def run(self) -> None:
        with self._scope:
            while True:
                batch = await self._outbox.get_batch()
                if not batch:
                    return
                self._head_partial = False
                self._sending = True
                try:
                    await send_joined(self._stream, batch)
                except Disconnected:
                    self.broken = True
                    return
                finally:
                    self._sending = False
                self.writes += 1
