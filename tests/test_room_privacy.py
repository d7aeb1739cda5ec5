"""Room ids cannot be enumerated (issue 12, point 15): a room that does not exist and a
room the caller may not see get the very same answer on every route (HTTP, `/chat`,
STOMP SUBSCRIBE and SEND, join-room), but for the room id they name. Public rooms stay
visible to everyone (join-room works for them), invited ones to the invitee, and admin
routes still tell the truth. Over real sockets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from ._chat import chat, create_room, recv_error, send
from .conftest import Server, StartServer
from .stomp_client import KINDS, Kind, bearer, open_stomp, room_dest, stomp_user

OUTSIDER = 1
HIDDEN = "room {} does not exist or you are not a member"


@dataclass
class Rooms:
    private: int  # exists; the outsider is neither a member nor invited
    missing: int  # does not exist
    message: int  # a message in the private room


async def setup(server: Server) -> Rooms:
    private = await create_room(server, [2], name="secret")
    async with server.client() as http:
        resp = await http.post(
            "/chat-ws/send-message",
            headers=bearer(server.token(2)),
            json={"roomId": private, "message": {"message_type": "text", "content": "psst"}},
        )
    assert resp.status_code == 200, resp.text
    return Rooms(private, private + 1000, resp.json()["message"]["id"])


Answer = Callable[[Server, int, int], Awaitable[Any]]


async def _http(server: Server, method: str, path: str, json: Any = None) -> Any:
    async with server.client() as http:
        resp = await http.request(method, path, headers=bearer(server.token(OUTSIDER)), json=json)
    return resp.status_code, resp.json()


def _msg(room: int) -> dict[str, Any]:
    return {"roomId": room, "message": {"message_type": "text", "content": "x"}}


HTTP_ROUTES: dict[str, Answer] = {
    "history": lambda s, room, mid: _http(s, "GET", f"/chat/rooms/{room}/messages"),
    "send-message": lambda s, room, mid: _http(s, "POST", "/chat-ws/send-message", _msg(room)),
    "typing-start": lambda s, room, mid: _http(
        s, "POST", "/chat-ws/typing-start", {"roomId": room}
    ),
    "typing-end": lambda s, room, mid: _http(s, "POST", "/chat-ws/typing-end", {"roomId": room}),
    "join-room": lambda s, room, mid: _http(s, "POST", "/chat-ws/join-room", {"roomId": room}),
    "leave-room": lambda s, room, mid: _http(s, "POST", f"/chat-ws/leave-room/{room}"),
    "read": lambda s, room, mid: _http(
        s, "POST", "/chat-ws/read", {"roomId": room, "messageId": mid}
    ),
}


@pytest.mark.parametrize("route", sorted(HTTP_ROUTES))
async def test_http_answers_a_missing_and_a_hidden_room_alike(server: Server, route: str) -> None:
    with trio.fail_after(10):
        rooms = await setup(server)
        answer = HTTP_ROUTES[route]
        hidden = await answer(server, rooms.private, rooms.message)
        missing = await answer(server, rooms.missing, rooms.message)
        assert hidden == (
            404,
            {"error": "unknown_room", "message": HIDDEN.format(rooms.private)},
        )
        assert missing == (
            404,
            {"error": "unknown_room", "message": HIDDEN.format(rooms.missing)},
        )


async def test_chat_send_answers_a_missing_and_a_hidden_room_alike(server: Server) -> None:
    with trio.fail_after(10):
        rooms = await setup(server)
        async with chat(server, OUTSIDER) as ws:
            replies = []
            for room in (rooms.private, rooms.missing):
                await send(ws, room, "x")
                replies.append(await recv_error(ws))
        assert replies == [
            {"type": "error", "code": "unknown_room", "message": HIDDEN.format(room)}
            for room in (rooms.private, rooms.missing)
        ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["SUBSCRIBE", "SEND"])
async def test_stomp_answers_a_missing_and_a_hidden_room_alike(
    server: Server, kind: Kind, command: str
) -> None:
    with trio.fail_after(10):
        rooms = await setup(server)
        for room in (rooms.private, rooms.missing):
            async with stomp_user(server, OUTSIDER, kind) as c:
                if command == "SUBSCRIBE":
                    await c.send_frame("SUBSCRIBE", {"destination": room_dest(room), "id": "s"})
                    await c.expect_error("Not found", HIDDEN.format(room))
                else:
                    await c.publish(room_dest(room), {"content": "x"}, receipt=False)
                    await c.expect_error("Bad SEND", "unknown_room: " + HIDDEN.format(room))


async def test_anonymous_stomp_answers_a_missing_and_a_private_room_alike(
    start_server: StartServer,
) -> None:
    with trio.fail_after(10):
        server = await start_server(stomp={"allow_anonymous": True})
        rooms = await setup(server)
        public = await create_room(server, [2], public=True, name="lobby")
        for room in (rooms.private, rooms.missing):
            async with open_stomp(server) as guest:
                await guest.connect("guest", "guest")
                await guest.send_frame("SUBSCRIBE", {"destination": room_dest(room), "id": "s"})
                await guest.expect_error("Not found", HIDDEN.format(room))
        async with open_stomp(server) as guest:
            await guest.connect("guest", "guest")
            await guest.subscribe(room_dest(public))


async def test_public_and_invited_rooms_stay_joinable(server: Server) -> None:
    with trio.fail_after(10):
        public = await create_room(server, [2], public=True, name="lobby")
        invited = await create_room(server, [2], name="by invitation")
        async with server.client() as http:
            admin = bearer(server.admin_token())
            resp = await http.post(
                f"/admin/rooms/{invited}/invites", headers=admin, json={"userId": OUTSIDER}
            )
            assert resp.status_code == 200, resp.text
            for room in (public, invited):
                resp = await http.post(
                    "/chat-ws/join-room",
                    headers=bearer(server.token(OUTSIDER)),
                    json={"roomId": room},
                )
                assert resp.status_code == 200, resp.text
                assert resp.json()["status"] == "joined"


async def test_admin_routes_still_tell_the_truth(server: Server) -> None:
    with trio.fail_after(10):
        rooms = await setup(server)
        async with server.client() as http:
            admin = bearer(server.admin_token())
            found = await http.get(f"/admin/rooms/{rooms.private}", headers=admin)
            assert found.status_code == 200
            missing = await http.get(f"/admin/rooms/{rooms.missing}", headers=admin)
            assert (missing.status_code, missing.json()) == (
                404,
                {"error": "unknown_room", "message": f"room {rooms.missing} does not exist"},
            )
            added = await http.post(
                f"/admin/rooms/{rooms.missing}/members", headers=admin, json={"userId": 1}
            )
            assert added.json()["message"] == f"room {rooms.missing} does not exist"


async def test_a_member_still_reads_and_writes(server: Server) -> None:
    """The single answer is for outsiders: the member of the private room is served."""
    with trio.fail_after(10):
        rooms = await setup(server)
        async with stomp_user(server, 2, rooms=[rooms.private]) as member:
            [own] = await member.publish(room_dest(rooms.private), {"content": "mine"})
            assert own.command == "MESSAGE"
