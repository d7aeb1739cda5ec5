"""FrameReader(skip_oversized=True): a frame past the limits is passed over, counted, and
the next one read, however the bytes are split; what cannot be passed over (a frame that
is not STOMP) still breaks the reader."""

from collections.abc import Callable

import pytest

from chatd.stomp import NEED_DATA, Frame, FrameReader, RemoteProtocolError

from ._helpers import bytewise, random_splits, run_reader, whole

LIMITS = {"max_frame_size": 200, "max_headers": 5, "max_header_length": 30}
AFTER = b"MESSAGE\ndestination:/topic/x\ncontent-length:2\n\nok\x00"
AFTER_FRAME = Frame("MESSAGE", (("destination", "/topic/x"), ("content-length", "2")), b"ok")
BODY_WITH_NUL = b"a\x00b" * 100  # only content-length says where it ends

OVERSIZED = {
    "content-length past the frame size": (
        b"MESSAGE\ncontent-length:300\n\n" + BODY_WITH_NUL + b"\x00",
        "Frame exceeds the maximum frame size of 200 bytes",
    ),
    "body past the frame size, no content-length": (
        b"MESSAGE\n\n" + b"x" * 500 + b"\x00",
        "Frame exceeds the maximum frame size of 200 bytes",
    ),
    "too many headers, content-length among those read": (
        b"MESSAGE\ncontent-length:300\n"
        + b"".join(b"h%d:v\n" % i for i in range(9))
        + b"\n"
        + BODY_WITH_NUL
        + b"\x00",
        "Frame has more than the maximum of 5 headers",
    ),
    "too many headers, content-length among those passed over": (
        b"MESSAGE\n"
        + b"".join(b"h%d:v\n" % i for i in range(9))
        + b"content-length:300\r\ncontent-length:7\n\n"
        + BODY_WITH_NUL
        + b"\x00",
        "Frame has more than the maximum of 5 headers",
    ),
    "a header line past its limit, content-length after it": (
        b"MESSAGE\nx-note:" + b"n" * 5000 + b"\ncontent-length:300\n\n" + BODY_WITH_NUL + b"\x00",
        "A header line exceeds the maximum of 30 bytes",
    ),
    "a header line past its limit, no content-length": (
        b"MESSAGE\r\nx-note:" + b"n" * 5000 + b"\r\n\r\n" + b"body\x00",
        "A header line exceeds the maximum of 30 bytes",
    ),
}

SPLITS: dict[str, Callable[[bytes], list[bytes]]] = {
    "whole": whole,
    "bytewise": bytewise,
    "random": lambda data: random_splits(data, 7),
}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("case", OVERSIZED)
def test_an_oversized_frame_is_passed_over_and_the_next_read(case: str, split: str) -> None:
    data, reason = OVERSIZED[case]
    reader = FrameReader(skip_oversized=True, **LIMITS)
    events, error = run_reader(SPLITS[split](b"\n" + data + b"\n" + AFTER), reader)
    assert error is None
    assert [e for e in events if isinstance(e, Frame)] == [AFTER_FRAME]
    assert reader.skipped == 1 and reason in reader.skip_reason


@pytest.mark.parametrize("case", OVERSIZED)
def test_without_skip_oversized_the_same_frame_is_an_error(case: str) -> None:
    data, reason = OVERSIZED[case]
    events, error = run_reader(whole(data + AFTER), FrameReader(**LIMITS))
    assert events == [] and error is not None and reason in error.detail


def test_passing_over_keeps_no_more_than_a_read_however_big_the_frame() -> None:
    reader = FrameReader(skip_oversized=True, **LIMITS)
    chunk = b"n" * 65536
    reader.receive_data(b"MESSAGE\nx-note:")
    for _ in range(100):  # 6.5 MB of one header line, then as much body
        reader.receive_data(chunk)
        assert reader.next_event() is NEED_DATA
        assert len(reader._buf) <= 64
    reader.receive_data(b"\ncontent-length:6553600\n\n")
    for _ in range(100):
        reader.receive_data(chunk)
        assert reader.next_event() is NEED_DATA
        assert len(reader._buf) == 0
    reader.receive_data(b"\x00" + AFTER)
    assert reader.next_event() == AFTER_FRAME
    assert reader.skipped == 1


def test_frames_within_the_limits_are_untouched() -> None:
    frames = b"MESSAGE\na:1\n\nx\x00" * 3 + AFTER
    reader = FrameReader(skip_oversized=True, **LIMITS)
    events, error = run_reader(whole(frames), reader)
    assert error is None and len(events) == 4 and reader.skipped == 0


BROKEN = {
    "a NUL among the header lines passed over": (
        b"MESSAGE\n" + b"".join(b"h%d:v\n" % i for i in range(9)) + b"h:\x00\n\n\x00",
        "Unexpected NUL in headers",
    ),
    "a body longer than its content-length": (
        b"MESSAGE\ncontent-length:300\n\n" + b"x" * 301 + b"\x00",
        "Content-length mismatch",
    ),
    "a content-length that is not a number, among those passed over": (
        b"MESSAGE\n" + b"".join(b"h%d:v\n" % i for i in range(9)) + b"content-length:x\n\n\x00",
        "Invalid content-length",
    ),
    "the connection closed in the middle": (
        b"MESSAGE\ncontent-length:300\n\n" + b"x" * 100,
        "Unexpected EOF",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_what_is_not_stomp_still_breaks_the_reader(case: str) -> None:
    data, message = BROKEN[case]
    reader = FrameReader(skip_oversized=True, **LIMITS)
    events, error = run_reader(whole(data), reader)
    assert error is not None and error.message == message
    assert reader.broken and reader.skipped == 0
    with pytest.raises(RemoteProtocolError):
        reader.next_event()
