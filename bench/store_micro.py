"""The store alone, no network: 100 tasks append 20,000 messages through group commit.

    taskset -c 0 .venv/bin/python bench/store_micro.py [CHECKOUT]

Prints messages stored per second and process CPU per message. CHECKOUT (default: this
repository) lets two versions be compared from one command line.
"""

import resource
import sys
import tempfile
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(HERE))

from chatd.store.engine import Store  # noqa: E402

MESSAGES = 20_000
TASKS = 100


async def main() -> None:
    store = Store(Path(tempfile.mkdtemp()) / "bench.db", 512)

    async def poster(user_id: int) -> None:
        for _ in range(MESSAGES // TASKS):
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

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for user_id in range(1, TASKS + 1):
            nursery.start_soon(poster, user_id)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(f"{MESSAGES / elapsed:,.0f} messages/s, {cpu / MESSAGES * 1e6:.1f} us CPU/message")
    await store.aclose()


trio.run(main)
