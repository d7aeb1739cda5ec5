"""The store alone, no network: how fast messages are stored and how long each waits.

    taskset -c 0 .venv/bin/python bench/store_micro.py [CHECKOUT]

Two runs on a fresh database each:
- loaded: 100 tasks append 20,000 messages at once, so they share group commits on the
  writer thread. Prints messages stored per second, process CPU per message, and the
  p50/p99 of send→stored (from the call to `append_message` until it returns: the
  message is committed by then).
- idle: one task appends 2,000 messages one after the other, so the store is idle at
  each and the event loop may commit it itself. Prints the same figures.

CHECKOUT (default: this repository) lets two versions be compared from one command line.
"""

import resource
import sys
import tempfile
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(HERE))

try:
    from chatd.store import Store  # noqa: E402
except ImportError:  # a checkout from before chatd.store exported it
    from chatd.store.engine import Store  # type: ignore[no-redef]  # noqa: E402

LOADED = (20_000, 100)  # messages, tasks
IDLE = (2_000, 1)


def quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run(name: str, messages: int, tasks: int) -> None:
    store = Store(Path(tempfile.mkdtemp()) / "bench.db", 512)
    waits: list[float] = []
    clock = time.perf_counter

    async def poster(user_id: int) -> None:
        for _ in range(messages // tasks):
            sent = clock()
            await store.append_message(
                room_id=1,
                user_id=user_id,
                username="u",
                profile_image=None,
                content="hello world " * 5,
                message_type="text",
                client_timestamp=None,
                client_message_id=None,
                idempotency_window=600,
            )
            waits.append(clock() - sent)

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = clock()
    async with trio.open_nursery() as nursery:
        for user_id in range(1, tasks + 1):
            nursery.start_soon(poster, user_id)
    elapsed = clock() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    await store.aclose()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    waits.sort()
    print(
        f"{name}: {messages / elapsed:,.0f} messages/s, {cpu / messages * 1e6:.1f} us CPU/message,"
        f" send->stored p50 {quantile(waits, 0.5) * 1e6:,.0f} us"
        f" p99 {quantile(waits, 0.99) * 1e6:,.0f} us"
    )


async def main() -> None:
    await run("loaded", *LOADED)
    await run("idle", *IDLE)


trio.run(main)
