"""The events on the bus (`chatd.model.Event`), each encoded once per protocol here and
shared by every recipient."""

from __future__ import annotations

import time
from typing import Any

import orjson

from chatd.model import Event, StoredMessage, utc_iso
from chatd.stomp import room_destination


def now_iso() -> str:
    return utc_iso(time.time())


def chat_shape(msg: StoredMessage, edits: bool = False) -> dict[str, Any]:
    """The ticket guide's message: `{id, roomId, content, timestamp, user}`. With `edits`
    (HTTP history, and `/chat` connections that asked for edit events): `editedAt` on an
    edited message, and `deleted`/`deletedAt` with empty content on a deleted one."""
    shape: dict[str, Any] = {
        "id": msg.id,
        "roomId": msg.room_id,
        "content": msg.content,
        "timestamp": msg.created_at,
        "messageType": msg.message_type,
        "user": {"id": msg.user_id, "username": msg.username, "profileImage": msg.profile_image},
    }
    if edits:
        if msg.edited_at is not None:
            shape["editedAt"] = msg.edited_at
        if msg.deleted_at is not None:
            shape["deleted"] = True
            shape["deletedAt"] = msg.deleted_at
    return shape


def stomp_message_shape(msg: StoredMessage) -> dict[str, Any]:
    """The STOMP guide's `new_message.message` (`edited_at` too once edited)."""
    shape = {
        "id": msg.id,
        "room_id": msg.room_id,
        "content": msg.content,
        "message_type": msg.message_type,
        "sender_id": msg.user_id,
        "sender_name": msg.username,
        "sender_profile_image": msg.profile_image,
        "created_at": msg.created_at,
    }
    if msg.edited_at is not None:
        shape["edited_at"] = msg.edited_at
    return shape


def new_message(msg: StoredMessage) -> Event:
    body = orjson.dumps(
        {
            "type": "new_message",
            "roomId": msg.room_id,
            "message": stomp_message_shape(msg),
            "timestamp": now_iso(),
        }
    )
    return Event(
        "new_message",
        body,
        orjson.dumps(chat_shape(msg)).decode(),
        message_id=msg.id,
        prev_id=msg.prev_id,
    )


def message_updated(msg: StoredMessage) -> Event:
    """An edit, to the room: STOMP subscribers, and `/chat` connections that asked."""
    body = orjson.dumps(
        {
            "type": "message_updated",
            "roomId": msg.room_id,
            "message": stomp_message_shape(msg),
            "timestamp": now_iso(),
        }
    )
    chat = orjson.dumps({"type": "message_updated", "message": chat_shape(msg, edits=True)})
    return Event("message_updated", body, chat_opt_in=chat.decode())


def message_deleted(msg: StoredMessage) -> Event:
    """A deletion, to the room: the id and when, never the content."""
    fields = {"roomId": msg.room_id, "messageId": msg.id, "deletedAt": msg.deleted_at}
    body = orjson.dumps({"type": "message_deleted", **fields, "timestamp": now_iso()})
    chat = orjson.dumps({"type": "message_deleted", **fields})
    return Event("message_deleted", body, chat_opt_in=chat.decode())


def user_status_changed(user_id: int, status: str) -> Event:
    return Event(
        "user_status_changed",
        orjson.dumps(
            {
                "type": "user_status_changed",
                "userId": user_id,
                "status": status,
                "timestamp": now_iso(),
            }
        ),
    )


def user_typing(room_id: int, user_id: int, is_typing: bool) -> Event:
    return Event(
        "user_typing",
        orjson.dumps(
            {
                "type": "user_typing",
                "roomId": room_id,
                "userId": user_id,
                "isTyping": is_typing,
                "timestamp": now_iso(),
            }
        ),
    )


def message_read(room_id: int, message_id: int, reader_id: int, read_at: str) -> Event:
    return Event(
        "message_read",
        orjson.dumps(
            {
                "type": "message_read",
                "roomId": room_id,
                "messageId": message_id,
                "readerId": reader_id,
                "readAt": read_at,
            }
        ),
    )


def room_membership(kind: str, room: dict[str, Any], user_id: int) -> Event:
    """User-queue events: `room_invited`, `room_joined`, `room_removed`, `room_updated`."""
    return Event(
        kind,
        orjson.dumps(
            {
                "type": kind,
                "userId": user_id,
                "roomId": room["id"],
                "roomName": room["name"],
                "destination": room_destination(room["id"]),
                "timestamp": now_iso(),
            }
        ),
    )
