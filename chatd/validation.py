"""Checks on what clients send, shared by every protocol. Pure: no I/O."""

from __future__ import annotations

from typing import Any

import orjson

from chatd.model import ClientError, Outgoing


class InvalidMessage(ClientError):
    """A client sent something we refuse; `code` is the machine-readable error code."""


MESSAGE_TYPES = frozenset({"text", "image", "file", "system"})
MAX_CLIENT_ID = 128
# Ids are SQLite INTEGERs; a bigger number would fail in the store, not here.
MAX_ID = 2**63 - 1


def id_of_digits(raw: str) -> int | None:
    """An id written as ASCII digits ("²".isdigit() is True but int("²") fails), or None."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) <= MAX_ID:
        return int(raw)
    return None


def parse_json_object(data: str | bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise InvalidMessage("bad_json", "message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidMessage("bad_json", "message must be a JSON object")
    return obj


def room_id_of(value: Any) -> int:
    if isinstance(value, str):
        value = id_of_digits(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_ID:
        raise InvalidMessage("bad_room_id", "roomId must be a positive integer")
    return value


def check_content(content: Any, max_chars: int) -> str:
    if not isinstance(content, str):
        raise InvalidMessage("bad_content", "content must be a string")
    if not content.strip():
        raise InvalidMessage("empty_content", "content must not be empty")
    if len(content) > max_chars:
        raise InvalidMessage("content_too_long", f"content is longer than {max_chars} characters")
    if "\x00" in content:
        # Valid JSON, but no text column of PostgreSQL's can hold it: refused on every
        # store, so a message is never accepted by one backend and lost on another.
        raise InvalidMessage("bad_content", "content must not contain U+0000")
    return content


def _opt_str(obj: dict[str, Any], key: str, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise InvalidMessage(
            f"bad_{key}", f"{key} must be a string of at most {limit} characters, without U+0000"
        )
    return value


def check_message_type(value: Any) -> str:
    if value is None:
        return "text"
    if not isinstance(value, str) or value not in MESSAGE_TYPES:
        raise InvalidMessage(
            "bad_message_type", f"message_type must be one of {', '.join(sorted(MESSAGE_TYPES))}"
        )
    return value


def chat_message(obj: dict[str, Any], max_chars: int) -> Outgoing:
    """The ticket protocol's `{roomId, content, timestamp}` (plus optional clientMessageId)."""
    return Outgoing(
        room_id=room_id_of(obj.get("roomId")),
        content=check_content(obj.get("content"), max_chars),
        message_type=check_message_type(obj.get("messageType", obj.get("message_type"))),
        client_timestamp=_opt_str(obj, "timestamp", 64),
        client_message_id=_opt_str(obj, "clientMessageId", MAX_CLIENT_ID),
    )


def stomp_send_body(obj: dict[str, Any], room_id: int, max_chars: int) -> Outgoing:
    """A STOMP SEND body `{content, message_type}` to a room destination."""
    return Outgoing(
        room_id=room_id,
        content=check_content(obj.get("content"), max_chars),
        message_type=check_message_type(obj.get("message_type")),
        client_message_id=_opt_str(obj, "clientMessageId", MAX_CLIENT_ID),
    )


def http_send_message(obj: dict[str, Any], max_chars: int) -> Outgoing:
    """`/chat-ws/send-message`: `{roomId, message: {message_type, content}}`."""
    inner = obj.get("message")
    if not isinstance(inner, dict):
        raise InvalidMessage("bad_message", "message must be an object with content")
    cmid = _opt_str(obj, "clientMessageId", MAX_CLIENT_ID) or _opt_str(
        inner, "clientMessageId", MAX_CLIENT_ID
    )
    return Outgoing(
        room_id=room_id_of(obj.get("roomId")),
        content=check_content(inner.get("content"), max_chars),
        message_type=check_message_type(inner.get("message_type")),
        client_message_id=cmid,
    )
