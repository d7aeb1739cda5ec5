"""Numbers on the wire: `parse_digits` and every header chatd reads as a number through it
(`heart-beat`, `content-length`, `prefetch-count`, the ids of chat destinations), checked
with hypothesis against a definition written out here: ASCII digits only, a bound on the
significant ones, never a crash, always the documented ERROR, and valid values still work.

Python's own tests are the trap: "²".isdigit() and "١".isdigit() are True, int("١") is 1,
int("²") raises, and int() of 5,000 digits raises too."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chatd.stomp import (
    ROOM_PREFIX,
    USER_PREFIX,
    ConnectRequest,
    Conversation,
    Frame,
    FrameReader,
    FrameWriter,
    RemoteProtocolError,
    parse_digits,
    parse_heart_beat,
    parse_prefetch_count,
)
from chatd.stomp.session import chat_destination

from ._helpers import bytewise, run_reader, whole

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ASCII_DIGITS = "0123456789"
TRAPS = [
    "²", "³", "¹", "١", "٣", "۴", "１", "߀", "৪", "𝟙", "Ⅻ", "½",
    "-", "+", " ", "\t", "\u2003", "\u00a0", "_", ".", "e", "x", ",", "٫",
]  # fmt: skip


def reference(text: str, max_digits: int) -> int | None:
    """What a number on the wire is, without int() or str.isdigit()."""
    if not text or any(c not in ASCII_DIGITS for c in text):
        return None
    significant = text.lstrip("0")
    if len(significant) > max_digits:
        return None
    value = 0
    for c in significant:
        value = value * 10 + ASCII_DIGITS.index(c)
    return value


numbers_ish = st.one_of(
    st.integers(0, 10**30).map(str),
    st.text(st.sampled_from([*ASCII_DIGITS, *TRAPS]), max_size=25),
    st.text(st.characters(categories=["Nd", "No", "Nl", "Zs"]), max_size=8),
    st.builds(lambda z, n: "0" * z + str(n), st.integers(0, 6000), st.integers(0, 10**20)),
    st.builds(lambda d, n: d * n, st.sampled_from(["9", "1", "١", "²", "0"]), st.integers(0, 6000)),
    st.builds(lambda sign, n: sign + str(n), st.sampled_from(["-", "+", " ", "0x"]),
              st.integers(0, 99999)),
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=12),
)  # fmt: skip


# --- the helper ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "max_digits", "value"),
    [
        ("0", 1, 0),
        ("7", 1, 7),
        ("0012", 2, 12),
        ("0" * 5000 + "1", 1, 1),
        ("0" * 5000, 1, 0),
        ("123", 2, None),
        ("9" * 5000, 4300, None),  # beyond int()'s own limit: refused, never raised
        ("", 5, None),
        ("²", 5, None),
        ("١", 5, None),  # int("١") is 1
        ("１", 5, None),
        ("-1", 5, None),
        ("+1", 5, None),
        (" 1", 5, None),
        ("1 ", 5, None),
        ("1_000", 5, None),
        ("1e3", 5, None),
    ],
)
def test_parse_digits(text: str, max_digits: int, value: int | None) -> None:
    assert parse_digits(text, max_digits) == value


@SETTINGS
@given(numbers_ish, st.integers(1, 25))
def test_parse_digits_is_ascii_digits_with_a_bound(text: str, max_digits: int) -> None:
    assert parse_digits(text, max_digits) == reference(text, max_digits)


# --- heart-beat, before authentication -----------------------------------------------------

SPACES = " \t"


def _heart_beat_reference(value: str) -> tuple[int, int] | None:
    parts = value.split(",")
    if len(parts) != 2:
        return None
    x, y = (reference(p.strip(SPACES), 18) for p in parts)
    return None if x is None or y is None else (x, y)


def _connect(heart_beat: str) -> bytes:
    # CONNECT headers are never escaped: a line break cannot be carried.
    return FrameWriter("1.2").send(
        Frame("CONNECT", (("accept-version", "1.2"), ("heart-beat", heart_beat)))
    )


heart_beats = st.one_of(
    numbers_ish,
    st.builds(lambda a, b: f"{a},{b}", numbers_ish, numbers_ish),
    st.builds(lambda a, b, c: f"{a},{b},{c}", numbers_ish, numbers_ish, numbers_ish),
    # Within the frame a client may send before login (8 KiB).
).filter(lambda v: "\n" not in v and "\r" not in v and len(v.encode()) < 7000)


@SETTINGS
@given(heart_beats)
@example("²,0")
@example("0,²")
@example("١,١")
@example("1" * 5000 + ",0")
@example(" 7 ,\t8 ")
def test_heart_beat_before_connect_never_crashes(value: str) -> None:
    expected = _heart_beat_reference(value)
    conv = Conversation()
    conv.receive_data(_connect(value))
    try:
        event = conv.next_event()
    except RemoteProtocolError as exc:
        assert expected is None, (value, exc)
        assert (exc.message, exc.detail) == (
            "Invalid heart-beat header",
            f"heart-beat must be 'cx,cy', got {value!r}",
        )
        return
    assert expected is not None, value
    assert isinstance(event, ConnectRequest)
    assert parse_heart_beat(value) == expected


# --- content-length, in the codec ----------------------------------------------------------

_ESCAPE = str.maketrans({"\\": "\\\\", ":": "\\c", "\n": "\\n", "\r": "\\r"})
_MAX_FRAME = 65536


@SETTINGS
@given(numbers_ish.filter(lambda v: len(v.encode()) < 4000))
@example("3")
@example("0003")
@example("²")
@example("١")
@example("9" * 5000)
@example("0" * 5000 + "3")
def test_content_length_never_crashes(value: str) -> None:
    escaped = value.translate(_ESCAPE).encode()
    data = b"SEND\ndestination:/q\ncontent-length:%s\n\nabc\0" % escaped
    expected = reference(value, 20)
    for chunks in (whole(data), bytewise(data) if len(data) < 300 else whole(data)):
        events, error = run_reader(chunks, FrameReader(max_frame_size=_MAX_FRAME))
        if expected == 3:
            assert error is None, error
            headers = (("destination", "/q"), ("content-length", value))
            assert events == [Frame("SEND", headers, b"abc")]
            continue
        assert error is not None and events == [], (value, events)
        if expected is None:
            digits = value != "" and all(c in ASCII_DIGITS for c in value)
            assert error.message == ("Frame too large" if digits else "Invalid content-length")
        elif expected < 3:
            assert error.message == "Content-length mismatch"
        elif expected > _MAX_FRAME:
            assert error.message == "Frame too large"
        else:  # a longer body than sent: the stream ends first (or the frame is too large)
            assert error.message in ("Unexpected EOF", "Frame too large")


# --- prefetch-count and chat destination ids -----------------------------------------------


@SETTINGS
@given(st.one_of(st.none(), numbers_ish))
@example("²")
@example("١")
@example("65535")
@example("65536")
@example("")
def test_prefetch_count(value: str | None) -> None:
    expected = 0 if not value else reference(value, 5)
    if expected is not None and expected <= 65535:
        assert parse_prefetch_count(value) == expected
        return
    with pytest.raises(RemoteProtocolError) as caught:
        parse_prefetch_count(value)
    assert caught.value.message == "Bad prefetch-count"
    assert caught.value.detail.startswith("prefetch-count must be a whole number from 0 to 65535")


@SETTINGS
@given(st.sampled_from([ROOM_PREFIX, USER_PREFIX]), numbers_ish)
@example(ROOM_PREFIX, "١")
@example(ROOM_PREFIX, "01")
@example(USER_PREFIX, "9" * 18)
@example(USER_PREFIX, "9" * 19)
def test_chat_destination_ids(prefix: str, text: str) -> None:
    n = reference(text, 18)
    expected = None if not n or text[0] == "0" else n
    kind = "room" if prefix == ROOM_PREFIX else "user"
    assert chat_destination(prefix + text) == (None if expected is None else (kind, expected))
