"""The `/chat-ws/*` HTTP API of the STOMP guide (Authorization: Bearer JWT)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from chatd.events import stomp_message_shape
from chatd.http.asgi import App, Request, Response, json_response
from chatd.model import User
from chatd.net.websocket import CLOSE_NORMAL
from chatd.state import ServerState
from chatd.stomp import room_destination, user_destination
from chatd.validation import InvalidMessage, http_send_message, room_id_of


def register(
    app: App,
    state: ServerState,
    authenticate: Callable[[Request], User],
    json_body: Callable[[Request], Awaitable[dict[str, Any]]],
) -> None:
    """Add the routes to `app`; `authenticate` and `json_body` are http_api's, so both APIs
    refuse tokens and bodies alike."""

    async def room_id_body(request: Request) -> int:
        body = await json_body(request)
        return room_id_of(body.get("roomId"))

    @app.post("/chat-ws/connect")
    async def connect(request: Request) -> Response:
        user = authenticate(request)
        assert state.stomp_logins is not None
        login, passcode = state.stomp_logins.issue(user)
        subs: list[dict[str, Any]] = []
        for rid in sorted(state.rooms.rooms_of(user.id)):
            room = state.rooms.get(rid)
            if room is not None:
                subs.append(
                    {"destination": room_destination(rid), "roomId": rid, "roomName": room.name}
                )
        return json_response(
            {
                "status": "success",
                "connectionInfo": {
                    "stompUrl": state.cfg.stomp.public_url,
                    "username": login,
                    "password": passcode,
                    "vhost": (state.cfg.stomp.vhosts or ["/"])[0],
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
        )

    @app.post("/chat-ws/send-message")
    async def send_message(request: Request) -> Response:
        user = authenticate(request)
        out = http_send_message(await json_body(request), state.cfg.chat.max_content_chars)
        msg, created = await state.service.post(user, out, "http")
        return json_response(
            {"status": "success", "duplicate": not created, "message": stomp_message_shape(msg)}
        )

    @app.post("/chat-ws/typing-start")
    async def typing_start(request: Request) -> Response:
        user = authenticate(request)
        state.service.typing(user, await room_id_body(request), True)
        return json_response({"status": "success"})

    @app.post("/chat-ws/typing-end")
    async def typing_end(request: Request) -> Response:
        user = authenticate(request)
        state.service.typing(user, await room_id_body(request), False)
        return json_response({"status": "success"})

    @app.post("/chat-ws/join-room")
    async def join_room(request: Request) -> Response:
        user = authenticate(request)
        room = await state.service.join(user, await room_id_body(request))
        return json_response(
            {"status": "joined", "roomId": room.id, "subscription": room_destination(room.id)}
        )

    @app.post("/chat-ws/leave-room/<int:room_id>")
    async def leave_room(request: Request, room_id: int) -> Response:
        user = authenticate(request)
        await state.service.leave(user, room_id)
        return json_response({"status": "left", "roomId": room_id})

    @app.post("/chat-ws/read")
    async def read(request: Request) -> Response:
        user = authenticate(request)
        body = await json_body(request)
        room_id = room_id_of(body.get("roomId"))
        try:
            message_id = room_id_of(body.get("messageId"))
        except InvalidMessage:
            raise InvalidMessage("bad_message_id", "messageId must be a positive integer") from None
        read_at = await state.service.mark_read(user, room_id, message_id)
        return json_response(
            {"status": "success", "roomId": room_id, "messageId": message_id, "readAt": read_at}
        )

    @app.post("/chat-ws/disconnect")
    async def disconnect(request: Request) -> Response:
        user = authenticate(request)
        assert state.stomp_logins is not None
        await state.store.revoke_logins(user.id, state.stomp_logins.revoke(user.id))
        n = state.service.disconnect_user(user.id, "stomp", CLOSE_NORMAL, "disconnected by request")
        return json_response({"status": "disconnected", "closedSessions": n})
