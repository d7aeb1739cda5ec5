"""The `/chat-ws/*` HTTP API of the STOMP guide (Authorization: Bearer JWT), a blueprint of
chatd.http.app."""

from __future__ import annotations

from typing import Any

from quart import Blueprint

from chatd.events import stomp_message_shape
from chatd.http.context import authenticate, json_body, server_state
from chatd.net.websocket import CLOSE_NORMAL
from chatd.stomp import room_destination, user_destination
from chatd.validation import InvalidMessage, http_send_message, room_id_of

chatws = Blueprint("chatws", __name__, url_prefix="/chat-ws")

Json = dict[str, Any]


async def _room_id_body() -> int:
    body = await json_body()
    return room_id_of(body.get("roomId"))


@chatws.post("/connect")
async def connect() -> Json:
    state = server_state()
    user = authenticate()
    assert state.stomp_logins is not None
    login, passcode = state.stomp_logins.issue(user)
    subs: list[Json] = []
    for rid in sorted(state.rooms.rooms_of(user.id)):
        room = state.rooms.get(rid)
        if room is not None:
            subs.append(
                {"destination": room_destination(rid), "roomId": rid, "roomName": room.name}
            )
    return {
        "status": "success",
        "connectionInfo": {
            "stompUrl": state.cfg.stomp.public_url,
            "username": login,
            "password": passcode,
            "vhost": (state.cfg.stomp.vhosts or ["/"])[0],
            # The guide's React Native connectToChat(connectionInfo) reads them here; its
            # sample response has them beside connectionInfo. Both, so either code runs.
            "subscriptions": subs,
        },
        "subscriptions": subs,
        "userDestination": user_destination(user.id),
        "userInfo": {
            "userId": user.id,
            "username": user.username,
            "email": user.email,
            "userType": user.user_type,
        },
    }


@chatws.post("/send-message")
async def send_message() -> Json:
    state = server_state()
    user = authenticate()
    out = http_send_message(await json_body(), state.cfg.chat.max_content_chars)
    msg, created = await state.service.post(user, out, "http")
    return {"status": "success", "duplicate": not created, "message": stomp_message_shape(msg)}


@chatws.post("/typing-start")
async def typing_start() -> Json:
    user = authenticate()
    server_state().service.typing(user, await _room_id_body(), True)
    return {"status": "success"}


@chatws.post("/typing-end")
async def typing_end() -> Json:
    user = authenticate()
    server_state().service.typing(user, await _room_id_body(), False)
    return {"status": "success"}


@chatws.post("/join-room")
async def join_room() -> Json:
    user = authenticate()
    room = await server_state().service.join(user, await _room_id_body())
    return {"status": "joined", "roomId": room.id, "subscription": room_destination(room.id)}


@chatws.post("/leave-room/<int:room_id>")
async def leave_room(room_id: int) -> Json:
    user = authenticate()
    await server_state().service.leave(user, room_id)
    return {"status": "left", "roomId": room_id}


@chatws.post("/read")
async def read() -> Json:
    state = server_state()
    user = authenticate()
    body = await json_body()
    room_id = room_id_of(body.get("roomId"))
    try:
        message_id = room_id_of(body.get("messageId"))
    except InvalidMessage:
        raise InvalidMessage("bad_message_id", "messageId must be a positive integer") from None
    read_at = await state.service.mark_read(user, room_id, message_id)
    return {"status": "success", "roomId": room_id, "messageId": message_id, "readAt": read_at}


@chatws.post("/disconnect")
async def disconnect() -> Json:
    state = server_state()
    user = authenticate()
    assert state.stomp_logins is not None
    await state.service.revoke_logins(user.id, state.stomp_logins.revoke(user.id))
    # Every session of the user ends, /chat ones too (with 1000): "disconnect" is the
    # app's logout, and a /chat socket left open would keep receiving after it. The JWT
    # itself stays good, so the app can connect again when it wants to.
    n = await state.service.disconnect_user(user.id, None, CLOSE_NORMAL, "disconnected by request")
    return {"status": "disconnected", "closedSessions": n}
