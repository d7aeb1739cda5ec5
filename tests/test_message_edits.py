"""What the web client needs, for every client (issue 15): unread counts and the last
message in GET /chat/rooms, and editing and deleting one's own message (admins: any),
seen live on STOMP room destinations and by /chat connections that ask (`edits=1`), and
in history and resume; over real sockets, with every refusal."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
import trio
from trio_websocket import open_websocket_url

from ._chat import bearer, chat, close_code_for, history, new_ticket, recv_message, roundtrip
from .conftest import Server, StartServer
from .stomp_client import make_room, next_event_of, post_json, stomp_user

Json = dict[str, Any]


async def send_http(server: Server, user_id: int, room: int, content: str) -> Json:
    resp = await post_json(server, "/chat-ws/send-message", user_id,
                           {"roomId": room, "message": {"content": content}})
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["message"])


async def rooms_of(server: Server, user_id: int) -> dict[int, Json]:
    async with server.client() as http:
        resp = await http.get("/chat/rooms", headers=bearer(server.token(user_id)))
    assert resp.status_code == 200, resp.text
    return {r["id"]: r for r in resp.json()["rooms"]}


async def change(server: Server, user_id: int | None, method: str, room: int, mid: int,
                 body: Any = None, admin: bool = False) -> Any:
    headers = {} if user_id is None else bearer(server.token(user_id, admin=admin))
    async with server.client() as http:
        return await http.request(method, f"/chat/rooms/{room}/messages/{mid}",
                                  headers=headers, json=body)


async def test_rooms_carry_unread_and_last_message(server: Server) -> None:
    with trio.fail_after(15):
        room = await make_room(server, [1, 2], name="talk")
        quiet = await make_room(server, [1], name="quiet")
        ids = [(await send_http(server, 2, room, f"from bob {n}"))["id"] for n in range(3)]
        await send_http(server, 1, room, "from alice")  # one's own never counts
        mine = await rooms_of(server, 1)
        assert mine[room]["unread"] == 3
        last = mine[room]["lastMessage"]
        assert (last["content"], last["user"]["id"]) == ("from alice", 1)
        assert set(last) >= {"id", "roomId", "content", "timestamp", "user"}
        assert mine[quiet]["unread"] == 0 and mine[quiet]["lastMessage"] is None
        assert (await rooms_of(server, 2))[room]["unread"] == 1

        # A read mark (shared by both protocols: it is the store's) counts down to 0.
        resp = await post_json(server, "/chat-ws/read", 1, {"roomId": room, "messageId": ids[1]})
        assert resp.status_code == 200, resp.text
        assert (await rooms_of(server, 1))[room]["unread"] == 1
        # A deleted message is not waiting to be read.
        assert (await change(server, 2, "DELETE", room, ids[2])).status_code == 200
        assert (await rooms_of(server, 1))[room]["unread"] == 0


async def test_edit_and_delete_are_seen_live_and_in_history(server: Server) -> None:
    with trio.fail_after(20):
        room = await make_room(server, [1, 2], name="edits")
        async with (
            stomp_user(server, 1, rooms=[room]) as watcher,
            chat(server, 1) as plain,
            open_websocket_url(
                f"{server.ws_base}/chat?"
                + urlencode({"ticket": await new_ticket(server, 1), "edits": "1"})
            ) as asked,
        ):
            sent = await send_http(server, 2, room, "helo")
            for ws in (plain, asked):
                assert (await recv_message(ws))["content"] == "helo"
            _, body = await next_event_of(watcher, "new_message")

            resp = await change(server, 2, "PATCH", room, sent["id"], {"content": "hello"})
            assert resp.status_code == 200, resp.text
            edited = resp.json()
            assert (edited["id"], edited["content"]) == (sent["id"], "hello")
            assert edited["editedAt"] >= edited["timestamp"]
            _, body = await next_event_of(watcher, "message_updated")
            assert body["roomId"] == room
            assert (body["message"]["id"], body["message"]["content"]) == (sent["id"], "hello")
            assert body["message"]["edited_at"] == edited["editedAt"]
            got = orjson.loads(await asked.get_message())
            assert got == {"type": "message_updated", "message": edited}

            resp = await change(server, 2, "DELETE", room, sent["id"])
            assert resp.status_code == 200, resp.text
            assert resp.json()["deleted"] is True and resp.json()["content"] == ""
            _, body = await next_event_of(watcher, "message_deleted")
            assert (body["roomId"], body["messageId"]) == (room, sent["id"])
            assert "content" not in body and "message" not in body
            got = orjson.loads(await asked.get_message())
            assert got == {"type": "message_deleted", "roomId": room, "messageId": sent["id"],
                           "deletedAt": resp.json()["deletedAt"]}

            # The plain /chat connection saw neither: its next frame is the next message,
            # in the ticket guide's shape exactly.
            after = await send_http(server, 2, room, "after")
            nxt = await recv_message(plain)
            assert nxt["id"] == after["id"]
            assert set(nxt) == {"id", "roomId", "content", "timestamp", "messageType", "user"}

        stored = await history(server, 1, room)
        assert [(m["id"], m["content"], m.get("deleted", False)) for m in stored] == [
            (sent["id"], "", True), (after["id"], "after", False)
        ]
        assert "editedAt" in stored[0] and "deletedAt" in stored[0]
        assert "editedAt" not in stored[1]


async def test_resume_replays_edits_and_skips_deletions(server: Server) -> None:
    with trio.fail_after(20):
        room = await make_room(server, [1, 2], name="resume")
        first = await send_http(server, 2, room, "first")
        gone = await send_http(server, 2, room, "gone")
        fixed = await send_http(server, 2, room, "fixd")
        assert (await change(server, 2, "DELETE", room, gone["id"])).status_code == 200
        resp = await change(server, 2, "PATCH", room, fixed["id"], {"content": "fixed"})
        assert resp.status_code == 200
        live: list[int] = []
        for edits in (False, True):
            query = {"ticket": await new_ticket(server, 1), "since": str(first["id"])}
            if edits:
                query["edits"] = "1"
            async with open_websocket_url(f"{server.ws_base}/chat?{urlencode(query)}") as ws:
                got = await recv_message(ws)
                assert (got["id"], got["content"]) == (fixed["id"], "fixed")
                assert ("editedAt" in got) is edits
                for earlier in live:  # the previous pass's live message is replayed too
                    assert (await recv_message(ws))["id"] == earlier
                live.append((await roundtrip(ws, room, f"live, edits={edits}"))["id"])


async def test_refusals_and_admins(server: Server) -> None:
    with trio.fail_after(20):
        room = await make_room(server, [1, 2], name="rules")
        other = await make_room(server, [1, 2], name="other")
        hers = await send_http(server, 2, room, "hers")
        cases = [
            (1, "PATCH", room, hers["id"], {"content": "mine now"}, 403, "not_your_message"),
            (1, "DELETE", room, hers["id"], None, 403, "not_your_message"),
            (2, "PATCH", other, hers["id"], {"content": "x"}, 404, "unknown_message"),
            (2, "PATCH", room, 424242, {"content": "x"}, 404, "unknown_message"),
            (3, "PATCH", room, hers["id"], {"content": "x"}, 404, "unknown_room"),
            (3, "DELETE", 424242, hers["id"], None, 404, "unknown_room"),
            (2, "PATCH", room, hers["id"], {"content": "   "}, 400, "empty_content"),
            (2, "PATCH", room, hers["id"], {"content": 5}, 400, "bad_content"),
            (2, "PATCH", room, hers["id"], {"content": "x" * 4001}, 400, "content_too_long"),
            (2, "PATCH", room, hers["id"], [], 400, "bad_json"),
            (None, "PATCH", room, hers["id"], {"content": "x"}, 401, "unauthorized"),
        ]
        for user, method, rid, mid, body, status, code in cases:
            resp = await change(server, user, method, rid, mid, body)
            assert (resp.status_code, resp.json()["error"]) == (status, code), (user, method)
        assert (await history(server, 2, room))[0]["content"] == "hers"

        # An admin, not a member, changes anyone's message.
        resp = await change(server, 9000, "PATCH", room, hers["id"], {"content": "moderated"},
                            admin=True)
        assert resp.status_code == 200 and resp.json()["content"] == "moderated"
        resp = await change(server, 9000, "DELETE", room, hers["id"], admin=True)
        assert resp.status_code == 200
        # Gone is gone: neither edited nor deleted again.
        for method, body in (("PATCH", {"content": "back"}), ("DELETE", None)):
            resp = await change(server, 2, method, room, hers["id"], body)
            assert (resp.status_code, resp.json()["error"]) == (404, "unknown_message")
        # The server carries on.
        assert (await send_http(server, 2, room, "still here"))["content"] == "still here"


async def test_a_bad_edits_flag_is_refused(server: Server) -> None:
    with trio.fail_after(10):
        query = urlencode({"ticket": await new_ticket(server, 1), "edits": "yes"})
        reason = await close_code_for(server, f"{server.ws_base}/chat?{query}")
    assert (reason.code, reason.reason) == (1002, "edits must be 0 or 1")


async def test_edits_survive_a_restart(start_server: StartServer) -> None:
    with trio.fail_after(20):
        first = await start_server()
        room = await make_room(first, [1], name="kept")
        msg = await send_http(first, 1, room, "draft")
        resp = await change(first, 1, "PATCH", room, msg["id"], {"content": "final"})
        assert resp.status_code == 200
        await first.stop()
        second = await start_server()
        (stored,) = await history(second, 1, room)
        assert (stored["content"], stored["editedAt"]) == ("final", resp.json()["editedAt"])


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_edits_are_rate_limited_like_sends(start_server: StartServer, method: str) -> None:
    with trio.fail_after(20):
        server = await start_server(chat={"rate_per_second": 0.001, "rate_burst": 2})
        room = await make_room(server, [1], name="slow")
        msg = await send_http(server, 1, room, "one")
        body = {"content": "two"} if method == "PATCH" else None
        first = await change(server, 1, "PATCH", room, msg["id"], {"content": "x"})
        assert first.status_code == 200
        resp = await change(server, 1, method, room, msg["id"], body)
        assert (resp.status_code, resp.json()["error"]) == (429, "rate_limited")
