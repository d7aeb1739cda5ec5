"""FrameReader(skip_oversized=True): a frame past the limits is passed over, counted, and
the next one read, however the bytes are split; what cannot be passed over (a frame that
is not STOMP) still breaks the reader."""

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chatd.stomp import NEED_DATA, Frame, FrameReader, RemoteProtocolError

from ._helpers import bytewise, random_splits, run_reader, split_at, whole

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
    "a zero-padded content-length, among the lines passed over, CRLF": (
        b"MESSAGE\r\n"
        + b"".join(b"h%d:v\r\n" % i for i in range(9))
        + b"content-length:" + b"0" * 44 + b"300\r\n\r\n"
        + BODY_WITH_NUL
        + b"\x00",
        "Frame has more than the maximum of 5 headers",
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


# Any frames, some within the limits and some past them, split anywhere: the skipping
# reader yields exactly the frames a plain reader yields, and counts the others.
_OVER_LIMITS = ("Frame too large", "Header line too long", "Too many headers")


@st.composite
def _frame(draw: st.DrawFn) -> bytes:
    command = draw(st.sampled_from([b"MESSAGE", b"RECEIPT", b"ERROR"]))
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    names = st.sampled_from(["a", "x\\cy", "content-lengthx", "h", "é"])
    headers = draw(st.lists(st.tuples(names, st.text("ab0\\é: ", max_size=45)), max_size=10))
    body = draw(st.one_of(st.binary(max_size=20), st.binary(min_size=50, max_size=400)))
    if draw(st.booleans()):
        pad = "0" * draw(st.integers(0, 40))
        at = draw(st.integers(0, len(headers)))
        headers.insert(at, ("content-length", pad + str(len(body))))
        if draw(st.booleans()):  # a later one, which does not count
            headers.insert(draw(st.integers(at + 1, len(headers))), ("content-length", "7"))
    else:
        body = body.replace(b"\x00", b"")
    lines = b"".join(f"{n}:{v}".encode() + eol for n, v in headers)
    return command + eol + lines + eol + body + b"\x00" + draw(st.sampled_from([b"", eol]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_frame(), min_size=1, max_size=5),
    st.lists(st.integers(0, 3000), max_size=40),
    st.integers(5, 300),
    st.integers(0, 8),
    st.integers(1, 60),
)
def test_any_frames_split_anywhere_yield_what_fits_and_count_the_rest(
    frames: list[bytes], cuts: list[int], frame_size: int, headers: int, line: int
) -> None:
    limits = {"max_frame_size": frame_size, "max_headers": headers, "max_header_length": line}
    expected: list[Frame] = []
    over = 0
    for data in frames:
        events, error = run_reader(whole(data), FrameReader(**limits))  # type: ignore[arg-type]
        assume(error is None or error.message in _OVER_LIMITS)
        if error is None:
            expected += [e for e in events if isinstance(e, Frame)]
        else:
            over += 1
    reader = FrameReader(skip_oversized=True, **limits)  # type: ignore[arg-type]
    events, error = run_reader(split_at(b"".join(frames), cuts), reader)
    assert error is None
    assert [e for e in events if isinstance(e, Frame)] == expected
    assert reader.skipped == over
