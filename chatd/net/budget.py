"""The bytes of large HTTP responses (history pages) held at once, bounded.

A history page can be megabytes (`[chat] history_max_limit` messages of up to
`max_content_chars` each). A client that asks for pages and never reads them makes each
one wait in memory until `[http] write_timeout_seconds` drops it: a hundred such requests
held 414 MB (bench/run.py abuse, attack 4), and building them all at once stalled the
event loop for a second. So a page's bytes are taken from one budget,
`[http] max_response_bytes`, before the page is read from the store (its largest
possible size), trimmed to its real size once encoded, and given back when the response
has been written, or dropped. A request that cannot get its share within three write
timeouts is answered 503 `busy`; while it waits it holds nothing but its request.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import trio

CHUNK = 64 * 1024  # written in pieces, so that a slow reader is timed out piece by piece


class ByteBudget:
    def __init__(self) -> None:
        self.used = 0
        self._freed = trio.Event()

    async def take(self, wanted: int, capacity: int, patience: float) -> int:
        """Take `wanted` bytes (at most `capacity`: a page larger than the whole budget
        goes alone), waiting up to `patience` seconds for them; returns what was taken,
        0 when they were not to be had in time."""
        wanted = max(1, min(wanted, capacity))
        with trio.move_on_after(patience if patience > 0 else math.inf):
            while self.used and self.used + wanted > capacity:
                await self._freed.wait()
            self.used += wanted
            return wanted
        return 0

    def give_back(self, n: int) -> None:
        if n > 0:
            self.used -= n
            self._freed.set()
            self._freed = trio.Event()


class BudgetedBody:
    """A response body that holds its bytes' share of the budget until it has been
    written or dropped. Quart closes a body it sends (`aclose`), also when the write
    fails; one never sent gives its share back when it is collected."""

    def __init__(self, data: bytes, budget: ByteBudget, held: int) -> None:
        self._data: bytes | None = data
        self._budget = budget
        self._held = held
        self._at = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        data = self._data
        if data is None or self._at >= len(data):
            self._release()
            raise StopAsyncIteration
        chunk = data[self._at : self._at + CHUNK]
        self._at += CHUNK
        return chunk

    async def aclose(self) -> None:
        self._release()

    def _release(self) -> None:
        held, self._held, self._data = self._held, 0, None
        self._budget.give_back(held)

    def __del__(self) -> None:
        self._release()
