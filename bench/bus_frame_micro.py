"""What one arriving bus frame costs a node's event loop in Python: a frame of one chat
message, signed, from another node, for a room nobody on this node is in (the node checks
the signature and the order, and decodes nothing).

    .venv/bin/python bench/bus_frame_micro.py [--frames 20000]

What a cluster's per-message CPU is made of past this (the deliveries, the reads and
wake-ups in the kernel) is measured by `bench/run.py cluster`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chatd import events  # noqa: E402
from chatd.cluster import wire  # noqa: E402
from chatd.cluster.bus import RabbitBroker  # noqa: E402
from chatd.config import BusConfig  # noqa: E402
from chatd.hub import Hub  # noqa: E402
from chatd.model import StoredMessage  # noqa: E402
from chatd.rooms import Rooms  # noqa: E402
from chatd.stomp import Frame  # noqa: E402

KEY = b"k" * 32


class _Store:
    async def last_message_id(self) -> int:
        return 0


def listening_broker() -> RabbitBroker:
    """A node's broker, on no bus, with nobody here in any room."""
    cfg = BusConfig(backend="rabbitmq", url="stomp://u:p@127.0.0.1:1/", batch_ms=2)
    broker = RabbitBroker(cfg, Hub(Rooms()), _Store())  # type: ignore[arg-type]
    broker.origin, broker.key = "mark", KEY
    broker.sequencer.start_at(0)
    return broker


def signed_frames(n: int) -> list[Frame]:
    """n frames of node n2, each one chat message to room 1 chained to the one before."""
    now = time.time()
    frames = []
    for i in range(1, n + 1):
        msg = StoredMessage(
            i, 1, 7, "user7", None, "x" * 100, "text", "2026-12-01T00:00:00Z", now, None,
            None, prev_id=i - 1,
        )  # fmt: skip
        part = wire.event_part("room.1", events.new_message(msg))
        frames.append(wire.batch_frame("chatd", "n2#abc", [part], "mark", KEY, i, int(now * 1000)))
    return frames


async def measure(n: int) -> float:
    broker = listening_broker()
    frames = signed_frames(n)
    started = time.perf_counter()
    for frame in frames:
        broker._on_frames([frame])
    elapsed = time.perf_counter() - started
    assert broker.received == n and broker.sequencer.last == n, "not every frame was taken"
    return elapsed / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--frames", type=int, default=20000)
    args = p.parse_args()
    per = trio.run(measure, args.frames)
    print(f"one arriving frame, one message, no local subscriber: {per * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
