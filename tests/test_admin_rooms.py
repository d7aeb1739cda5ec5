"""The admin room API the command line uses (issue 14): list, rename and change
visibility, delete (live members see the room go exactly as on their removal), and the
member list; over real sockets, with every refusal."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from ._chat import admin_headers as admin
from ._chat import chat, create_room, recv_message
from .conftest import Server, StartServer
from .stomp_client import make_room, post_json, room_dest, stomp_user, user_dest


async def _call(server: Server, method: str, path: str, **kw: Any) -> Any:
    async with server.client() as http:
        return await http.request(method, path, headers=admin(server), **kw)


async def test_list_shows_every_room_by_id(server: Server) -> None:
    with trio.fail_after(10):
        first = await create_room(server, [1, 2], name="first")
        second = await create_room(server, [3], name="second", public=True)
        resp = await _call(server, "GET", "/admin/rooms")
    assert resp.status_code == 200, resp.text
    rooms = [r for r in resp.json()["rooms"] if r["id"] in (first, second)]
    assert rooms == [
        {"id": first, "name": "first", "public": False, "members": [1, 2]},
        {"id": second, "name": "second", "public": True, "members": [3]},
    ]


async def test_rename_and_publish_tell_the_members(
    server: Server,
) -> None:
    with trio.fail_after(15):
        room = await make_room(server, [1, 2], name="old name")
        async with stomp_user(server, 2, "ws", user_queue=True) as c:
            resp = await _call(server, "PATCH", f"/admin/rooms/{room}",
                               json={"name": "  new name ", "public": True})
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"id": room, "name": "new name", "public": True,
                                   "members": [1, 2]}
            frame, body = await c.expect_message("room_updated")
            assert frame.get("destination") == user_dest(2)
            assert (body["roomId"], body["roomName"]) == (room, "new name")
            # Only one of the two may change, too.
            resp = await _call(server, "PATCH", f"/admin/rooms/{room}", json={"public": False})
            assert resp.json()["public"] is False and resp.json()["name"] == "new name"
        # Public now false: a stranger cannot join; the name is what the store has.
        resp = await post_json(server, "/chat-ws/join-room", 7, {"roomId": room})
        assert resp.status_code == 404
        resp = await _call(server, "GET", f"/admin/rooms/{room}")
        assert resp.json()["name"] == "new name"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": ""}, "bad_name"),
        ({"name": "x" * 201}, "bad_name"),
        ({"public": "yes"}, "bad_public"),
        ({"members": [1]}, "bad_field"),
        ([], "bad_json"),
    ],
)
async def test_patch_refuses_bad_bodies(server: Server, body: Any, code: str) -> None:
    with trio.fail_after(10):
        room = await create_room(server, [1], name="kept")
        resp = await _call(server, "PATCH", f"/admin/rooms/{room}", json=body)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] == code
        assert (await _call(server, "GET", f"/admin/rooms/{room}")).json()["name"] == "kept"


async def test_delete_ends_live_subscriptions_on_both_protocols(server: Server) -> None:
    with trio.fail_after(20):
        room = await make_room(server, [1, 2], name="doomed")
        other = await make_room(server, [1, 2], name="stays")
        async with (
            stomp_user(server, 1) as sender,
            stomp_user(server, 2, "http", rooms=[room], user_queue=True) as c,
            chat(server, 2) as ticket_client,
        ):
            await sender.publish(room_dest(room), {"content": "before"})
            await c.expect_message("new_message")
            assert (await recv_message(ticket_client))["content"] == "before"

            resp = await _call(server, "DELETE", f"/admin/rooms/{room}")
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"deleted": room, "name": "doomed"}
            frame, body = await c.expect_message("room_removed")
            assert frame.get("destination") == user_dest(2) and body["roomId"] == room

            # Sending to it is refused, the connection and the other room carry on.
            resp = await post_json(server, "/chat-ws/send-message", 1,
                                   {"roomId": room, "message": {"content": "gone?"}})
            assert resp.status_code == 404 and resp.json()["error"] == "unknown_room"
            await sender.publish(room_dest(other), {"content": "elsewhere"})
            assert (await recv_message(ticket_client))["content"] == "elsewhere"
            await c.send_frame("SUBSCRIBE", {"destination": room_dest(room), "id": "again"})
            await c.expect_error("Not found", f"room {room} does not exist or you are not a member")

        for path in (f"/admin/rooms/{room}", f"/admin/rooms/{room}/members"):
            resp = await _call(server, "GET", path)
            assert resp.status_code == 404 and resp.json()["error"] == "unknown_room"
        resp = await _call(server, "DELETE", f"/admin/rooms/{room}")
        assert resp.status_code == 404 and resp.json()["error"] == "unknown_room"
        async with server.client() as http:
            hist = await http.get(f"/chat/rooms/{room}/messages",
                                  headers={"Authorization": f"Bearer {server.token(1)}"})
        assert hist.status_code == 404


async def test_members_with_their_presence_and_invitations(server: Server) -> None:
    with trio.fail_after(15):
        room = await create_room(server, [1, 2], name="who")
        resp = await _call(server, "POST", f"/admin/rooms/{room}/invites", json={"userId": 5})
        assert resp.status_code == 200
        async with chat(server, 2):
            resp = await _call(server, "GET", f"/admin/rooms/{room}/members")
        assert resp.status_code == 200, resp.text
        assert resp.json() == {
            "roomId": room,
            "members": [{"userId": 1, "online": False}, {"userId": 2, "online": True}],
            "invited": [5],
        }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/rooms"),
        ("PATCH", "/admin/rooms/1"),
        ("DELETE", "/admin/rooms/1"),
        ("GET", "/admin/rooms/1/members"),
    ],
)
async def test_only_admins(server: Server, method: str, path: str) -> None:
    with trio.fail_after(10):
        await create_room(server, [1], name="mine")
        async with server.client() as http:
            anonymous = await http.request(method, path, json={"name": "x"})
            user = await http.request(method, path, json={"name": "x"},
                                      headers={"Authorization": f"Bearer {server.token(1)}"})
    assert anonymous.status_code == 401
    assert user.status_code == 403


async def test_changes_and_deletions_are_stored(
    start_server: StartServer, tmp_path: Path
) -> None:
    with trio.fail_after(20):
        first = await start_server()
        renamed = await create_room(first, [1], name="before")
        deleted = await create_room(first, [1, 2], name="deleted")
        async with chat(first, 1) as c:
            await c.send_message(f'{{"roomId": {deleted}, "content": "goes with it"}}')
            await recv_message(c)
        resp = await _call(first, "PATCH", f"/admin/rooms/{renamed}",
                           json={"name": "after", "public": True})
        assert resp.status_code == 200
        assert (await _call(first, "DELETE", f"/admin/rooms/{deleted}")).status_code == 200
        await first.stop()

        second = await start_server()
        rooms = {r["id"]: r for r in (await _call(second, "GET", "/admin/rooms")).json()["rooms"]}
        assert rooms[renamed] == {"id": renamed, "name": "after", "public": True, "members": [1]}
        assert deleted not in rooms
        # A new room never takes the deleted one's id, nor a message a deleted one's.
        again = await create_room(second, [1], name="new")
        assert again > deleted
    with contextlib.closing(sqlite3.connect(tmp_path / "chatd.db")) as db:
        left = db.execute("SELECT count(*) FROM messages WHERE room_id = ?", (deleted,))
        assert left.fetchone() == (0,)
