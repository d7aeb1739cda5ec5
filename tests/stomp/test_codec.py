"""Table-driven and example-based tests for the STOMP frame codec."""

import ast
import pathlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypedDict

import pytest

from chatd.stomp import (
    CLIENT_COMMANDS,
    CLOSED,
    COMMANDS,
    NEED_DATA,
    SERVER_COMMANDS,
    Frame,
    FrameReader,
    FrameWriter,
    HeartBeat,
    LocalProtocolError,
    RemoteProtocolError,
    StompError,
)

from ._helpers import Event, bytewise, random_splits, run_reader, whole

HB = HeartBeat()


def F(command: str, *headers: tuple[str, str], body: bytes = b"") -> Frame:
    return Frame(command, tuple(headers), body)


class Limits(TypedDict, total=False):
    max_frame_size: int
    max_headers: int
    max_header_length: int


@dataclass
class Case:
    name: str
    data: bytes
    events: list[Event]
    error: str | None = None  # expected RemoteProtocolError.message
    version: str = "1.2"
    limits: Limits = field(default_factory=Limits)


CONNECT_HEADERS = (("accept-version", "1.2"), ("host", "chat"))

CASES = [
    # --- basic framing -------------------------------------------------------
    Case("empty-stream", b"", []),
    Case(
        "connect-lf",
        b"CONNECT\naccept-version:1.2\nhost:chat\n\n\x00",
        [F("CONNECT", *CONNECT_HEADERS)],
    ),
    Case(
        "connect-crlf",
        b"CONNECT\r\naccept-version:1.2\r\nhost:chat\r\n\r\n\x00",
        [F("CONNECT", *CONNECT_HEADERS)],
    ),
    Case(
        "connect-mixed-eol",
        b"CONNECT\r\naccept-version:1.2\nhost:chat\r\n\n\x00\r\n",
        [F("CONNECT", *CONNECT_HEADERS), HB],
    ),
    Case(
        "stomp-command",
        b"STOMP\naccept-version:1.1,1.2\nhost:chat\n\n\x00",
        [F("STOMP", ("accept-version", "1.1,1.2"), ("host", "chat"))],
    ),
    Case("no-headers", b"DISCONNECT\n\n\x00", [F("DISCONNECT")]),
    Case(
        "every-command",
        b"".join(c.encode() + b"\n\n\x00" for c in sorted(COMMANDS)),
        [F(c) for c in sorted(COMMANDS)],
    ),
    Case(
        "cr-inside-header-kept",
        b"SEND\na:b\rc\r\r\n\n\x00",
        [F("SEND", ("a", "b\rc\r"))],
    ),
    # --- escaping ------------------------------------------------------------
    Case(
        "escapes-1.2",
        b"SEND\nk\\cey:v\\c1\\n2\\r3\\\\4\n\n\x00",
        [F("SEND", ("k:ey", "v:1\n2\r3\\4"))],
    ),
    Case(
        "escapes-1.1",
        b"MESSAGE\nk\\cey:v\\c1\\n2\\\\4\n\n\x00",
        [F("MESSAGE", ("k:ey", "v:1\n2\\4"))],
        version="1.1",
    ),
    Case(
        "escape-r-undefined-in-1.1",
        b"SEND\na:b\\r\n\n\x00",
        [],
        "Invalid header escape",
        version="1.1",
    ),
    Case("escape-t-undefined", b"SEND\na:b\\tc\n\n\x00", [], "Invalid header escape"),
    Case("escape-in-name-undefined", b"SEND\na\\x:b\n\n\x00", [], "Invalid header escape"),
    Case("escape-trailing-backslash", b"SEND\na:bc\\\n\n\x00", [], "Invalid header escape"),
    Case(
        "escape-double-backslash-then-c",
        b"SEND\na:\\\\c\n\n\x00",
        [F("SEND", ("a", "\\c"))],
    ),
    Case(
        "no-escaping-in-1.0",
        b"SEND\na:b\\c\\t\\\nx\\ny:1\n\n\x00",
        [F("SEND", ("a", "b\\c\\t\\"), ("x\\ny", "1"))],
        version="1.0",
    ),
    Case(
        "connect-never-unescaped",
        b"CONNECT\nlogin:a\\cb\\n\npasscode:x\\y\\\n\n\x00",
        [F("CONNECT", ("login", "a\\cb\\n"), ("passcode", "x\\y\\"))],
    ),
    Case(
        "connected-never-unescaped",
        b"CONNECTED\nversion:1.2\nserver:chatd\\c1\n\n\x00",
        [F("CONNECTED", ("version", "1.2"), ("server", "chatd\\c1"))],
        version="1.1",
    ),
    Case(
        "stomp-frame-is-unescaped",
        b"STOMP\nlogin:a\\cb\n\n\x00",
        [F("STOMP", ("login", "a:b"))],
    ),
    # --- header syntax ---------------------------------------------------------
    Case(
        "split-at-first-colon",
        b"SEND\na:b:c\nd::\n\n\x00",
        [F("SEND", ("a", "b:c"), ("d", ":"))],
    ),
    Case(
        "whitespace-not-trimmed",
        b"SEND\n a : b \nempty:\n\n\x00",
        [F("SEND", (" a ", " b "), ("empty", ""))],
    ),
    Case(
        "repeated-headers-kept",
        b"MESSAGE\nfoo:1\nbar:x\nfoo:2\n\n\x00",
        [F("MESSAGE", ("foo", "1"), ("bar", "x"), ("foo", "2"))],
    ),
    Case(
        "utf8-headers",
        "SEND\nd\u00e9st:\u2603\U0001f600\n\n\x00".encode(),
        [F("SEND", ("d\u00e9st", "\u2603\U0001f600"))],
    ),
    Case("header-without-colon", b"SEND\ndestination\n\n\x00", [], "Malformed header"),
    Case("header-empty-name", b"SEND\n:value\n\n\x00", [], "Malformed header"),
    Case("invalid-utf8-value", b"SEND\na:\xff\xfe\n\n\x00", [], "Invalid UTF-8"),
    Case("invalid-utf8-name", b"SEND\n\xc3(:x\n\n\x00", [], "Invalid UTF-8"),
    Case("nul-in-headers", b"SEND\ndestination:/q\x00", [], "Unexpected NUL in headers"),
    Case("nul-in-complete-header", b"SEND\na:b\x00c\n\n\x00", [], "Unexpected NUL in headers"),
    # --- commands ----------------------------------------------------------------
    Case("unknown-command", b"FOO\n\n\x00", [], 'Could not interpret command "FOO"'),
    Case("lowercase-command", b"send\n\n\x00", [], 'Could not interpret command "send"'),
    Case("command-trailing-space", b"SEND \n\n\x00", [], 'Could not interpret command "SEND "'),
    Case(
        "long-unknown-command",
        b"X" * 40 + b"\n\n\x00",
        [],
        'Could not interpret command "XXXXXXXXXXXX..."',
    ),
    Case(
        "invalid-utf8-command",
        b"SE\xffND\n\n\x00",
        [],
        'Could not interpret command "SE\\\\xffND"',
    ),
    Case(
        "stray-nul-between-frames",
        b"SEND\n\n\x00\x00\n",
        [F("SEND")],
        'Could not interpret command "\\x00"',
    ),
    # --- bodies / content-length ---------------------------------------------
    Case(
        "body-ends-at-first-nul",
        b"SEND\ndestination:/q\n\nhello\x00SEND\n\n\x00",
        [F("SEND", ("destination", "/q"), body=b"hello"), F("SEND")],
    ),
    Case(
        "content-length-body-with-nuls",
        b"SEND\ndestination:/q\ncontent-length:5\n\na\x00b\x00c\x00",
        [F("SEND", ("destination", "/q"), ("content-length", "5"), body=b"a\x00b\x00c")],
    ),
    Case(
        "content-length-zero",
        b"SEND\ncontent-length:0\n\n\x00",
        [F("SEND", ("content-length", "0"))],
    ),
    Case(
        "content-length-leading-zeros",
        b"SEND\ncontent-length:0003\n\nabc\x00",
        [F("SEND", ("content-length", "0003"), body=b"abc")],
    ),
    Case(
        "content-length-first-wins",
        b"SEND\ncontent-length:3\ncontent-length:1\n\na\x00c\x00",
        [F("SEND", ("content-length", "3"), ("content-length", "1"), body=b"a\x00c")],
    ),
    Case(
        "content-length-too-small",
        b"SEND\ncontent-length:2\n\nabc\x00",
        [],
        "Content-length mismatch",
    ),
    Case(
        "content-length-too-big-eof",
        b"SEND\ncontent-length:4\n\nab\x00",
        [],
        "Unexpected EOF",
    ),
    Case(
        "content-length-negative", b"SEND\ncontent-length:-1\n\n\x00", [], "Invalid content-length"
    ),
    Case("content-length-alpha", b"SEND\ncontent-length:abc\n\n\x00", [], "Invalid content-length"),
    Case("content-length-empty", b"SEND\ncontent-length:\n\n\x00", [], "Invalid content-length"),
    Case("content-length-space", b"SEND\ncontent-length: 1\n\nx\x00", [], "Invalid content-length"),
    Case(
        "content-length-unicode-digit",
        "SEND\ncontent-length:\uff15\n\nabcde\x00".encode(),
        [],
        "Invalid content-length",
    ),
    Case(
        "content-length-huge",
        b"SEND\ncontent-length:" + b"9" * 5000 + b"\n\n\x00",
        [],
        "Frame too large",
    ),
    Case(
        "content-length-many-leading-zeros",
        b"SEND\ncontent-length:" + b"0" * 5000 + b"1\n\nx\x00",
        [F("SEND", ("content-length", "0" * 5000 + "1"), body=b"x")],
    ),
    Case(
        "content-length-escaped-name",
        b"SEND\ncontent\\c:x\ncontent-length:1\n\n\x00\x00",
        [F("SEND", ("content:", "x"), ("content-length", "1"), body=b"\x00")],
    ),
    Case(
        "body-on-connect-is-passed-through",
        b"CONNECT\n\nabc\x00",
        [F("CONNECT", body=b"abc")],
    ),
    # --- heart-beats -------------------------------------------------------------
    Case("heartbeats-only", b"\n\r\n\n\r\n", [HB, HB, HB, HB]),
    Case(
        "heartbeats-between-frames",
        b"\nSEND\n\nx\x00\n\r\n\nSEND\n\n\x00\r\n",
        [HB, F("SEND", body=b"x"), HB, HB, HB, F("SEND"), HB],
    ),
    Case(
        "many-frames-one-buffer",
        b"".join(b"SEND\nn:%d\n\n%d\x00" % (i, i) for i in range(20)),
        [F("SEND", ("n", str(i)), body=str(i).encode()) for i in range(20)],
    ),
    Case("lone-cr-then-command", b"\rSEND\n\n\x00", [], 'Could not interpret command "\\rSEND"'),
    # --- EOF ---------------------------------------------------------------------
    Case("eof-in-command", b"SEN", [], "Unexpected EOF"),
    Case("eof-after-lone-cr", b"SEND\n\n\x00\r", [F("SEND")], "Unexpected EOF"),
    Case("eof-in-headers", b"SEND\ndestination:/q\n", [], "Unexpected EOF"),
    Case("eof-before-nul", b"SEND\n\nbody", [], "Unexpected EOF"),
    Case("eof-after-frames", b"SEND\n\n\x00\n", [F("SEND"), HB]),
    # --- limits ------------------------------------------------------------------
    Case(
        "frame-size-at-limit",
        b"SEND\na:b\n\n12345\x00",  # 5 + 4 + 1 + 5 = 15 bytes before the NUL
        [F("SEND", ("a", "b"), body=b"12345")],
        limits={"max_frame_size": 15},
    ),
    Case(
        "frame-size-over-limit-no-content-length",
        b"SEND\na:b\n\n123456\x00",
        [],
        "Frame too large",
        limits={"max_frame_size": 15},
    ),
    Case(
        "frame-size-over-limit-content-length",
        b"SEND\ncontent-length:100\n\n" + b"x" * 100 + b"\x00",
        [],
        "Frame too large",
        limits={"max_frame_size": 100},
    ),
    Case(
        "frame-size-over-limit-in-headers",
        b"SEND\n" + b"".join(b"h%d:v\n" % i for i in range(10)) + b"\n\x00",
        [],
        "Frame too large",
        limits={"max_frame_size": 30},
    ),
    Case(
        "frame-size-limit-per-frame",
        b"SEND\n\n12345\x00" * 5,
        [F("SEND", body=b"12345")] * 5,
        limits={"max_frame_size": 11},
    ),
    Case(
        "headers-at-limit",
        b"SEND\na:1\nb:2\nc:3\n\n\x00",
        [F("SEND", ("a", "1"), ("b", "2"), ("c", "3"))],
        limits={"max_headers": 3},
    ),
    Case(
        "too-many-headers",
        b"SEND\na:1\nb:2\nc:3\nd:4\n\n\x00",
        [],
        "Too many headers",
        limits={"max_headers": 3},
    ),
    Case(
        "header-line-at-limit-crlf",
        b"SEND\r\nabc:defgh\r\n\r\n\x00",
        [F("SEND", ("abc", "defgh"))],
        limits={"max_header_length": 9},
    ),
    Case(
        "header-line-too-long",
        b"SEND\nabc:defghi\n\n\x00",
        [],
        "Header line too long",
        limits={"max_header_length": 9},
    ),
    Case(
        "header-line-too-long-no-eol",
        b"SEND\nabc:" + b"d" * 100,
        [],
        "Header line too long",
        limits={"max_header_length": 9},
    ),
]


def _chunkings() -> list[tuple[str, Callable[[bytes], list[bytes]]]]:
    modes: list[tuple[str, Callable[[bytes], list[bytes]]]] = [
        ("whole", whole),
        ("bytewise", bytewise),
    ]
    for seed in range(3):
        modes.append((f"random{seed}", partial(random_splits, seed=seed)))
    return modes


@pytest.mark.parametrize(("mode", "chunker"), _chunkings(), ids=[m for m, _ in _chunkings()])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reader_table(case: Case, mode: str, chunker: Callable[[bytes], list[bytes]]) -> None:
    reader = FrameReader(**case.limits)
    reader.version = case.version
    events, error = run_reader(chunker(case.data), reader)
    assert events == case.events
    if case.error is None:
        assert error is None, f"unexpected error {error!r}"
    else:
        assert error is not None, "expected a RemoteProtocolError"
        if case.error.startswith("Could not interpret command"):
            # RabbitMQ's words: the message says what, the body which command.
            assert (error.message, error.detail) == ("Bad command", case.error)
        else:
            assert error.message == case.error
        assert error.detail
        assert "\n" not in error.message


def test_case_names_unique() -> None:
    assert len({c.name for c in CASES}) == len(CASES)


# --- reader behaviour beyond the table ---------------------------------------


def test_broken_after_error_forever() -> None:
    reader = FrameReader()
    reader.receive_data(b"FOO\n\n\x00SEND\n\n\x00")
    with pytest.raises(RemoteProtocolError) as first:
        reader.next_event()
    assert reader.broken
    for _ in range(3):
        with pytest.raises(RemoteProtocolError) as again:
            reader.next_event()
        assert again.value.message == first.value.message
        assert again.value.detail == first.value.detail
    with pytest.raises(RemoteProtocolError):
        reader.receive_data(b"SEND\n\n\x00")
    with pytest.raises(RemoteProtocolError):
        reader.receive_data(b"")


def test_content_length_over_limit_rejected_before_body() -> None:
    reader = FrameReader(max_frame_size=1000)
    reader.receive_data(b"SEND\ncontent-length:1000\n\n")
    with pytest.raises(RemoteProtocolError, match="Frame too large"):
        reader.next_event()


def test_body_over_limit_rejected_without_nul() -> None:
    reader = FrameReader(max_frame_size=1000)
    reader.receive_data(b"SEND\n\n")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"x" * 900)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"x" * 100)
    with pytest.raises(RemoteProtocolError, match="Frame too large"):
        reader.next_event()


def test_partial_header_line_rejected_without_eol() -> None:
    reader = FrameReader(max_header_length=100)
    reader.receive_data(b"SEND\n" + b"a" * 101)
    assert reader.next_event() is NEED_DATA  # 101 could still be 100 + CR
    reader.receive_data(b"a")
    with pytest.raises(RemoteProtocolError, match="Header line too long"):
        reader.next_event()


def test_partial_command_rejected_without_eol() -> None:
    reader = FrameReader()
    reader.receive_data(b"G" * 64)
    with pytest.raises(RemoteProtocolError, match="Bad command"):
        reader.next_event()


def test_partial_frame_over_limit_rejected_in_headers() -> None:
    reader = FrameReader(max_frame_size=50, max_header_length=1000)
    reader.receive_data(b"SEND\n" + b"a" * 46)
    with pytest.raises(RemoteProtocolError, match="Frame too large"):
        reader.next_event()


def test_nul_in_partial_header_rejected_eagerly() -> None:
    reader = FrameReader()
    reader.receive_data(b"SEND\ndestination:/q\x00")
    with pytest.raises(RemoteProtocolError, match="Unexpected NUL"):
        reader.next_event()


def test_version_switch_after_connect() -> None:
    reader = FrameReader()
    reader.receive_data(b"CONNECT\naccept-version:1.0\n\n\x00SEND\na:b\\c\n\n\x00")
    connect = reader.next_event()
    assert isinstance(connect, Frame) and connect.command == "CONNECT"
    reader.version = "1.0"
    assert reader.next_event() == F("SEND", ("a", "b\\c"))
    assert reader.next_event() is NEED_DATA


def test_version_validation() -> None:
    with pytest.raises(ValueError):
        FrameReader(version="2.0")
    reader = FrameReader()
    with pytest.raises(ValueError):
        reader.version = "1.3"
    with pytest.raises(ValueError):
        FrameWriter(version="1")
    with pytest.raises(ValueError):
        FrameReader(max_frame_size=0)


def test_need_data_and_closed_sentinels() -> None:
    reader = FrameReader()
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_event() is CLOSED
    assert reader.next_event() is CLOSED
    reader.receive_data(b"")  # repeated EOF is harmless
    with pytest.raises(RuntimeError):
        reader.receive_data(b"x")
    assert repr(NEED_DATA) == "NEED_DATA"


def test_large_body_in_chunks_is_linear() -> None:
    body = b"x" * (4 * 1024 * 1024 - 100)
    for headers in (b"", b"content-length:%d\n" % len(body)):
        data = b"SEND\n" + headers + b"\n" + body + b"\x00"
        reader = FrameReader()
        start = time.perf_counter()
        results: list[Any] = []
        for i in range(0, len(data), 1024):
            reader.receive_data(data[i : i + 1024])
            while (event := reader.next_event()) is not NEED_DATA:
                results.append(event)
        elapsed = time.perf_counter() - start
        assert len(results) == 1 and results[0].body == body
        # A rescanning parser needs many seconds here; linear takes milliseconds.
        assert elapsed < 2.0


def test_many_small_frames_in_one_buffer() -> None:
    data = b"SEND\ndestination:/q\n\nhi\x00\n" * 20_000
    reader = FrameReader()
    reader.receive_data(data)
    start = time.perf_counter()
    count = 0
    while (event := reader.next_event()) is not NEED_DATA:
        count += isinstance(event, Frame)
    assert count == 20_000
    assert time.perf_counter() - start < 2.0


# --- Frame ------------------------------------------------------------------------


def test_frame_get_and_header_dict_first_wins() -> None:
    frame = F("MESSAGE", ("foo", "1"), ("bar", "x"), ("foo", "2"))
    assert frame.get("foo") == "1"
    assert frame.get("missing") is None
    assert frame.get("missing", "d") == "d"
    assert frame.header_dict() == {"foo": "1", "bar": "x"}
    assert list(frame.header_dict()) == ["foo", "bar"]


def test_command_sets() -> None:
    assert {
        "CONNECT",
        "STOMP",
        "SEND",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "ACK",
        "NACK",
    } <= CLIENT_COMMANDS
    assert {"BEGIN", "COMMIT", "ABORT", "DISCONNECT"} <= CLIENT_COMMANDS
    assert {"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"} == SERVER_COMMANDS
    assert COMMANDS == CLIENT_COMMANDS | SERVER_COMMANDS


def test_error_attributes() -> None:
    err = RemoteProtocolError("Bad\nthing", "long detail")
    assert isinstance(err, StompError)
    assert err.message == "Bad thing" and err.detail == "long detail"
    assert LocalProtocolError("x").detail == "x"
    assert str(err) == "Bad thing"


def test_package_imports_no_io_modules() -> None:
    # Checked on the source so that whatever chatd/__init__.py imports
    # cannot mask (or fake) a violation. The sans-I/O core of chatd.stomp is its
    # package __init__ and its private `_*.py` modules; sessions and transports beside
    # them do I/O.
    package = pathlib.Path(__file__).resolve().parents[2] / "chatd" / "stomp"
    imported: set[str] = set()
    for path in package.glob("_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert imported, "no imports found; wrong path?"
    assert not imported & {"trio", "socket", "sqlite3", "asyncio", "chatd"}
    assert imported <= sys.stdlib_module_names


# --- writer ---------------------------------------------------------------------


def test_writer_basic_bytes() -> None:
    writer = FrameWriter()
    frame = F("MESSAGE", ("destination", "/q"), ("message-id", "1"), body=b"hi")
    assert writer.send(frame) == (
        b"MESSAGE\ndestination:/q\nmessage-id:1\ncontent-length:2\n\nhi\x00"
    )
    assert writer.send(F("RECEIPT", ("receipt-id", "r1"))) == b"RECEIPT\nreceipt-id:r1\n\n\x00"
    assert writer.heartbeat() == b"\n"


def test_writer_content_length_not_duplicated() -> None:
    writer = FrameWriter()
    out = writer.send(F("SEND", ("content-length", "3"), body=b"a\x00b"))
    assert out == b"SEND\ncontent-length:3\n\na\x00b\x00"
    assert writer.send(F("SEND", ("content-length", "0"))) == b"SEND\ncontent-length:0\n\n\x00"
    assert writer.send(F("SEND")) == b"SEND\n\n\x00"
    with pytest.raises(LocalProtocolError, match="Content-length mismatch"):
        writer.send(F("SEND", ("content-length", "2"), body=b"abc"))


@pytest.mark.parametrize(
    ("version", "headers", "expected"),
    [
        ("1.2", (("a:b", "c\r\nd\\e"),), b"a\\cb:c\\r\\nd\\\\e\n"),
        ("1.1", (("a:b", "c\nd\\e"),), b"a\\cb:c\\nd\\\\e\n"),
        ("1.0", (("ab", "c:d\\e"),), b"ab:c:d\\e\n"),
    ],
)
def test_writer_escaping(
    version: str, headers: tuple[tuple[str, str], ...], expected: bytes
) -> None:
    out = FrameWriter(version).send(Frame("ERROR", headers))
    assert out == b"ERROR\n" + expected + b"\n\x00"


def test_writer_connect_connected_not_escaped() -> None:
    for version in ("1.0", "1.1", "1.2"):
        writer = FrameWriter(version)
        out = writer.send(F("CONNECTED", ("version", "1.2"), ("server", "chatd:1\\x")))
        assert out == b"CONNECTED\nversion:1.2\nserver:chatd:1\\x\n\n\x00"
        with pytest.raises(LocalProtocolError):
            writer.send(F("CONNECT", ("login", "a\nb")))
        with pytest.raises(LocalProtocolError):
            writer.send(F("CONNECT", ("lo:gin", "ab")))


@pytest.mark.parametrize(
    ("version", "frame", "message"),
    [
        ("1.2", F("FOO"), "Unknown command"),
        ("1.2", F("SEND\nX"), "Unknown command"),
        ("1.2", F("SUBSCRIBE", body=b"x"), "Body not allowed"),
        ("1.2", F("SEND", ("", "x")), "Empty header name"),
        ("1.2", F("SEND", ("a", "b\x00")), "Unencodable header"),
        ("1.2", F("SEND", ("a", "\ud800")), "Unencodable header"),
        ("1.1", F("SEND", ("a", "b\r")), "Unencodable header"),
        ("1.0", F("SEND", ("a", "b\nc")), "Unencodable header"),
        ("1.0", F("SEND", ("a", "b\rc")), "Unencodable header"),
        ("1.0", F("SEND", ("a:b", "c")), "Unencodable header"),
    ],
)
def test_writer_rejects_invalid(version: str, frame: Frame, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        FrameWriter(version).send(frame)
    assert info.value.message == message


def test_writer_version_switch() -> None:
    writer = FrameWriter()
    writer.version = "1.0"
    assert writer.version == "1.0"
    assert writer.send(F("SEND", ("a", "b\\c"))) == b"SEND\na:b\\c\n\n\x00"


# --- per-recipient template --------------------------------------------------------


def _read_all(data: bytes, version: str = "1.2") -> list[Event]:
    events, error = run_reader([data], FrameReader(version=version))
    assert error is None
    return events


def test_template_prefix_suffix_contract() -> None:
    writer = FrameWriter()
    base = F("MESSAGE", ("destination", "/topic/r1"), ("content-type", "text/plain"), body=b"hey")
    tpl = writer.template(base)
    sub_id = "sub:0\\x"
    escaped = sub_id.replace("\\", "\\\\").replace(":", "\\c").encode()
    data = tpl.prefix + b"subscription:" + escaped + b"\n" + tpl.suffix
    assert _read_all(data) == [
        F(
            "MESSAGE",
            ("subscription", sub_id),
            ("destination", "/topic/r1"),
            ("content-type", "text/plain"),
            ("content-length", "3"),
            body=b"hey",
        )
    ]


def test_template_render_matches_send() -> None:
    writer = FrameWriter()
    base = F("MESSAGE", ("destination", "/q"), body=b"x\x00y")
    tpl = writer.template(base)
    per = (("subscription", "s\n1"), ("message-id", "m:7"))
    expected = writer.send(Frame("MESSAGE", per + base.headers, base.body))
    assert tpl.render(per) == expected
    lines = [tpl.header_line(n, v) for n, v in per]
    assert tpl.assemble(*lines) == expected
    assert tpl.render() == writer.send(base)


def test_template_per_recipient_header_wins() -> None:
    tpl = FrameWriter().template(F("MESSAGE", ("subscription", "shared")))
    (frame,) = _read_all(tpl.render([("subscription", "mine")]))
    assert isinstance(frame, Frame)
    assert frame.get("subscription") == "mine"


def test_template_rejects_bad_per_recipient_headers() -> None:
    tpl = FrameWriter().template(F("MESSAGE", body=b"abc"))
    with pytest.raises(LocalProtocolError):
        tpl.render([("content-length", "3")])
    with pytest.raises(LocalProtocolError):
        tpl.header_line("", "x")
    tpl10 = FrameWriter("1.0").template(F("MESSAGE"))
    with pytest.raises(LocalProtocolError):
        tpl10.header_line("subscription", "a\nb")
    tpl11 = FrameWriter("1.1").template(F("MESSAGE"))
    assert tpl11.header_line("subscription", "a:b") == b"subscription:a\\cb\n"
    with pytest.raises(LocalProtocolError):
        tpl11.header_line("subscription", "a\rb")


def test_template_versions() -> None:
    base = F("MESSAGE", ("destination", "/q:1"), body=b"z")
    for version in ("1.0", "1.1", "1.2"):
        tpl = FrameWriter(version).template(base)
        assert tpl.version == version
        (frame,) = _read_all(tpl.render([("subscription", "7")]), version)
        assert frame == F(
            "MESSAGE",
            ("subscription", "7"),
            ("destination", "/q:1"),
            ("content-length", "1"),
            body=b"z",
        )
