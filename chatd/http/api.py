"""The ticket, rooms and admin routes of the HTTP API (a blueprint of chatd.http.app)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from quart import Blueprint, Response, request

from chatd.events import chat_shape
from chatd.http.context import (
    ApiError,
    admin,
    authenticate,
    identify,
    int_arg,
    json_body,
    server_state,
)
from chatd.model import StoredMessage
from chatd.net.budget import BudgetedBody
from chatd.rooms import Room
from chatd.ticketws.tickets import TooManyTickets
from chatd.validation import MAX_ID, InvalidMessage, check_content, room_id_of

api = Blueprint("api", __name__)

Json = dict[str, Any]

# --- tickets ----------------------------------------------------------------------------


@api.post("/chat/ticket")
async def issue_ticket() -> Json:
    state = server_state()
    # The ticket carries the token's expiry: the /chat session ends when the token would.
    identity = identify()
    try:
        ticket = await state.tickets.issue_async(identity)
    except TooManyTickets:  # a 429 `too_many_tickets` once the app's handler has it
        state.metrics.tickets_rejected["too_many"] += 1
        raise
    state.metrics.tickets_issued += 1
    return {"ticket": ticket, "expiresIn": round(state.tickets.ttl)}


# --- rooms and history ------------------------------------------------------------------


@api.get("/chat/rooms")
async def my_rooms() -> Json:
    """The user's rooms, each with `unread` (others' messages after the user's read mark,
    set by POST /chat-ws/read on either protocol's behalf) and `lastMessage` (or null)."""
    state = server_state()
    user = authenticate()
    rooms = [r for rid in sorted(state.rooms.rooms_of(user.id)) if (r := state.rooms.get(rid))]
    summaries = await state.service.room_summaries(user, [r.id for r in rooms])
    out = []
    for room in rooms:
        unread, last = summaries.get(room.id, (0, None))
        out.append(
            {
                **room.describe(),
                "unread": unread,
                "lastMessage": None if last is None else chat_shape(last, edits=True),
            }
        )
    return {"rooms": out}


async def _history_page(
    limit: int, read: Callable[[], Awaitable[list[StoredMessage]]]
) -> Response:
    """A history page, its bytes held in the response budget (chatd.http.budget) from
    before it is read until it is written."""
    state = server_state()
    cfg = state.cfg
    budget = state.response_budget
    # The most a page of `limit` messages can take: content as 3-byte UTF-8, and the rest.
    largest = limit * (3 * cfg.chat.max_content_chars + 512) + 64
    # A page that holds the budget for a client who stopped reading is dropped within the
    # write timeout of its last progress: waiting three of them outlasts such a holder.
    held = await budget.take(
        largest, cfg.http.max_response_bytes, 3 * cfg.http.write_timeout_seconds
    )
    if not held:
        raise ApiError(503, "busy", "too many large responses are being sent; retry shortly")
    try:
        msgs = await read()
        next_before = msgs[-1].id if len(msgs) == limit else None
        body = orjson.dumps(
            {"messages": [chat_shape(m, edits=True) for m in msgs], "nextBefore": next_before}
        )
    except BaseException:
        budget.give_back(held)
        raise
    keep = min(held, len(body))
    budget.give_back(held - keep)
    resp = Response(BudgetedBody(body, budget, keep), mimetype="application/json")
    resp.headers["Content-Length"] = str(len(body))
    return resp


@api.get("/chat/rooms/<int:room_id>/messages")
async def history(room_id: int) -> Response:
    state = server_state()
    user = authenticate()
    before = int_arg("before", None, minimum=1)
    limit = int_arg("limit", 50, minimum=1)
    limit = min(limit or 50, state.cfg.chat.history_max_limit)
    # Membership first: a refusal costs no budget.
    state.service.room_for_member(user, room_id)
    return await _history_page(
        limit, lambda: state.service.history(user, room_id, before, limit)
    )


@api.patch("/chat/rooms/<int:room_id>/messages/<int:message_id>")
async def edit_message(room_id: int, message_id: int) -> Json:
    """One's own message (an admin's: anyone's): `{"content"}` → the message as it is now."""
    state = server_state()
    user = authenticate()
    body = await json_body()
    content = check_content(body.get("content"), state.cfg.chat.max_content_chars)
    msg = await state.service.change_message(user, room_id, message_id, content)
    return chat_shape(msg, edits=True)


@api.delete("/chat/rooms/<int:room_id>/messages/<int:message_id>")
async def delete_message(room_id: int, message_id: int) -> Json:
    state = server_state()
    user = authenticate()
    msg = await state.service.change_message(user, room_id, message_id, None)
    return chat_shape(msg, edits=True)


# --- admin ------------------------------------------------------------------------------


@api.post("/admin/rooms")
async def create_room() -> tuple[Json, int]:
    admin()
    body = await json_body()
    name = _room_name(body)
    members = body.get("members", [])
    if not isinstance(members, list):
        raise ApiError(400, "bad_members", "members must be a list of user ids")
    try:
        member_ids = [room_id_of(m) for m in members]
    except InvalidMessage:
        raise ApiError(400, "bad_members", "members must be positive integer ids") from None
    room = await server_state().service.create_room(name, _public(body), member_ids)
    return room.describe(), 201


def _room_name(body: Json) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\x00" in name:
        raise ApiError(
            400, "bad_name", "name must be a non-empty string of at most 200, without U+0000"
        )
    return name.strip()


def _public(body: Json) -> bool:
    public = body.get("public", False)
    if not isinstance(public, bool):
        raise ApiError(400, "bad_public", "public must be true or false")
    return public


def _existing_room(room_id: int) -> Room:
    room = server_state().rooms.get(room_id)
    if room is None:
        raise ApiError(404, "unknown_room", f"room {room_id} does not exist")
    return room


@api.get("/admin/rooms")
async def list_rooms() -> Json:
    admin()
    return {"rooms": [room.describe() for room in server_state().rooms.all()]}


@api.get("/admin/rooms/<int:room_id>")
async def get_room(room_id: int) -> Json:
    admin()
    return _existing_room(room_id).describe()


@api.patch("/admin/rooms/<int:room_id>")
async def update_room(room_id: int) -> Json:
    admin()
    body = await json_body()
    unknown = sorted(set(body) - {"name", "public"})
    if unknown:
        raise ApiError(400, "bad_field", f"only name and public can change, not {unknown[0]}")
    name = _room_name(body) if "name" in body else None
    public = _public(body) if "public" in body else None
    room = await server_state().service.update_room(room_id, name, public)
    return room.describe()


@api.delete("/admin/rooms/<int:room_id>")
async def delete_room(room_id: int) -> Json:
    admin()
    room = await server_state().service.delete_room(room_id)
    return {"deleted": room.id, "name": room.name}


@api.get("/admin/rooms/<int:room_id>/messages")
async def room_history(room_id: int) -> Response:
    """A room's history for an admin, who need not be a member (`chatd history`)."""
    admin()
    state = server_state()
    _existing_room(room_id)
    before = int_arg("before", None, minimum=1)
    limit = min(int_arg("limit", 50, minimum=1) or 50, state.cfg.chat.history_max_limit)
    return await _history_page(limit, lambda: state.store.history(room_id, before, limit))


@api.get("/admin/rooms/<int:room_id>/members")
async def room_members(room_id: int) -> Json:
    admin()
    state = server_state()
    room = _existing_room(room_id)
    return {
        "roomId": room.id,
        "members": [
            {"userId": uid, "online": bool(state.hub.sessions_of(uid))}
            for uid in sorted(room.members)
        ],
        "invited": sorted(room.invited),
    }


async def _user_id_body() -> int:
    body = await json_body()
    try:
        return room_id_of(body.get("userId"))
    except InvalidMessage:
        raise ApiError(400, "bad_user_id", "userId must be a positive integer") from None


@api.post("/admin/rooms/<int:room_id>/members")
async def add_member(room_id: int) -> Json:
    admin()
    room = await server_state().service.add_member(room_id, await _user_id_body())
    return room.describe()


@api.delete("/admin/rooms/<int:room_id>/members/<int:user_id>")
async def remove_member(room_id: int, user_id: int) -> Json:
    admin()
    if user_id > MAX_ID:
        raise ApiError(400, "bad_user_id", "userId must be a positive integer")
    room = await server_state().service.remove_member(room_id, user_id)
    return room.describe()


@api.post("/admin/rooms/<int:room_id>/invites")
async def invite(room_id: int) -> Json:
    admin()
    user_id = await _user_id_body()
    room = await server_state().service.invite(room_id, user_id)
    return {"roomId": room.id, "invited": user_id}


@api.post("/admin/users/<int:user_id>/disconnect")
async def disconnect_user(user_id: int) -> Json:
    admin()
    if not 0 < user_id <= MAX_ID:
        raise ApiError(400, "bad_user_id", "userId must be a positive integer")
    # The body is optional: an empty one closes the sessions and revokes nothing.
    body = await json_body() if (await request.get_data()).strip() else {}
    revoke = body.get("revokeTokens", False)
    if not isinstance(revoke, bool):
        raise ApiError(400, "bad_revoke_tokens", "revokeTokens must be true or false")
    closed = await server_state().service.throw_out(user_id, revoke)
    return {"userId": user_id, "closed": closed, "revoked": revoke}
