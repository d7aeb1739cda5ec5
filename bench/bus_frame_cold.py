"""What one bus frame costs a node that sleeps between frames, as a node of a cluster does
at a chat's pace: the figure behind the bus's CPU per delivery in `bench/run.py cluster`.

    .venv/bin/python bench/bus_frame_cold.py [--mode full|parse|raw|blocking] [--rate 50]
        [--seconds 16]

A forked sender on core 1 writes MESSAGE frames as RabbitMQ delivers them (a signed frame
of one chat message from another node, for a room nobody here is in) into a socket pair at
--rate a second; this process, on core 0, reads them and reports its CPU per frame
(getrusage, every thread). Between two frames it sleeps, so each frame finds the event
loop and its caches cold: on this machine that multiplies what Python costs warm
(`bench/bus_frame_micro.py`: ~9 µs for what `full` adds here) by some twenty. Modes:

- raw: trio's wait for the socket and a read, nothing else;
- parse: chatd's `Link` reading frames (`Link._read_loop`), handed to nothing;
- full: the same, each frame handed to `RabbitBroker._on_frames` (header, signature, order,
  parts, sequencer), what a node with no subscriber for the room does;
- blocking: `full`'s work on a blocking socket, without trio.

Each revision's own copy compared in turns (`git worktree add`), the figures move ±15 %
run to run: alternate, and compare medians.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus_frame_micro import listening_broker, signed_frames  # noqa: E402

from chatd.cluster import bus, wire  # noqa: E402
from chatd.cluster.link import Link, LinkLost  # noqa: E402
from chatd.stomp import Frame, FrameReader, FrameWriter  # noqa: E402


def delivered_frames(n: int) -> list[bytes]:
    """n MESSAGE frames as RabbitMQ writes a node's frames to another node."""
    writer = FrameWriter()
    out = []
    for i, sent in enumerate(signed_frames(n), 1):
        headers = (
            ("subscription", "chatd-3"), ("destination", "/exchange/amq.direct/chatd.4"),
            ("message-id", f"T_chatd-3@@session@@{i}"), ("redelivered", "false"),
            (wire.HEADER, sent.get(wire.HEADER) or ""), ("content-length", str(len(sent.body))),
        )  # fmt: skip
        out.append(writer.send(Frame("MESSAGE", headers, sent.body)))
    return out


def send_paced(sock: socket.socket, frames: list[bytes], rate: float) -> None:
    time.sleep(0.5)
    start = time.perf_counter()
    for i, data in enumerate(frames):
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sock.sendall(data)
    sock.close()


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


async def with_trio(sock: socket.socket, mode: str) -> tuple[float, int]:
    taker = listening_broker()
    got = 0

    def on_frames(frames: list[Frame]) -> None:
        nonlocal got
        got += len(frames)
        if mode == "full":
            taker._on_frames(frames)

    started = cpu_seconds()
    if mode == "raw":
        while True:
            try:
                data = os.read(sock.fileno(), 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            if not data:
                break
            got += 1
    else:
        link = Link(trio.SocketStream(trio.socket.from_stdlib_socket(sock)), 1 << 20)
        with contextlib.suppress(LinkLost):  # the sender closed its end
            await link._read_loop(on_frames)
    return cpu_seconds() - started, got


def blocking(sock: socket.socket) -> tuple[float, int]:
    taker = listening_broker()
    sock.setblocking(True)
    reader = FrameReader(max_frame_size=1 << 26, max_headers=1000, max_header_length=1 << 20)
    got = 0
    started = cpu_seconds()
    while data := sock.recv(65536):
        reader.receive_data(data)
        frames = []
        while isinstance(event := reader.next_event(), Frame):
            frames.append(event)
        got += len(frames)
        taker._on_frames(frames)
    return cpu_seconds() - started, got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", choices=("full", "parse", "raw", "blocking"), default="full")
    p.add_argument("--rate", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=16.0)
    args = p.parse_args()
    bus.FRAME_MAX_AGE = 1e9  # frames made before the run, sent during it
    frames = delivered_frames(int(args.rate * args.seconds))
    mine, theirs = socket.socketpair()
    cores = os.sched_getaffinity(0)
    if len(cores) > 1:
        os.sched_setaffinity(0, {min(cores)})
    pid = os.fork()
    if pid == 0:
        mine.close()
        if len(cores) > 1:
            os.sched_setaffinity(0, {max(cores)})
        send_paced(theirs, frames, args.rate)
        os._exit(0)
    theirs.close()
    mine.setblocking(False)
    if args.mode == "blocking":
        used, got = blocking(mine)
    else:
        used, got = trio.run(with_trio, mine, args.mode)
    os.waitpid(pid, 0)
    per = used / max(got, 1) * 1e6
    print(f"{args.mode}: {got} of {len(frames)} frames, {per:.1f} µs CPU per frame")


if __name__ == "__main__":
    main()
