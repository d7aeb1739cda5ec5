"""The PostgreSQL store alone, no network to clients: how fast messages are stored, how
long each waits, and the CPU chatd and PostgreSQL spend on each.

    flock /tmp/bench.lock .venv/bin/python bench/pg_store_micro.py [--cmid] [CHECKOUT]

Starts a private PostgreSQL (tests/pg_instance.py's: loopback, fsync=off,
synchronous_commit=off) and, on a fresh database each:
- loaded: 100 tasks append 20,000 messages at once (after 5 each not measured), so they
  share group commits on the writer thread. Prints messages stored per second, this
  process's CPU and PostgreSQL's (every process of the server) per message, and the
  p50/p99 of send->stored.
- idle: one task appends 2,000 messages one after the other (after 5 not measured): one
  batch's latency.

--cmid: every message carries a clientMessageId (the idempotent path).
CHECKOUT (default: this repository) lets two versions be compared from one command line.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent.parent
args = sys.argv[1:]
CMID = "--cmid" in args
args = [a for a in args if a != "--cmid"]
sys.path.insert(0, str(HERE))
from tests.pg_instance import PgInstance, _bindir  # noqa: E402

if args:
    sys.path.insert(0, args[0])

from chatd.model import Outgoing  # noqa: E402
from chatd.store.postgres import PgStore  # noqa: E402

LOADED = (20_000, 100)  # messages, tasks
IDLE = (2_000, 1)
TICK = os.sysconf("SC_CLK_TCK")


def quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def server_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster and its children (backends, background workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid, ppid = int(entry), int(fields[1])
        if pid == postmaster or ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


async def run(pg: PgInstance, name: str, messages: int, tasks: int) -> None:
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    store = PgStore(pg.create_database())
    waits: list[float] = []
    clock = time.perf_counter
    room = await store.create_room("bench", True, [])
    content = "hello world " * 5

    async def poster(user_id: int, count: int, measured: bool) -> None:
        for i in range(count):
            cmid = f"c{i}-{measured}" if CMID else None
            new = Outgoing(room, content, client_message_id=cmid)
            sent = clock()
            [result] = await store.append_messages(user_id, "u", None, [new], 600)
            assert not isinstance(result, BaseException), result
            if measured:
                waits.append(clock() - sent)

    # A first round, not measured: the connections, psycopg's prepared statements, and
    # the tasks' first batch all at once (which alone would make the loaded run's p99).
    async with trio.open_nursery() as nursery:
        for user_id in range(1, tasks + 1):
            nursery.start_soon(poster, user_id, 5, False)
    pg_before = server_cpu(postmaster)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = clock()
    async with trio.open_nursery() as nursery:
        for user_id in range(1, tasks + 1):
            nursery.start_soon(poster, user_id, messages // tasks, True)
    elapsed = clock() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    pg_after = server_cpu(postmaster)
    await store.aclose()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    waits.sort()
    print(
        f"{name}: {messages / elapsed:,.0f} messages/s,"
        f" chatd {cpu / messages * 1e6:.1f} us + PostgreSQL"
        f" {(pg_after - pg_before) / messages * 1e6:.1f} us CPU/message,"
        f" send->stored p50 {quantile(waits, 0.5) * 1e6:,.0f} us"
        f" p99 {quantile(waits, 0.99) * 1e6:,.0f} us",
        flush=True,
    )


async def main(pg: PgInstance) -> None:
    await run(pg, "loaded", *LOADED)
    await run(pg, "idle", *IDLE)


def start() -> PgInstance:
    bindir = _bindir()
    if bindir is None:
        sys.exit("PostgreSQL's binaries are not installed")
    pg = PgInstance(bindir)
    pg.start()
    return pg


if __name__ == "__main__":
    # As `chatd serve` settles its collector (chatd/cli.py, `_settle_gc`): without it a
    # full collection every half second stalls a batch by 40 ms and makes the p99.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    instance = start()
    try:
        trio.run(main, instance)
    finally:
        instance.stop()
        instance.remove()
