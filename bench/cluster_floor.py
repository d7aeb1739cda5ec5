"""What a cross-node message costs on this machine before chatd does any work: the floor
under `bench/run.py cluster`'s latency phase.

    flock /tmp/bench.lock .venv/bin/python bench/cluster_floor.py [--rate 50] [--seconds 12] \
        [--amqp]

Three probes, one after the other, each paced at --rate and timed after a quarter of its
run, on an otherwise idle machine:

1. wake-up: a process on core 0 writes a byte to a pipe and one on core 1 writes it back:
   the round trip of two cross-core wake-ups. A message from a sender to a receiver on
   another node takes about eight (load generator -> node -> writer thread -> PostgreSQL
   -> writer -> node -> RabbitMQ -> node -> load generator), each from a core that may be
   idle: under a virtual machine's halted vCPU that costs far more than on bare metal.
2. bus: a private RabbitMQ started as bench/cluster.py starts it, STOMP connections by
   chatd's own `Link` (chatd/cluster/link.py): one publishes a small frame to the topic
   the others subscribe to, as a node of a cluster does: publish -> delivered, at each
   subscriber, and RabbitMQ's CPU per publish (every process of the node, over the whole
   probe), with 0, 1 and 3 subscribers. With --amqp (needs `pip install pika`), the same
   over AMQP 0-9-1: what RabbitMQ would spend if the nodes spoke AMQP to it.
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


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Probe:
    """A bus probe's figures: latencies, and RabbitMQ's CPU per publish."""

    def __init__(self, rabbit: rabbitmq_instance.RabbitInstance) -> None:
        self.rabbit = rabbit
        self.samples: list[float] = []
        self.published = 0
        self._cpu = 0.0

    def start(self) -> None:
        self._cpu = cpu_seconds(sorted(self.rabbit.processes()))

    def stop(self) -> None:
        self._cpu = cpu_seconds(sorted(self.rabbit.processes())) - self._cpu

    def line(self, name: str) -> str:
        cost = f"RabbitMQ CPU {self._cpu / max(1, self.published) * 1e6:.0f} µs/publish"
        if not self.samples:
            return f"{name}: {cost}"
        return f"{summary(name, timed(self.samples))}, {cost}"


async def bus(probe: Probe, subs: int, rate: float, seconds: float) -> None:
    address = parse_bus_url(probe.rabbit.url())
    subscribers = [await Link.open(address, 1 << 20) for _ in range(subs)]
    publisher = await Link.open(address, 1 << 20)
    samples = probe.samples

    def arrived(frames: list[Frame]) -> None:
        now = time.perf_counter()
        samples.extend(now - float(frame.body) for frame in frames)

    async with trio.open_nursery() as nursery:
        for link in subscribers:
            nursery.start_soon(link.run, arrived)
        nursery.start_soon(publisher.run, lambda frames: None)
        for link in subscribers:
            await link.subscribe("/topic/floor.#", "floor")
        probe.start()
        for _ in range(int(rate * seconds)):
            await trio.sleep(1 / rate)
            body = repr(time.perf_counter()).encode()
            publisher.send(Frame("SEND", (("destination", "/topic/floor.bus"),), body))
            probe.published += 1
        with trio.move_on_after(5):
            while len(samples) < subs * probe.published:
                await trio.sleep(0.05)
        probe.stop()
        nursery.cancel_scope.cancel()
    for link in (*subscribers, publisher):
        await link.aclose()


def bus_amqp(probe: Probe, subs: int, rate: float, seconds: float) -> None:
    """`bus` over AMQP 0-9-1 (pika, a thread per connection): amq.topic, one exclusive
    queue per subscriber bound to `floor.#`, no acks, as the STOMP plugin does."""
    import threading

    import pika  # type: ignore[import-untyped]

    params = pika.URLParameters(probe.rabbit.amqp_url())
    ready = threading.Barrier(subs + 1)
    consumers = []

    def consume() -> None:
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "amq.topic", "floor.#")

        def arrived(ch: object, method: object, props: object, body: bytes) -> None:
            probe.samples.append(time.perf_counter() - float(body))
            if body == b"0":
                channel.stop_consuming()

        channel.basic_consume(queue, arrived, auto_ack=True)
        consumers.append(conn)
        ready.wait()
        channel.start_consuming()
        conn.close()

    threads = [threading.Thread(target=consume) for _ in range(subs)]
    for thread in threads:
        thread.start()
    conn = pika.BlockingConnection(params)
    channel = conn.channel()
    ready.wait()
    probe.start()
    for _ in range(int(rate * seconds)):
        time.sleep(1 / rate)
        channel.basic_publish("amq.topic", "floor.bus", repr(time.perf_counter()).encode())
        probe.published += 1
    deadline = time.monotonic() + 5
    while len(probe.samples) < subs * probe.published and time.monotonic() < deadline:
        time.sleep(0.05)
    probe.stop()
    channel.basic_publish("amq.topic", "floor.bus", b"0")  # every consumer stops
    for thread in threads:
        thread.join(10)
    conn.close()
    del probe.samples[subs * probe.published :]


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


def with_services(rate: float, seconds: float, amqp: bool) -> list[str]:
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
            for subs in (3, 1, 0):
                probe = Probe(rabbit)
                trio.run(bus, probe, subs, rate, seconds)
                lines.append(probe.line(f"bus, STOMP publish -> {subs} subscribers"))
                print(lines[-1], flush=True)
            for subs in (3, 1, 0) if amqp else ():
                probe = Probe(rabbit)
                bus_amqp(probe, subs, rate, seconds)
                lines.append(probe.line(f"bus, AMQP publish -> {subs} subscribers"))
                print(lines[-1], flush=True)
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
            print(lines[-1], flush=True)
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
    p.add_argument("--amqp", action="store_true", help="the bus probes over AMQP too (pika)")
    args = p.parse_args()
    print(summary("wake-up, cross-core round trip", wake_up(args.rate, args.seconds)), flush=True)
    with_services(args.rate, args.seconds, args.amqp)


if __name__ == "__main__":
    main()
