"""Python bytecodes executed per delivery on the fan-out path, in one process: exact, where
CPU time per delivery on a shared machine is not.

    python bench/fanout_opcodes.py CHECKOUT [K]

100 STOMP subscriptions (chatd.stomp.session.Subscription) on idle socket pairs, and one
`wire.corked()` block offering K messages (default 26, a flat-out group commit's share)
to each: `Subscription.offer` -> `WireWriter.offer`, then the block's end, one write per
connection. The count includes this script's two loops (the same for every revision); the
time spent in C (os.write, dict lookups) is not counted.
"""

from __future__ import annotations

import socket
import sys
from types import FrameType
from typing import Any

sys.path.insert(0, sys.argv[1])
K = int(sys.argv[2]) if len(sys.argv) > 2 else 26

from chatd.net import wire  # noqa: E402
from chatd.net.wire import WireWriter  # noqa: E402
from chatd.stomp.session import Subscription  # noqa: E402


class _Event:
    __slots__ = ("cache",)

    def __init__(self, data: bytes) -> None:
        self.cache = {"k": data}


class _NoQueuedWrites:
    async def send_all(self, data: bytes) -> None:
        raise AssertionError("no queued write expected")


def main() -> None:
    keep = []
    subs = []
    for _ in range(100):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        keep.append((ours, theirs))
        try:
            writer = WireWriter(65536, _NoQueuedWrites(), ours.fileno(), 256 << 20)  # type: ignore[arg-type]
        except TypeError:  # a revision without the byte bound
            writer = WireWriter(65536, _NoQueuedWrites(), ours.fileno())  # type: ignore[arg-type]
        subs.append(Subscription(None, "0", "/d", "room.1", "auto", b"", ("", ""), writer, "k"))  # type: ignore[arg-type]
    events = [_Event(b"x" * 300) for _ in range(K)]

    def block() -> None:
        with wire.corked():
            for event in events:
                for sub in subs:
                    sub.offer(event)  # type: ignore[arg-type]

    block()  # warm: the first block is like every other
    count = 0

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        frame.f_trace_opcodes = True
        if event == "opcode":
            count += 1
        return tracer

    sys.settrace(tracer)
    block()
    sys.settrace(None)
    print(f"{sys.argv[1]} K={K}: {count / (K * 100):.1f} bytecodes per delivery")


main()
