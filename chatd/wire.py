"""A connection's way out: a bounded queue of wire bytes, one writer task, and a direct
write when the socket is idle.

Fan-out is where a chat server spends its time. When nothing is queued for a connection
and its writer is not mid-send, the bytes go straight to the socket with one
non-blocking `os.write`; no task has to wake up. Whatever the kernel does not take goes
into the queue and the writer task sends it when the socket drains. A full queue means a
slow consumer: `offer` says so and the caller cuts that one connection.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import trio

from .outbox import Outbox


class Disconnected(Exception):
    """The peer is gone."""


class WireWriter:
    __slots__ = ("_outbox", "_send", "_fd", "_sending", "_aborted", "_scope", "writes", "broken")

    def __init__(
        self,
        limit: int,
        send: Callable[[list[bytes]], Awaitable[None]],
        fd: int | None,
    ) -> None:
        self._outbox: Outbox[bytes] = Outbox(limit)
        self._send = send
        self._fd = fd
        self._sending = False
        self._aborted = False
        self._scope = trio.CancelScope()
        self.writes = 0  # bumped on every write; heart-beats watch it
        self.broken = False

    def offer(self, data: bytes) -> bool:
        """Queue (or write at once) `data`; False when the queue is full."""
        if self._aborted or self._outbox.closed:
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
                self.abort()
                return True
            self.writes += 1
            if n == len(data):
                return True
            data = data[n:]
        return self._outbox.put(data)

    def close_soon(self) -> None:
        """Write what is queued, then let `run` return."""
        self._outbox.close()

    def abort(self) -> None:
        """Stop writing now; queued bytes are dropped."""
        self._aborted = True
        self._outbox.close()
        self._scope.cancel()

    @property
    def closing(self) -> bool:
        return self._outbox.closed

    async def run(self) -> None:
        with self._scope:
            while True:
                batch = await self._outbox.get_batch()
                if not batch or self._aborted:
                    return
                self._sending = True
                try:
                    await self._send(batch)
                except Disconnected:
                    self.broken = True
                    return
                finally:
                    self._sending = False
                self.writes += 1
