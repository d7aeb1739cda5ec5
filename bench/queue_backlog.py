"""`bench/run.py queue-backlog`: the general broker draining a queue's backlog (issue 13).

    .venv/bin/python bench/run.py queue-backlog [--messages 100000] [--size 512]
        [--ack auto|client-individual] [--chatd-rev REV] [--wait-quiet] [--json]

Starts a chatd (as every scenario does: bench/run.py's start_chatd, on --server-core) with
the general broker on and chatd's shipped outbox bounds (1024 frames, 4 MiB: the flow from
queue to connection is what is measured). Then, over STOMP on TCP, from this process (on
--load-core, one trio thread):

1. publish --messages SENDs of --size bytes to one queue, a RECEIPT on the last;
2. drain them with one consumer;
3. publish as many again, and drain them with three competing consumers.

Each phase prints messages/s (wall clock, first frame sent to last frame read), the
server's CPU seconds (and per message: on a shared machine the wall clock is often the
client's or the neighbours', the server's CPU is its own), and its RSS: the peak while the
phase ran (sampled every 50 ms) and at its end. A drain checks that every message arrived once.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from types import ModuleType
from typing import Any

import trio

from chatd.stomp import CLOSED, NEED_DATA, Frame, FrameReader, FrameWriter

QUEUE = "/queue/backlog"


class Failed(Exception):
    """The server refused or cut a connection: the run cannot give its figures."""


_TCP = re.compile(r"stomp tcp (\d[\d.]*:\d+)")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py queue-backlog", description=__doc__)
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--size", type=int, default=512, help="message body length (bytes)")
    p.add_argument("--ack", choices=["auto", "client-individual"], default="auto")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--keep", action="store_true", help="keep chatd's state dir and log")
    p.add_argument("--chatd", help="chatd executable (default bench/.runtime's)")
    p.add_argument("--chatd-rev", help="run the chatd package as committed at this revision")
    p.add_argument("--python", help="with --chatd-rev: the Python to run it")
    p.add_argument(
        "--wait-quiet", action="store_true", help="first wait for the machine to be idle"
    )
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    return p.parse_args(argv)


class Conn:
    """One STOMP 1.2 connection over TCP, on chatd's own sans-I/O codec."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = FrameReader()
        self.writer = FrameWriter("1.2")

    @classmethod
    async def open(cls, addr: str, token: str) -> Conn:
        host, port = addr.rsplit(":", 1)
        c = cls(await trio.open_tcp_stream(host, int(port)))
        await c.send("CONNECT", accept_version="1.2", host="/", login="bench", passcode=token)
        frame = await c.frame()
        if frame.command != "CONNECTED":
            raise Failed(f"CONNECT refused: {frame.get('message')} {frame.body!r}")
        return c

    def encode(self, command: str, body: bytes = b"", **headers: str) -> bytes:
        items = tuple((k.replace("_", "-"), v) for k, v in headers.items())
        return self.writer.send(Frame(command, items, body))

    async def send(self, command: str, body: bytes = b"", **headers: str) -> None:
        await self.stream.send_all(self.encode(command, body, **headers))

    async def frame(self) -> Frame:
        while True:
            ev = self.reader.next_event()
            if isinstance(ev, Frame):
                if ev.command == "ERROR":
                    raise Failed(f"ERROR {ev.get('message')}: {ev.body[:200]!r}")
                return ev
            if ev is CLOSED:
                raise Failed("chatd closed the connection")
            if ev is NEED_DATA:
                self.reader.receive_data(await self.stream.receive_some(1 << 18))


async def publish(addr: str, token: str, n: int, body: bytes, first: int) -> None:
    """n SENDs, 256 KB of frames a write, a RECEIPT on the last."""
    c = await Conn.open(addr, token)
    chunk: list[bytes] = []
    size = 0
    for i in range(first, first + n - 1):
        chunk.append(c.encode("SEND", b"%09d" % i + body, destination=QUEUE))
        size += len(chunk[-1])
        if size >= 1 << 18:
            await c.stream.send_all(b"".join(chunk))
            chunk, size = [], 0
    chunk.append(
        c.encode("SEND", b"%09d" % (first + n - 1) + body, destination=QUEUE, receipt="end")
    )
    await c.stream.send_all(b"".join(chunk))
    frame = await c.frame()
    if frame.command != "RECEIPT":
        raise Failed(f"expected the RECEIPT, got {frame.command}")
    await c.stream.aclose()


async def drain(addr: str, tokens: list[str], n: int, ack: str) -> list[int]:
    """Consumers on the queue, competing, until n messages arrived; each one's count."""
    conns = [await Conn.open(addr, t) for t in tokens]
    counts = [0] * len(conns)
    seen: set[bytes] = set()
    failed: list[str] = []
    done = trio.Event()

    async def consume(k: int, c: Conn) -> None:
        try:
            await take(k, c)
        except Failed as exc:
            failed.append(f"consumer {k + 1}, after {counts[k]} messages: {exc}")
            done.set()

    async def take(k: int, c: Conn) -> None:
        await c.send("SUBSCRIBE", id="s", destination=QUEUE, ack=ack)
        acks: list[bytes] = []
        while True:
            frame = await c.frame()
            mid = frame.body[:9]
            if mid in seen:
                raise Failed(f"message {int(mid)} arrived twice")
            seen.add(mid)
            counts[k] += 1
            if ack != "auto":
                acks.append(c.encode("ACK", id=frame.get("ack") or ""))
                if len(acks) >= 100 or len(seen) == n:
                    await c.stream.send_all(b"".join(acks))
                    acks.clear()
            if len(seen) == n:
                done.set()

    async with trio.open_nursery() as nursery:
        for k, c in enumerate(conns):
            nursery.start_soon(consume, k, c)
        await done.wait()
        nursery.cancel_scope.cancel()
    for c in conns:
        await c.stream.aclose()
    if failed:
        raise Failed(f"{len(seen)} of {n} arrived; " + "; ".join(failed))
    return counts


async def phases(args: argparse.Namespace, run: ModuleType, srv: Any, addr: str) -> list[dict]:
    n = args.messages
    body = b"x" * max(0, args.size - 9)
    token = run.mint(srv, 1)
    consumers = [run.mint(srv, 2 + k) for k in range(3)]
    results: list[dict[str, Any]] = []
    peak = [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], run.rss_kb(srv.pid))
            await trio.sleep(0.05)

    async def phase(name: str, work: Any) -> None:
        peak[0] = run.rss_kb(srv.pid)
        cpu0, t0 = run.cpu_seconds(srv.pid), time.perf_counter()
        counts = await work
        secs = time.perf_counter() - t0
        cpu = run.cpu_seconds(srv.pid) - cpu0
        results.append({
            "phase": name, "messages": n, "seconds": round(secs, 3),
            "msg_per_s": round(n / secs), "server_cpu_s": round(cpu, 2),
            "server_cpu_us_per_msg": round(cpu / n * 1e6, 1),
            "rss_peak_mb": round(peak[0] / 1024, 1),
            "rss_end_mb": round(run.rss_kb(srv.pid) / 1024, 1),
            **({"per_consumer": counts} if counts else {}),
        })  # fmt: skip
        run.log(f"{name}: {n} in {secs:.2f} s, {n / secs:,.0f} msg/s")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        await phase("publish", publish(addr, token, n, body, 0))
        await phase("drain, 1 consumer", drain(addr, consumers[:1], n, args.ack))
        await phase("publish", publish(addr, token, n, body, n))
        await phase("drain, 3 consumers", drain(addr, consumers, n, args.ack))
        nursery.cancel_scope.cancel()
    return results


def main(argv: list[str], run: ModuleType) -> int:
    """Called by bench/run.py (`run` is that module: its server start and /proc readers)."""
    args = parse_args(argv)
    args.scenario = "queue-backlog"
    args.durability = None
    args.outbox = 1024
    # The broker on, room for the whole backlog, and chatd's shipped outbox bounds.
    args.server_config = {
        "stomp": {
            "broker_enabled": True,
            "broker_destinations": [QUEUE],
            "broker_queue_max_messages": args.messages,
            "broker_max_bytes": 4 * args.messages * (args.size + 512),
        },
        "chat": {"outbox_messages": 1024, "outbox_bytes": 4 * 1024 * 1024},
    }
    # An older --chatd-rev refuses keys it does not know (the byte bound came with issue 13).
    known = run.config_keys(args)
    for section, values in args.server_config.items():
        for key in [k for k in values if k not in known.get(section, set())]:
            del values[key]
    run.raise_nofile()
    if args.load_core in run.ALLOWED_CORES:
        os.sched_setaffinity(0, {args.load_core})
    if args.wait_quiet:
        run.wait_quiet()
    srv = run.start_chatd(args)
    failure: BaseException | None = None
    results: list[dict[str, Any]] = []
    try:
        found = [m.group(1) for line in srv.log_tail if (m := _TCP.search(line))]
        if not found:
            raise SystemExit("bench: chatd's ready line names no STOMP TCP listener")
        results = trio.run(phases, args, run, srv, found[0])
    except* Failed as group:
        failure = group.exceptions[0]
    finally:
        srv.stop(keep=args.keep)
    if failure is not None:
        print(f"bench: queue-backlog failed: {failure}", file=sys.stderr)
        return 1
    out = {
        "scenario": "queue-backlog", "server_version": srv.version,
        "params": {"messages": args.messages, "size": args.size, "ack": args.ack},
        "idle_rss_start_mb": round((srv.idle_rss_start_kb or 0) / 1024, 1), "phases": results,
    }  # fmt: skip
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"\n## queue-backlog: chatd ({srv.version}), {args.messages} messages of {args.size} B,"
        f" ack:{args.ack}; idle RSS {out['idle_rss_start_mb']} MB\n"
    )
    print(
        "| phase | msg/s | seconds | server CPU s | server CPU µs/msg | RSS peak MB | RSS end MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['phase']} | {r['msg_per_s']:,} | {r['seconds']} | {r['server_cpu_s']} |"
            f" {r['server_cpu_us_per_msg']} | {r['rss_peak_mb']} | {r['rss_end_mb']} |"
        )
    return 0
