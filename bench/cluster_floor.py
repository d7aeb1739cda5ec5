"""What a cross-node message costs on this machine before chatd does any work: the floor
under `bench/run.py cluster`'s latency phase.

    flock /tmp/bench.lock .venv/bin/python bench/cluster_floor.py [--rate 50] [--seconds 12]

Three probes, one after the other, each paced at --rate and timed after a quarter of its
run, on an otherwise idle machine:

1. wake-up: a process on core 0 writes a byte to a pipe and one on core 1 writes it back:
   the round trip of two cross-core wake-ups. A message from a sender to a receiver on
   another node takes about eight (load generator -> node -> writer thread -> PostgreSQL
   -> writer -> node -> RabbitMQ -> node -> load generator), each from a core that may be
   idle: under a virtual machine's halted vCPU that costs far more than on bare metal.
2. bus: a private RabbitMQ started as bench/cluster.py starts it, four STOMP connections
   by chatd's own `Link` (chatd/cluster/link.py): one publishes a small frame to the topic
   the three others subscribe to, as a node of a 3-node cluster does: publish ->
   delivered, at each subscriber.
3. store: a private PostgreSQL (tests/pg_instance.py) and chatd's PgStore: one message at
   a time, append -> committed (its batch's round trip: the clock's lock and the INSERT)
   -> the waiting task resumed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import cluster  # noqa: E402  (bench/cluster.py: its RabbitMQ)

from chatd.cluster.link import Link  # noqa: E402
from chatd.config import parse_bus_url  # noqa: E402
from chatd.model import Outgoing  # noqa: E402
from chatd.stomp import Frame  # noqa: E402
from tests import rabbitmq_instance  # noqa: E402
from tests.pg_instance import PgInstance, _bindir  # noqa: E402


def summary(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)

    def q(p: float) -> float:
        return ms[min(len(ms) - 1, int(p * len(ms)))]

    quantiles = f"p50 {q(0.5):.3f} p90 {q(0.9):.3f} p99 {q(0.99):.3f} max {ms[-1]:.3f} ms"
    return f"{name}: n={len(ms)} {quantiles}"


def timed(samples: list[float]) -> list[float]:
    return samples[len(samples) // 4 :]


def wake_up(rate: float, seconds: float) -> list[float]:
    cores = sorted(os.sched_getaffinity(0))
    there, here = (cores[1], cores[0]) if len(cores) > 1 else (cores[0], cores[0])
    ask_r, ask_w = os.pipe()
    answer_r, answer_w = os.pipe()
    n = int(rate * seconds)
    child = os.fork()
    if child == 0:
        os.sched_setaffinity(0, {there})
        for _ in range(n):
            os.read(ask_r, 1)
            os.write(answer_w, b"x")
        os._exit(0)
    os.sched_setaffinity(0, {here})
    samples = []
    for _ in range(n):
        time.sleep(1 / rate)
        t0 = time.perf_counter()
        os.write(ask_w, b"x")
        os.read(answer_r, 1)
        samples.append(time.perf_counter() - t0)
    os.waitpid(child, 0)
    os.sched_setaffinity(0, set(cores))
    return timed(samples)


async def bus(url: str, rate: float, seconds: float) -> list[float]:
    address = parse_bus_url(url)
    subscribers = [await Link.open(address, 1 << 20) for _ in range(3)]
    publisher = await Link.open(address, 1 << 20)
    samples: list[float] = []

    def arrived(frames: list[Frame]) -> None:
        now = time.perf_counter()
        samples.extend(now - float(frame.body) for frame in frames)

    async with trio.open_nursery() as nursery:
        for link in subscribers:
            nursery.start_soon(link.run, arrived)
        nursery.start_soon(publisher.run, lambda frames: None)
        for link in subscribers:
            await link.subscribe("/topic/floor.#", "floor")
        for _ in range(int(rate * seconds)):
            await trio.sleep(1 / rate)
            body = repr(time.perf_counter()).encode()
            publisher.send(Frame("SEND", (("destination", "/topic/floor.bus"),), body))
        with trio.move_on_after(5):
            while len(samples) < 3 * int(rate * seconds):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    for link in (*subscribers, publisher):
        await link.aclose()
    return timed(samples)


async def store(dsn: str, rate: float, seconds: float) -> list[float]:
    from chatd.store.postgres import PgStore

    pg = PgStore(dsn)
    try:
        room = await pg.create_room("floor", True, [])
        samples = []
        for i in range(int(rate * seconds)):
            await trio.sleep(1 / rate)
            t0 = time.perf_counter()
            await pg.append_messages(1, "floor", None, [Outgoing(room, f"m{i}")], 600.0)
            samples.append(time.perf_counter() - t0)
        return timed(samples)
    finally:
        await pg.aclose()


def with_services(rate: float, seconds: float) -> list[str]:
    lines = []
    rabbit_class: Callable[..., rabbitmq_instance.RabbitInstance] = cluster._benchmark_rabbit(
        rabbitmq_instance
    )
    bindir = rabbitmq_instance._bindir()
    if bindir is None:
        lines.append("bus: RabbitMQ is not installed")
    else:
        rabbit = rabbit_class(bindir)
        rabbit.start()
        try:
            lines.append(
                summary("bus, publish -> 3 subscribers", trio.run(bus, rabbit.url(), rate, seconds))
            )
        finally:
            rabbit.stop()
            rabbit.remove()
    pg_bin = _bindir()
    if pg_bin is None:
        lines.append("store: PostgreSQL is not installed")
    else:
        pg = PgInstance(pg_bin)
        pg.start()
        try:
            dsn = pg.create_database()
            lines.append(summary("store, append -> committed", trio.run(store, dsn, rate, seconds)))
        finally:
            pg.stop()
            pg.remove()
    return lines


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rate", type=float, default=50.0, help="probes per second")
    p.add_argument("--seconds", type=float, default=12.0, help="each probe's length")
    args = p.parse_args()
    print(summary("wake-up, cross-core round trip", wake_up(args.rate, args.seconds)), flush=True)
    for line in with_services(args.rate, args.seconds):
        print(line, flush=True)


if __name__ == "__main__":
    main()
