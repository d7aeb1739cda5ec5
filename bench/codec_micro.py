"""The STOMP frame reader alone: microseconds to parse one SEND of a 20-frame burst.

    .venv/bin/python bench/codec_micro.py [CHECKOUT]

CHECKOUT (default: this repository) lets two versions be compared from one command line.
"""

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(HERE))

from chatd.stomp import NEED_DATA, Frame, FrameReader, FrameWriter  # noqa: E402

BURSTS = 5000
FRAMES = 20

headers = (
    ("destination", "/exchange/chat.direct/room.12"),
    ("content-type", "application/json"),
    ("receipt", "r-123"),
)
frame = FrameWriter("1.2").send(Frame("SEND", headers, b'{"content":"' + b"x" * 100 + b'"}'))
burst = frame * FRAMES
reader = FrameReader()
started = time.perf_counter()
for _ in range(BURSTS):
    reader.receive_data(burst)
    while reader.next_event() is not NEED_DATA:
        pass
elapsed = time.perf_counter() - started
print(f"{elapsed / BURSTS / FRAMES * 1e6:.2f} us per frame")
