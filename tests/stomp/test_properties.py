"""Hypothesis round-trip and fuzz tests for the STOMP frame codec."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatd.stomp import (
    COMMANDS,
    Frame,
    FrameReader,
    FrameWriter,
    HeartBeat,
    LocalProtocolError,
)

from ._helpers import bytewise, run_reader, split_at, whole

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BODY_COMMANDS = ("SEND", "MESSAGE", "ERROR")
ESCAPED_COMMANDS = sorted(COMMANDS - {"CONNECT", "CONNECTED"})
SPECIALS = ":\n\r\\"


def _text(exclude: str, *, min_size: int = 0) -> st.SearchStrategy[str]:
    chars = st.one_of(
        st.sampled_from([c for c in SPECIALS + " c-n" if c not in exclude]),
        st.characters(codec="utf-8", exclude_characters="\0" + exclude),
    )
    return st.text(chars, min_size=min_size, max_size=12)


@st.composite
def frames(
    draw: st.DrawFn, version: str, unescaped: bool = False, command: str | None = None
) -> Frame:
    """Frames the writer for ``version`` must accept."""
    if unescaped or version == "1.0":
        name_excl, value_excl = ":\n\r", "\n\r"
        choices = COMMANDS if version == "1.0" else {"CONNECT", "CONNECTED"}
    else:
        name_excl = value_excl = "\r" if version == "1.1" else ""
        choices = set(ESCAPED_COMMANDS)
    if command is None:
        command = draw(st.sampled_from(sorted(choices)))
    names = _text(name_excl, min_size=1).filter(lambda n: n != "content-length")
    headers = draw(st.lists(st.tuples(names, _text(value_excl)), max_size=6))
    body = draw(st.binary(max_size=40)) if command in BODY_COMMANDS else b""
    return Frame(command, tuple(headers), body)


def _expected(frame: Frame) -> Frame:
    if frame.body and frame.get("content-length") is None:
        return Frame(
            frame.command, (*frame.headers, ("content-length", str(len(frame.body)))), frame.body
        )
    return frame


def _roundtrip(frame_list: list[Frame], version: str, cuts: list[int]) -> None:
    writer = FrameWriter(version)
    data = b"".join(writer.send(f) + writer.heartbeat() for f in frame_list)
    expected: list[Frame | HeartBeat] = []
    for f in frame_list:
        expected += [_expected(f), HeartBeat()]
    for chunks in (whole(data), split_at(data, cuts)):
        events, error = run_reader(chunks, FrameReader(version=version))
        assert error is None, error
        assert events == expected


@SETTINGS
@given(
    st.lists(frames("1.2"), min_size=1, max_size=4),
    st.lists(st.integers(0, 2000), max_size=8),
)
def test_roundtrip_1_2(frame_list: list[Frame], cuts: list[int]) -> None:
    _roundtrip(frame_list, "1.2", cuts)


@SETTINGS
@given(
    st.lists(frames("1.1"), min_size=1, max_size=4),
    st.lists(st.integers(0, 2000), max_size=8),
)
def test_roundtrip_1_1(frame_list: list[Frame], cuts: list[int]) -> None:
    _roundtrip(frame_list, "1.1", cuts)


@SETTINGS
@given(
    st.lists(frames("1.0"), min_size=1, max_size=4),
    st.lists(st.integers(0, 2000), max_size=8),
)
def test_roundtrip_1_0(frame_list: list[Frame], cuts: list[int]) -> None:
    _roundtrip(frame_list, "1.0", cuts)


@SETTINGS
@given(st.sampled_from(["1.0", "1.1", "1.2"]), st.data())
def test_roundtrip_connect_frames(version: str, data: st.DataObject) -> None:
    frame = data.draw(frames(version, unescaped=True))
    _roundtrip([frame], version, [])


@SETTINGS
@given(st.sampled_from(["1.0", "1.1", "1.2"]), st.data())
def test_template_matches_send(version: str, data: st.DataObject) -> None:
    writer = FrameWriter(version)
    base = data.draw(frames(version, command="MESSAGE"))
    value_excl = "\n\r" if version == "1.0" else ("\r" if version == "1.1" else "")
    sub = data.draw(_text(value_excl))
    mid = data.draw(_text(value_excl))
    per = (("subscription", sub), ("message-id", mid))
    tpl = writer.template(base)
    rendered = tpl.render(per)
    assert rendered == writer.send(Frame("MESSAGE", per + base.headers, base.body))
    events, error = run_reader([rendered], FrameReader(version=version))
    assert error is None
    (frame,) = events
    assert isinstance(frame, Frame)
    assert frame.get("subscription") == sub and frame.get("message-id") == mid


@SETTINGS
@given(
    st.sampled_from(["1.0", "1.1", "1.2"]),
    st.lists(st.tuples(_text(""), _text("")), max_size=4),
    st.sampled_from(sorted(COMMANDS) + ["BOGUS", ""]),
    st.binary(max_size=10),
)
def test_writer_only_raises_local_protocol_error(
    version: str, headers: list[tuple[str, str]], command: str, body: bytes
) -> None:
    try:
        data = FrameWriter(version).send(Frame(command, tuple(headers), body))
    except LocalProtocolError:
        return
    # Whatever the writer accepts must parse back to (almost) the same frame.
    events, error = run_reader([data], FrameReader(version=version))
    assert error is None
    assert events == [_expected(Frame(command, tuple(headers), body))]


# --- fuzzing the reader ---------------------------------------------------------

ALPHABET = st.sampled_from(
    [
        b"\n",
        b"\r",
        b"\x00",
        b":",
        b"\\",
        b"\\c",
        b"\\n",
        b"\\r",
        b"\\t",
        b"\xff",
        b"a",
        b"SEND",
        b"CONNECT",
        b"MESSAGE",
        b"content-length:",
        b"3",
        b"\r\n",
        b"\n\n",
    ]
)
WIRE = st.one_of(
    st.binary(max_size=200),
    st.lists(ALPHABET, max_size=60).map(b"".join),
)
LIMITS = st.fixed_dictionaries(
    {
        "max_frame_size": st.integers(1, 300),
        "max_headers": st.integers(0, 5),
        "max_header_length": st.integers(1, 40),
    }
)


@SETTINGS
@given(WIRE, st.sampled_from(["1.0", "1.1", "1.2"]), LIMITS)
def test_fuzz_reader_only_events_or_remote_error(
    data: bytes, version: str, limits: dict[str, int]
) -> None:
    # run_reader lets any exception other than RemoteProtocolError escape.
    whole_events, whole_error = run_reader(whole(data), FrameReader(version=version, **limits))
    byte_events, byte_error = run_reader(bytewise(data), FrameReader(version=version, **limits))
    assert whole_events == byte_events
    assert (whole_error is None) == (byte_error is None)


@st.composite
def mutated_wire(draw: st.DrawFn) -> bytes:
    version = "1.2"
    frame_list = draw(st.lists(frames(version), min_size=1, max_size=3))
    writer = FrameWriter(version)
    data = bytearray(b"".join(writer.send(f) for f in frame_list))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(ALPHABET)
        if action == "insert":
            data[pos:pos] = chunk
        elif action == "delete":
            del data[pos : pos + len(chunk)]
        else:
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


@SETTINGS
@given(mutated_wire(), st.lists(st.integers(0, 2000), max_size=6))
def test_fuzz_mutated_frames(data: bytes, cuts: list[int]) -> None:
    whole_events, whole_error = run_reader(whole(data), FrameReader())
    split_events, split_error = run_reader(split_at(data, cuts), FrameReader())
    assert whole_events == split_events
    assert (whole_error is None) == (split_error is None)
