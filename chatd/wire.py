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

import os
from collections.abc import Awaitable, Callable

import trio

from .outbox import Outbox


class Disconnected(Exception):
    """The peer is gone."""


class WireWriter:
    __slots__ = (
        "_outbox",
        "_limit",
        "_send",
        "_fd",
        "_sending",
        "_head_partial",
        "_scope",
        "writes",
        "broken",
    )

    def __init__(
        self,
        limit: int,
        send: Callable[[list[bytes]], Awaitable[None]],
        fd: int | None,
    ) -> None:
        self._outbox: Outbox[bytes] = Outbox(limit)
        self._limit = limit
        self._send = send
        self._fd = fd
        self._sending = False
        self._head_partial = False  # the first queued item is the rest of a begun frame
        self._scope = trio.CancelScope()
        self.writes = 0  # bumped on every write; heart-beats watch it
        self.broken = False

    def offer(self, data: bytes) -> bool:
        """Queue (or write at once) `data`; False when the queue is full."""
        if self._outbox.closed:
            return True
        fd = self._fd
        if fd is not None and not self._sending and not len(self._outbox):
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                n = 0
            except OSError:
                # Reset or broken pipe: the reader will see the end; stop writing.
                self.broken = True
                self._outbox.close()
                self._scope.cancel()
                return True
            self.writes += 1
            if n == len(data):
                return True
            data = data[n:]
            self._head_partial = True
        return self._outbox.put(data)

    async def wait_space(self) -> None:
        """For producers that can wait (a replay of history): keep half the queue free
        for live traffic."""
        await self._outbox.wait_space(max(1, self._limit // 2))

    def close_soon(self) -> None:
        """Write what is queued, then let `run` return."""
        self._outbox.close()

    def abort(self, final: bytes = b"", grace: float = 5.0) -> None:
        """Drop the queued frames (but not the rest of one already begun), queue `final`,
        and give the writer `grace` seconds to get it out before it stops regardless."""
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
                    await self._send(batch)
                except Disconnected:
                    self.broken = True
                    return
                finally:
                    self._sending = False
                self.writes += 1
