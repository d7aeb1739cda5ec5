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

sys.path.insert(
    0, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent)
)
from chatd.store import Store

N = 20000


async def main():
    d = Path(tempfile.mkdtemp())
    store = Store(d / "x.db", 512)

    async def poster(k):
        for i in range(N // 100):
            await store.append_message(
                room_id=1,
                user_id=k,
                username="u",
                profile_image=None,
                content="hello world " * 5,
                message_type="text",
                client_timestamp=None,
                client_message_id=None,
                idempotency_window=600,
            )

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for k in range(100):
            n.start_soon(poster, k)
    t1 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(f"{N / (t1 - t0):,.0f} msgs/s, {cpu / N * 1e6:.1f} us CPU/msg")
    await store.aclose()


trio.run(main)
