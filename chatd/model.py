"""The plain data types every layer shares: who is asking, what a client sends, what the
store keeps, what travels on the bus.

Types only, no I/O and no encoding, and no import from chatd: any module may import
this one without making a cycle or reaching upward. The logic that builds or reads these
types lives with the layer that owns it (validation, the store, events, auth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# The last second formatted: every message's event is stamped, and strftime costs more than
# the rest of the stamp; messages come many to a second.
_last_second: tuple[int, str] = (-1, "")


def utc_iso(ts: float) -> str:
    """A Unix time as the ISO 8601 UTC text with milliseconds that both protocols use."""
    global _last_second
    millis = int(ts * 1000)
    second = millis // 1000
    cached, text = _last_second
    if second != cached:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{millis % 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated identity, taken from a token's claims."""

    id: int
    username: str
    profile_image: str | None = None
    email: str | None = None
    user_type: str | None = None
    is_admin: bool = False

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "profileImage": self.profile_image}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message a client sent, checked and not yet stored."""

    room_id: int
    content: str
    message_type: str = "text"
    client_timestamp: str | None = None
    client_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A committed message. The store reads rows in this field order."""

    id: int
    room_id: int
    user_id: int
    username: str
    profile_image: str | None
    content: str
    message_type: str
    created_at: str
    created_unix: float = 0.0
    client_message_id: str | None = None
    edited_at: str | None = None  # when its author (or an admin) last changed it
    deleted_at: str | None = None  # deleted: the row stays, its content is gone
    # In a cluster (PostgreSQL), the message committed just before this one, in any room:
    # a node that has not seen that one has missed something (chatd.cluster.sequencer).
    # None where it is not known (SQLite: one writer, so no node can miss one).
    prev_id: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class RoomRow:
    """A room as the store keeps it, loaded once at start into `chatd.rooms.Rooms`."""

    id: int
    name: str
    public: bool
    members: frozenset[int]
    invited: frozenset[int] = frozenset()


class Event:
    """An event on the bus. `body` is the STOMP/JSON event bytes; `chat` is the ticket
    protocol's text, for the events every `/chat` connection gets (chat messages);
    `chat_opt_in` the text of those only `/chat` connections that asked get (edits and
    deletions: the ticket guide's client knows one shape, and must never see another).
    `cache` holds encodings a transport derives once per event, such as a STOMP MESSAGE
    frame template: a slot the transports fill, so every recipient shares them."""

    __slots__ = ("kind", "body", "chat", "chat_opt_in", "cache", "message_id", "prev_id")

    def __init__(
        self,
        kind: str,
        body: bytes,
        chat: str | None = None,
        message_id: int | None = None,
        chat_opt_in: str | None = None,
        prev_id: int | None = None,
    ) -> None:
        self.kind = kind
        self.body = body
        self.chat = chat
        self.chat_opt_in = chat_opt_in
        self.cache: dict[Any, Any] = {}
        self.message_id = message_id
        # A chat message's: the id committed before it, where the store knows it (see
        # StoredMessage.prev_id).
        self.prev_id = prev_id


class ClientError(Exception):
    """A request refused for what the client sent or who it is, not for a fault of ours.
    `code` is the machine-readable reason, `message` the text for a person, `status` the
    HTTP status that fits (a class attribute, so a subclass can fix its own). Each protocol
    maps it to its own reply: HTTP to `{"error": code, "message": message}` with `status`."""

    status: int = 400

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status = status
