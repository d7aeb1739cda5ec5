"""The checks on what clients send, table-driven. Pure: no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from chatd.model import Outgoing
from chatd.validation import (
    MAX_ID,
    InvalidMessage,
    chat_message,
    http_send_message,
    id_of_digits,
    parse_json_object,
    room_id_of,
    stomp_send_body,
)

LIMIT = 10


def code_of(obj: dict[str, Any]) -> str:
    with pytest.raises(InvalidMessage) as info:
        chat_message(obj, LIMIT)
    assert info.value.message
    return info.value.code


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"roomId": 1, "content": "hi"}, Outgoing(1, "hi")),
        (
            {"roomId": 7, "content": "안녕하세요!", "timestamp": "2024-01-15T10:30:00Z"},
            Outgoing(7, "안녕하세요!", client_timestamp="2024-01-15T10:30:00Z"),
        ),
        ({"roomId": "12", "content": "x"}, Outgoing(12, "x")),
        ({"roomId": MAX_ID, "content": "x"}, Outgoing(MAX_ID, "x")),
        ({"roomId": 1, "content": "x" * LIMIT}, Outgoing(1, "x" * LIMIT)),
        ({"roomId": 1, "content": " x "}, Outgoing(1, " x ")),
        (
            {"roomId": 1, "content": "x", "clientMessageId": "c" * 128},
            Outgoing(1, "x", client_message_id="c" * 128),
        ),
        ({"roomId": 1, "content": "x", "timestamp": None}, Outgoing(1, "x")),
        ({"roomId": 1, "content": "x", "messageType": "image"}, Outgoing(1, "x", "image")),
        ({"roomId": 1, "content": "x", "message_type": "file"}, Outgoing(1, "x", "file")),
        ({"roomId": 1, "content": "x", "unknown": [1, 2]}, Outgoing(1, "x")),
    ],
)
def test_valid_chat_messages(obj: dict[str, Any], expected: Outgoing) -> None:
    assert chat_message(obj, LIMIT) == expected


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"content": "x"}, "bad_room_id"),
        ({"roomId": None, "content": "x"}, "bad_room_id"),
        ({"roomId": 0, "content": "x"}, "bad_room_id"),
        ({"roomId": -1, "content": "x"}, "bad_room_id"),
        ({"roomId": 1.0, "content": "x"}, "bad_room_id"),
        ({"roomId": True, "content": "x"}, "bad_room_id"),
        ({"roomId": "abc", "content": "x"}, "bad_room_id"),
        ({"roomId": "", "content": "x"}, "bad_room_id"),
        ({"roomId": "-1", "content": "x"}, "bad_room_id"),
        ({"roomId": " 1", "content": "x"}, "bad_room_id"),
        ({"roomId": "²", "content": "x"}, "bad_room_id"),
        ({"roomId": "١", "content": "x"}, "bad_room_id"),
        ({"roomId": MAX_ID + 1, "content": "x"}, "bad_room_id"),
        ({"roomId": str(MAX_ID + 1), "content": "x"}, "bad_room_id"),
        ({"roomId": "9" * 5000, "content": "x"}, "bad_room_id"),
        ({"roomId": [1], "content": "x"}, "bad_room_id"),
        ({"roomId": 1}, "bad_content"),
        ({"roomId": 1, "content": None}, "bad_content"),
        ({"roomId": 1, "content": 5}, "bad_content"),
        ({"roomId": 1, "content": ["x"]}, "bad_content"),
        ({"roomId": 1, "content": ""}, "empty_content"),
        ({"roomId": 1, "content": " \t\n"}, "empty_content"),
        ({"roomId": 1, "content": "x" * (LIMIT + 1)}, "content_too_long"),
        # U+0000: valid JSON, but PostgreSQL's text cannot hold it (refused on both stores).
        ({"roomId": 1, "content": "a\x00b"}, "bad_content"),
        ({"roomId": 1, "content": "x", "timestamp": "t\x00"}, "bad_timestamp"),
        ({"roomId": 1, "content": "x", "clientMessageId": "c\x00"}, "bad_clientMessageId"),
        ({"roomId": 1, "content": "x", "timestamp": 5}, "bad_timestamp"),
        ({"roomId": 1, "content": "x", "timestamp": "t" * 65}, "bad_timestamp"),
        ({"roomId": 1, "content": "x", "clientMessageId": 5}, "bad_clientMessageId"),
        ({"roomId": 1, "content": "x", "clientMessageId": "c" * 129}, "bad_clientMessageId"),
        ({"roomId": 1, "content": "x", "messageType": "video"}, "bad_message_type"),
        ({"roomId": 1, "content": "x", "messageType": 1}, "bad_message_type"),
    ],
)
def test_invalid_chat_messages(obj: dict[str, Any], code: str) -> None:
    assert code_of(obj) == code


def test_room_id_is_checked_before_content() -> None:
    assert code_of({"roomId": "x", "content": ""}) == "bad_room_id"


@pytest.mark.parametrize(
    "data",
    ["", "not json", "[]", "[1]", "1", '"s"', "null", "true", b"\xff\xfe", "{", '{"a":1}x'],
)
def test_parse_json_object_refuses_everything_but_an_object(data: str | bytes) -> None:
    with pytest.raises(InvalidMessage) as info:
        parse_json_object(data)
    assert info.value.code == "bad_json"


@pytest.mark.parametrize("data", ['{"roomId": 1}', b'{"roomId": 1}', ' {"roomId": 1} '])
def test_parse_json_object_text_or_bytes(data: str | bytes) -> None:
    assert parse_json_object(data) == {"roomId": 1}


@pytest.mark.parametrize(
    ("raw", "value"),
    [("0", 0), ("7", 7), ("007", 7), (str(MAX_ID), MAX_ID), (str(MAX_ID + 1), None)]
    + [(s, None) for s in ["", "-1", "+1", "1.0", " 1", "²", "١٢", "0x1", "9" * 20]],
)
def test_id_of_digits(raw: str, value: int | None) -> None:
    assert id_of_digits(raw) == value


def test_room_id_of_accepts_digit_strings() -> None:
    assert room_id_of("42") == 42
    assert room_id_of(42) == 42


def test_stomp_and_http_bodies() -> None:
    assert stomp_send_body({"content": "x", "message_type": "image"}, 3, LIMIT) == Outgoing(
        3, "x", "image"
    )
    assert http_send_message(
        {"roomId": 3, "message": {"content": "x", "clientMessageId": "m"}}, LIMIT
    ) == Outgoing(3, "x", client_message_id="m")
    with pytest.raises(InvalidMessage) as info:
        http_send_message({"roomId": 3, "message": "x"}, LIMIT)
    assert info.value.code == "bad_message"
    with pytest.raises(InvalidMessage) as info:
        stomp_send_body({"content": ""}, 3, LIMIT)
    assert info.value.code == "empty_content"
