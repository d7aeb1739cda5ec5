"""Shared helpers for the STOMP codec tests."""

import random
from collections.abc import Iterable, Sequence

from chatd.stomp import CLOSED, NEED_DATA, Frame, FrameReader, HeartBeat, RemoteProtocolError

Event = Frame | HeartBeat


def whole(data: bytes) -> list[bytes]:
    return [data] if data else []


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    chunks: list[bytes] = []
    i = 0
    while i < len(data):
        step = rng.choice((1, 2, 3, 5, 8, 13, 64))
        chunks.append(data[i : i + step])
        i += step
    return chunks


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def run_reader(
    chunks: Sequence[bytes], reader: FrameReader
) -> tuple[list[Event], RemoteProtocolError | None]:
    """Feed ``chunks`` then EOF; return the events and the error, if any.

    Asserts that a clean stream ends with CLOSED and that nothing but
    events / NEED_DATA / CLOSED / RemoteProtocolError comes out.
    """
    events: list[Event] = []
    try:
        for chunk in chunks:
            assert chunk, "an empty chunk would mean EOF"
            reader.receive_data(chunk)
            while True:
                event = reader.next_event()
                if event is NEED_DATA:
                    break
                assert event is not CLOSED, "CLOSED before EOF"
                assert isinstance(event, Frame | HeartBeat)
                events.append(event)
        reader.receive_data(b"")
        while True:
            event = reader.next_event()
            if event is CLOSED:
                break
            assert event is not NEED_DATA, "NEED_DATA after EOF"
            assert isinstance(event, Frame | HeartBeat)
            events.append(event)
    except RemoteProtocolError as exc:
        return events, exc
    # CLOSED is sticky.
    assert reader.next_event() is CLOSED
    return events, None
