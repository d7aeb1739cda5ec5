"""Events on STOMP destinations, over real sockets: presence across protocols, typing
(with its automatic end), read receipts, the user queue's membership events, and leaving
a room ending the live subscription.

To show that something is NOT delivered, each test triggers a later event and checks
that it is the next frame received."""

from __future__ import annotations

import re

import orjson
import pytest
import trio

from ._chat import add_member, chat, create_room, recv_message, remove_member
from ._chat import admin_headers as admin
from .conftest import Server, StartServer
from .stomp_client import (
    StompClient,
    make_room,
    open_stomp,
    post_json,
    room_dest,
    stomp_user,
    user_dest,
)

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def marker(server: Server, room: int, c: StompClient, text: str, user_id: int = 3) -> None:
    """Post `text` to the room over HTTP and check it is the next frame `c` receives."""
    resp = await post_json(
        server, "/chat-ws/send-message", user_id, {"roomId": room, "message": {"content": text}}
    )
    assert resp.status_code == 200, resp.text
    _, body = await c.expect_message()
    assert body["type"] == "new_message" and body["message"]["content"] == text, body


async def expect_status(c: StompClient, user_id: int, status: str) -> None:
    frame, body = await c.expect_message("user_status_changed")
    assert set(body) == {"type", "userId", "status", "timestamp"}, body
    assert (body["userId"], body["status"]) == (user_id, status)
    assert ISO.match(body["timestamp"])


# --- presence ----------------------------------------------------------------------------


async def test_presence_follows_the_first_and_last_connection_on_any_protocol(
    server: Server,
) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with stomp_user(server, 2, "ws", rooms=[room]) as watcher:
            # STOMP first: online.
            async with stomp_user(server, 1, "tcp") as first:
                await expect_status(watcher, 1, "online")
                # A /chat connection and a second STOMP session of the same user: silence.
                async with chat(server, 1), stomp_user(server, 1, "http"):
                    await marker(server, room, watcher, "no presence change")
                await marker(server, room, watcher, "still online")
                await first.disconnect()
            await expect_status(watcher, 1, "offline")
            # /chat first, then STOMP; the /chat one closes first: online ... offline.
            async with chat(server, 1):
                await expect_status(watcher, 1, "online")
                async with stomp_user(server, 1, "ws"):
                    await marker(server, room, watcher, "one")
                await marker(server, room, watcher, "two")
            await expect_status(watcher, 1, "offline")


async def test_presence_reaches_every_room_of_the_user_and_only_those(server: Server) -> None:
    with trio.fail_after(10):
        a = await make_room(server, [1, 2])
        b = await make_room(server, [1, 2])
        c_room = await make_room(server, [2, 3])
        async with (
            stomp_user(server, 2, rooms=[a, b, c_room]) as watcher,
            stomp_user(server, 1),
        ):
            got = set()
            for _ in range(2):
                frame, body = await watcher.expect_message("user_status_changed")
                assert (body["userId"], body["status"]) == (1, "online")
                got.add(frame.get("destination"))
            assert got == {room_dest(a), room_dest(b)}
            await marker(server, c_room, watcher, "not in room c")


async def test_anonymous_guests_have_no_presence(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(stomp={"allow_anonymous": True})
        room = await make_room(server, [2, 3], public=True)
        async with stomp_user(server, 2, rooms=[room]) as watcher:
            async with open_stomp(server) as guest:
                await guest.connect("guest", "guest")
                await guest.subscribe(room_dest(room))
                await marker(server, room, watcher, "a guest came")
                _, body = await guest.expect_message("new_message")
            await marker(server, room, watcher, "and left quietly")


# --- typing ------------------------------------------------------------------------------


async def test_typing_start_and_end(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with stomp_user(server, 2, "http", rooms=[room]) as watcher:
            for path, typing in [("typing-start", True), ("typing-end", False)]:
                resp = await post_json(server, f"/chat-ws/{path}", 1, {"roomId": room})
                assert resp.json() == {"status": "success"}
                frame, body = await watcher.expect_message("user_typing")
                assert frame.get("destination") == room_dest(room)
                assert set(body) == {"type", "roomId", "userId", "isTyping", "timestamp"}
                assert (body["roomId"], body["userId"], body["isTyping"]) == (room, 1, typing)
                assert ISO.match(body["timestamp"])
                # Saying it again changes nothing, so nothing is sent.
                resp = await post_json(server, f"/chat-ws/{path}", 1, {"roomId": room})
                assert resp.json() == {"status": "success"}
                await marker(server, room, watcher, f"after {path}")


async def test_typing_ends_by_itself(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat={"typing_timeout_seconds": 0.3})
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 2, rooms=[room]) as watcher:
            await post_json(server, "/chat-ws/typing-start", 1, {"roomId": room})
            _, body = await watcher.expect_message("user_typing")
            assert body["isTyping"] is True
            start = trio.current_time()
            # Time is the point: no typing-end is ever sent.
            _, body = await watcher.expect_message("user_typing")
            assert (body["userId"], body["isTyping"]) == (1, False)
            assert trio.current_time() - start >= 0.2
            # A late typing-end finds nothing to end.
            await post_json(server, "/chat-ws/typing-end", 1, {"roomId": room})
            await marker(server, room, watcher, "no second end", user_id=2)


async def test_typing_start_again_extends_the_timeout(start_server: StartServer) -> None:
    with trio.fail_after(10):
        server = await start_server(chat={"typing_timeout_seconds": 0.6})
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 2, rooms=[room]) as watcher:
            await post_json(server, "/chat-ws/typing-start", 1, {"roomId": room})
            await watcher.expect_message("user_typing")
            await trio.sleep(0.2)  # time is the point: keep typing well before it expires
            again = trio.current_time()
            await post_json(server, "/chat-ws/typing-start", 1, {"roomId": room})
            _, body = await watcher.expect_message("user_typing")
            assert body["isTyping"] is False
            assert trio.current_time() - again >= 0.55


async def test_sending_a_message_ends_typing(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with stomp_user(server, 1) as c, stomp_user(server, 2, rooms=[room]) as watcher:
            await post_json(server, "/chat-ws/typing-start", 1, {"roomId": room})
            _, body = await watcher.expect_message("user_typing")
            assert body["isTyping"] is True
            await c.publish(room_dest(room), {"content": "done typing"})
            _, body = await watcher.expect_message("new_message")
            _, body = await watcher.expect_message("user_typing")
            assert (body["userId"], body["isTyping"]) == (1, False)
            await marker(server, room, watcher, "nothing more")


async def test_closing_the_last_connection_ends_typing(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2, 3])
        async with stomp_user(server, 2, rooms=[room]) as watcher:
            async with stomp_user(server, 1) as c:
                await expect_status(watcher, 1, "online")
                await post_json(server, "/chat-ws/typing-start", 1, {"roomId": room})
                _, body = await watcher.expect_message("user_typing")
                assert body["isTyping"] is True
                await c.disconnect()
            _, body = await watcher.expect_message("user_typing")
            assert (body["userId"], body["isTyping"]) == (1, False)
            await expect_status(watcher, 1, "offline")


# --- read receipts -----------------------------------------------------------------------


async def test_message_read_event(server: Server) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2])
        async with stomp_user(server, 1, rooms=[room]) as author:
            [frame] = await author.publish(room_dest(room), {"content": "read me"})
            mid = orjson.loads(frame.body)["message"]["id"]
            resp = await post_json(server, "/chat-ws/read", 2, {"roomId": room, "messageId": mid})
            assert resp.status_code == 200
            answer = resp.json()
            assert set(answer) == {"status", "roomId", "messageId", "readAt"}
            assert (answer["status"], answer["roomId"], answer["messageId"]) == (
                "success",
                room,
                mid,
            )
            frame, body = await author.expect_message("message_read")
            assert frame.get("destination") == room_dest(room)
            assert body == {
                "type": "message_read",
                "roomId": room,
                "messageId": mid,
                "readerId": 2,
                "readAt": answer["readAt"],
            }
            assert ISO.match(body["readAt"])


# --- the user queue ----------------------------------------------------------------------


def check_membership(body: dict, kind: str, user_id: int, room: int, name: str) -> None:
    assert set(body) == {"type", "userId", "roomId", "roomName", "destination", "timestamp"}
    assert (body["type"], body["userId"], body["roomId"], body["roomName"]) == (
        kind,
        user_id,
        room,
        name,
    )
    assert body["destination"] == room_dest(room)
    assert ISO.match(body["timestamp"])


async def test_user_queue_membership_events(server: Server) -> None:
    with trio.fail_after(10):
        async with stomp_user(server, 2, "ws", user_queue=True) as c:
            # Created with the user in it.
            room = await create_room(server, [1, 2], name="made for you")
            frame, body = await c.expect_message()
            assert frame.get("destination") == user_dest(2)
            check_membership(body, "room_joined", 2, room, "made for you")
            # Added to an existing room.
            other = await create_room(server, [1], name="later")
            await add_member(server, other, 2)
            _, body = await c.expect_message()
            check_membership(body, "room_joined", 2, other, "later")
            # Invited to a private room.
            private = await create_room(server, [1], name="invite only")
            async with server.client() as http:
                resp = await http.post(
                    f"/admin/rooms/{private}/invites", json={"userId": 2}, headers=admin(server)
                )
            assert resp.status_code == 200
            _, body = await c.expect_message()
            check_membership(body, "room_invited", 2, private, "invite only")
            # Joining it after the invitation.
            resp = await post_json(server, "/chat-ws/join-room", 2, {"roomId": private})
            assert resp.json()["status"] == "joined"
            _, body = await c.expect_message()
            check_membership(body, "room_joined", 2, private, "invite only")
            # Removed by an admin.
            await remove_member(server, room, 2)
            _, body = await c.expect_message()
            check_membership(body, "room_removed", 2, room, "made for you")
            # Others' membership changes are not this user's business.
            await create_room(server, [1, 3], name="not mine")
            await add_member(server, other, 3)
            await add_member(server, other, 2)  # already a member: no event either
            final = await create_room(server, [2], name="final")
            _, body = await c.expect_message()
            check_membership(body, "room_joined", 2, final, "final")


@pytest.mark.parametrize("how", ["leave-room", "admin-remove"])
async def test_leaving_a_room_ends_the_live_subscription(server: Server, how: str) -> None:
    with trio.fail_after(10):
        room = await make_room(server, [1, 2], name="left")
        async with (
            stomp_user(server, 1) as sender,
            stomp_user(server, 2, "http", rooms=[room], user_queue=True) as c,
            chat(server, 2) as ticket_client,
        ):
            await sender.publish(room_dest(room), {"content": "before"})
            _, body = await c.expect_message("new_message")
            assert (await recv_message(ticket_client))["content"] == "before"
            if how == "leave-room":
                resp = await post_json(server, f"/chat-ws/leave-room/{room}", 2)
                assert resp.json() == {"status": "left", "roomId": room}
            else:
                await remove_member(server, room, 2)
            frame, body = await c.expect_message("room_removed")
            assert frame.get("destination") == user_dest(2)
            await sender.publish(room_dest(room), {"content": "after you left"})
            # The next thing either connection gets is about another room.
            other = await make_room(server, [1, 2], name="next")
            _, body = await c.expect_message("room_joined")
            assert body["roomId"] == other
            await sender.publish(room_dest(other), {"content": "elsewhere"})
            assert (await recv_message(ticket_client))["content"] == "elsewhere"
            # Subscribing to the room again is refused now.
            await c.send_frame("SUBSCRIBE", {"destination": room_dest(room), "id": "again"})
            await c.expect_error("Not found", f"room {room} does not exist or you are not a member")
