#!/usr/bin/env python3
"""The host's floor for paced fan-out: what one write to an idle loopback socket costs.

    python3 bench/write_floor.py [--sockets 100] [--rate 50] [--duration 10] [--reader none]

No chatd involved. A writer pinned to core 0 sends one 420-byte frame to each of
`--sockets` TCP loopback connections, `--rate` times a second; a reader pinned to core 1
drains them with epoll and sleeps in between, as the load generator's clients do in the
paced fan-out scenario. Prints the writer's CPU per write, read from the kernel's
scheduler statistics (`/proc/self/task/TID/schedstat`, nanoseconds).

That figure is the part of "server CPU per delivery" no server code can remove: the
kernel's TCP send, the receiving side's TCP processing (on loopback it runs in the
sender's context), and waking the sleeping reader. On this VM the TCP work on a core that
was idle is most of it (`--reader none`, which wakes no one, costs as much), and it moves
with the host. Compare hosts by it before comparing
chatd's paced figures across them (BENCHMARKS.md has today's).

`--reader none` keeps the connections open but never reads or waits on them, so no write
wakes anyone: what is left is the TCP send and receive themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

FRAME = b"\x81\x7e\x01\xa4" + b"x" * 420  # the size of a 100-byte chat MESSAGE on the wire

READER = """
import select, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
ep = select.epoll()
by_fd = {}
for s in socks:
    ep.register(s.fileno(), select.EPOLLIN)
    by_fd[s.fileno()] = s
print("connected", flush=True)
while True:
    for fd, _ in ep.poll():
        if not by_fd[fd].recv(1 << 16):
            raise SystemExit
"""

IDLE_READER = """
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # room for the whole run
    s.connect(("127.0.0.1", port))
    socks.append(s)
print("connected", flush=True)
time.sleep(3600)
"""


def thread_cpu_ns() -> int:
    with open(f"/proc/self/task/{os.getpid()}/schedstat") as f:
        return int(f.read().split()[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sockets", type=int, default=100)
    ap.add_argument("--rate", type=float, default=50.0, help="rounds per second (0: flat out)")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--writer-core", default="0")
    ap.add_argument("--reader-core", default="1")
    ap.add_argument(
        "--reader", choices=("epoll", "none"), default="epoll",
        help="epoll: drain and sleep, as the load generator does; none: never read",
    )  # fmt: skip
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    os.sched_setaffinity(0, {int(args.writer_core)})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(args.sockets)
    port = listener.getsockname()[1]
    reader = subprocess.Popen(
        ["taskset", "-c", args.reader_core, sys.executable, "-c",
         READER if args.reader == "epoll" else IDLE_READER, str(port), str(args.sockets)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        conns = [listener.accept()[0] for _ in range(args.sockets)]
        assert reader.stdout is not None
        reader.stdout.readline()
        for c in conns:
            c.setblocking(False)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fds = [c.fileno() for c in conns]
        writes = 0
        cpu0 = thread_cpu_ns()
        start = time.monotonic()
        due = start
        while time.monotonic() - start < args.duration:
            if args.rate:
                due += 1 / args.rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            for fd in fds:
                try:
                    os.write(fd, FRAME)
                except BlockingIOError:
                    continue
                writes += 1
        cpu_us = (thread_cpu_ns() - cpu0) / 1000
    finally:
        reader.kill()
        reader.wait()
    res = {
        "sockets": args.sockets,
        "rate": args.rate,
        "reader": args.reader,
        "writes": writes,
        "writer_cpu_us_per_write": round(cpu_us / max(writes, 1), 2),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{res['writer_cpu_us_per_write']} µs of writer CPU per write "
            f"({writes} writes to {args.sockets} sockets, {args.rate:g} rounds/s, reader"
            f" {args.reader})"
        )


if __name__ == "__main__":
    main()
